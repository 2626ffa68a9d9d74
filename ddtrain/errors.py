"""The one exception type that reaches the user as a single line."""


class UserError(Exception):
    """Bad input the user can fix: the message names the key or file and says what to do.

    Entry points print it as one line (no traceback unless DDTRAIN_TRACEBACK=1 or
    HYDRA_FULL_ERROR=1) and exit with status 2 on every rank.
    """

    exit_code = 2


class OutOfMemory(RuntimeError):
    """A batch did not fit in device memory on some rank; every rank raises it together."""


PREEMPTED_EXIT_CODE = 75
"""Exit status of a run stopped by SIGTERM/SIGUSR1 after its checkpoint was saved (EX_TEMPFAIL: try again).

launch/slurm.sbatch requeues the job when srun returns it; the requeued job resumes from the checkpoint."""


class Preempted(Exception):
    """Every rank agreed to stop on SIGTERM or SIGUSR1 and the checkpoint is saved (see ddtrain.preempt).

    Entry points exit with PREEMPTED_EXIT_CODE at once, without tearing down the process group.
    """

    exit_code = PREEMPTED_EXIT_CODE
