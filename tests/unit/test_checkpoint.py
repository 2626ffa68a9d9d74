"""Checkpoints: atomic files, the newest K kept, unfinished files never chosen, safe loading."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from ddtrain.runtime.checkpoint import Checkpointer, list_checkpoints, load, rng_state, set_rng_state
from ddtrain.distributed.engines.base import Engine
from ddtrain.distributed.env import detect
from ddtrain.errors import UserError


@pytest.fixture
def single():
    return Engine(detect({}), torch.device("cpu"))  # one process: collectives are local


def test_keeps_the_newest_and_ignores_unfinished_files(tmp_path, single):
    ck = Checkpointer(tmp_path / "checkpoints", single, keep_last=2)
    for step in (5, 10, 15):
        ck.save(step, {"model": {"w": torch.full((3,), float(step))}})
    # a save that died half-way leaves only its temporary file behind
    (tmp_path / "checkpoints" / ".step_00000020.pt.tmp").write_bytes(b"partial")
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_00000010.pt", "step_00000015.pt"]
    newest = ck.find_resume("auto")
    assert newest.name == "step_00000015.pt"
    state = load(newest, torch.device("cpu"))
    assert state["step"] == 15 and torch.equal(state["model"]["w"], torch.full((3,), 15.0))
    assert ck.find_resume("never") is None
    assert ck.find_resume(str(newest)) == newest


def test_auto_without_checkpoints_starts_fresh(tmp_path, single):
    assert Checkpointer(tmp_path / "none", single, keep_last=1).find_resume("auto") is None


def test_corrupt_checkpoint_is_a_one_line_error(tmp_path):
    bad = tmp_path / "step_00000001.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="step_00000001.pt"):
        load(bad, torch.device("cpu"))


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    saved = rng_state(torch.device("cpu"))
    torch.save(saved, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True), torch.device("cpu"))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_checksum_catches_a_changed_file_and_auto_skips_unreadable_ones(tmp_path, single, caplog):
    ck = Checkpointer(tmp_path / "checkpoints", single, keep_last=3)
    for step in (4, 8, 12):
        ck.save(step, {"model": {"w": torch.full((64,), float(step))}, "global_batch_size": 32})
    newest, middle = (tmp_path / "checkpoints" / f"step_{s:08d}.pt" for s in (12, 8))
    # bit rot in the middle one: the file still loads, the checksum does not match
    data = bytearray(middle.read_bytes())
    at = data.index(torch.full((64,), 8.0).numpy().tobytes())
    data[at + 5] ^= 0x40
    middle.write_bytes(bytes(data))
    with pytest.raises(UserError, match="checksum mismatch"):
        load(middle, torch.device("cpu"))
    newest.write_bytes(newest.read_bytes()[:1000])  # a copy cut short
    with caplog.at_level("WARNING", logger="ddtrain"):
        state, path = ck.resume_state("auto", 32)
    assert path.name == "step_00000004.pt" and state["step"] == 4 and "checksum" not in state
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 2 and str(newest) in warned[0] and "cut short" in warned[0]
    assert str(middle) in warned[1] and "checksum mismatch" in warned[1]
    (tmp_path / "checkpoints" / "step_00000004.pt").write_bytes(b"")
    with pytest.raises(UserError, match=r"no readable checkpoint in .*checkpoint.resume=never"):
        ck.resume_state("auto", 32)
