"""User-facing errors: one clear message naming the problem and the fix."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (bad flag, missing file, malformed data, impossible config).

    Entry points catch it, print `error: <message>` on one line to stderr and exit with status 2, without a
    traceback. The message must name the problem and the fix.
    """


class Interrupted(UserError):
    """Training stopped by a signal (Ctrl-C, SIGTERM) after saving a checkpoint to resume from.

    Entry points print its message like any `UserError` and exit with `exit_status` (128 + the signal's
    number: 130 for Ctrl-C, 143 for SIGTERM), the shell's convention for a process ended by a signal.
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_status = 128 + int(signum)
