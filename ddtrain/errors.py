"""The one exception type that reaches the user as a single line."""


class UserError(Exception):
    """Bad input the user can fix: the message names the key or file and says what to do.

    Entry points print it as one line (no traceback unless DDTRAIN_TRACEBACK=1 or
    HYDRA_FULL_ERROR=1) and exit with status 2 on every rank.
    """

    exit_code = 2


class OutOfMemory(RuntimeError):
    """A batch did not fit in device memory on some rank; every rank raises it together."""
