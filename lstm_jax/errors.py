"""User-facing errors: one clear message naming the problem and the fix."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (bad flag, missing file, malformed data, impossible config).

    Entry points catch it, print `error: <message>` on one line to stderr and exit with status 2, without a
    traceback. The message must name the problem and the fix.
    """


class Interrupted(UserError):
    """Training stopped by a signal (Ctrl-C, SIGTERM) after saving a checkpoint to resume from (or, after
    the last step, with that step's checkpoint saved and results.json not yet written).

    Entry points print its message like any `UserError` and exit with `exit_status` (128 + the signal's
    number: 130 for Ctrl-C, 143 for SIGTERM), the shell's convention for a process ended by a signal.
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_status = 128 + int(signum)


def root_reason(e: BaseException) -> str:
    """`Type: first line of the message` (at most 200 characters) of an exception's root cause (the
    last of its `__cause__` / `__context__` chain: TensorStore's reason rather than Orbax's wrapper),
    for one-line reports. A context its exception suppressed (``raise ... from None``, as `json` raises
    "Expecting value" over the StopIteration of its scanner) is not followed, as a traceback omits it."""
    seen = {id(e)}
    while (nxt := _reason_behind(e)) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        e = nxt
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _reason_behind(e: BaseException) -> BaseException | None:
    """The exception `e` was raised from, or during the handling of (unless `e` suppressed it)."""
    if e.__cause__ is not None:
        return e.__cause__
    return None if e.__suppress_context__ else e.__context__
