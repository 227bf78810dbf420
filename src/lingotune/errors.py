"""The one kind of error a user can fix: `UserError`, shown as one line and exit code 2.

Every error that names a file, line, field or option the user can correct derives from it; the
command line turns it into `error: <message>` without a traceback (`lingotune.cli.user_errors`).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; the message is one line naming the file, line, field or option."""


class RunDirError(UserError, RuntimeError):
    """The run directory cannot be used as asked (exists, is not ours, nothing to resume, ...)."""


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (non-finite loss, divergence, unwritable checkpoint); kept state is intact."""


class TrainingInterrupted(TrainingError):
    """The run was interrupted; a checkpoint was written and `--resume` continues from it."""


def one_line(text: object) -> str:
    """The first non-empty line of a message (library errors can span many)."""
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return str(text).strip()
