"""The exceptions that reach the user as one line, and the exit status of each way a run can end."""

EXIT_OK = 0
EXIT_FAILED = 1
"""This rank's own error (a bad batch, a non-finite loss with train.stop_on_nan, a bug)."""
EXIT_USER = 2
"""Bad input the user can fix (UserError), the same on every rank."""
EXIT_PEER = 3
"""Another rank failed or could not be reached."""
EXIT_PREEMPTED = 75
"""SIGTERM/SIGUSR1 made every rank checkpoint and stop (EX_TEMPFAIL: try again); launch/slurm.sbatch requeues."""
PREEMPTED_EXIT_CODE = EXIT_PREEMPTED  # the name used before 0.2


class UserError(Exception):
    """Bad input the user can fix: the message names the key or file and says what to do.

    Console scripts print it as one line (a traceback only with DDTRAIN_TRACEBACK=1) and exit with
    EXIT_USER on every rank; the Python API (ddtrain.fit) raises it.
    """

    exit_code = EXIT_USER


class Unreachable(ConnectionError):
    """The ranks could not connect at start-up (rendezvous); the message says which address to check and how to set it.

    Console scripts print it as one line and exit with EXIT_PEER.
    """

    exit_code = EXIT_PEER


class OutOfMemory(RuntimeError):
    """A batch did not fit in device memory on some rank; every rank raises it together."""


class Preempted(Exception):
    """Every rank agreed to stop on SIGTERM or SIGUSR1 and the checkpoint is saved (ddtrain.distributed.preempt).

    Console scripts exit with EXIT_PREEMPTED at once, without tearing down the process group.
    """

    exit_code = EXIT_PREEMPTED
