"""User-facing errors: one clear message naming the problem and the fix."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (bad flag, missing file, malformed data, impossible config).

    Entry points catch it, print `error: <message>` on one line to stderr and exit with status 2, without a
    traceback. The message must name the problem and the fix.
    """
