"""Resume when the newest checkpoint is bad, and when a rank cannot see rank 0's checkpoints (2 real ranks).

checkpoint.resume=auto skips a checkpoint cut short (with a warning naming it) and resumes from the
newest readable one to the parameters of the uninterrupted run; a rank whose file system does not
hold rank 0's run directory makes every rank stop with one line that says so.
"""

from __future__ import annotations

import shutil

import pytest

from ddtrain.errors import EXIT_USER
from helpers.rankrun import finish, run_ranks, start_ranks

pytestmark = pytest.mark.slow

RUN = ["model=mlp", "model.hidden_sizes=[64,64]", "model.dropout=0.2", "dataset=synthetic", "dataset.shape=[40]",
       "dataset.num_samples=600", "train.global_batch_size=32", "train.max_steps=30", "checkpoint.every_steps=10",
       "checkpoint.keep_last=3", "logging.tensorboard=false"]


@pytest.fixture(scope="module")
def full(tmp_path_factory, mnist1d_cache):
    """The uninterrupted 2-rank run: its run directory (checkpoints at steps 10, 20, 30)."""
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    run_ranks(RUN, run_dir, mnist1d_cache)
    return run_dir


def interrupted(full, run_dir, steps):
    (run_dir / "checkpoints").mkdir(parents=True)
    for step in steps:
        shutil.copy(full / "checkpoints" / f"step_{step:08d}.pt", run_dir / "checkpoints")
    return run_dir


def test_a_truncated_newest_checkpoint_is_skipped_with_a_warning(full, tmp_path, mnist1d_cache):
    import json

    run_dir = interrupted(full, tmp_path / "run", (10, 20))
    newest = run_dir / "checkpoints" / "step_00000020.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a copy cut short
    ranks = run_ranks([*RUN, "checkpoint.resume=auto"], run_dir, mnist1d_cache)
    summary = json.loads((run_dir / "summary.json").read_text())
    expected = json.loads((full / "summary.json").read_text())
    assert summary["resumed_from"] == str(run_dir / "checkpoints" / "step_00000010.pt")
    assert summary["trained_steps_this_run"] == 20
    assert summary["parameter_digest"] == expected["parameter_digest"]
    warnings = [line for line in ranks[0].output().splitlines() if "skipped" in line]
    assert len(warnings) == 1 and f"checkpoint {newest} cannot be read (cut short" in warnings[0], ranks[0].output()


def test_a_rank_without_the_shared_file_system_gets_one_line(full, tmp_path, mnist1d_cache):
    """Rank 1 runs in its own mount namespace where the run directory is an empty tmpfs (no shared file system)."""
    run_dir = interrupted(full, tmp_path / "run", (10,))

    def private(rank, argv):
        if rank == 0:
            return argv
        return ["unshare", "--mount", "sh", "-c", f'mount -t tmpfs none {run_dir} && exec "$@"', "sh", *argv]

    ranks = start_ranks([*RUN, "checkpoint.resume=auto"], run_dir, mnist1d_cache, wrap=private)
    codes = finish(ranks, 240)
    out = ranks[0].output() + ranks[1].output()
    assert codes == [EXIT_USER, EXIT_USER], out
    expected = (f"ddtrain: error: rank(s) 1 of 2 cannot read the checkpoint {run_dir / 'checkpoints' / 'step_00000010.pt'}"
                " that rank 0 resumes from (no such file on host ")
    for r in ranks:  # the same line on both ranks, no traceback
        assert len(r.error_lines()) == 1 and r.error_lines()[0].startswith(expected), r.output()
        assert "hydra.run.dir on a shared file system" in r.error_lines()[0]
    assert "Traceback" not in out
