"""The one kind of error a user can fix: `UserError`, shown as one line and exit code 2.

Every error that names a file, line, field or option the user can correct derives from it; every
command (`lingotune ...`, `lingotune data ...`, `lingotune eval`) runs under `user_errors`, which
turns it into `error: <message>` on one line and exit code 2, without a traceback. Anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno


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


def write_reason(e: BaseException) -> str:
    """Why a write failed, in a few words (a full disk reads the same from OSError and torch.save)."""
    if isinstance(e, OSError):
        if e.errno == errno.ENOSPC:
            return "no space left on device"
        return e.strerror or one_line(e)
    return f"{one_line(e)} (is the disk full?)"


def fail(message: str, code: int = 2):
    """Print `error: <message>` on stderr as one line (no markup, no wrapping) and exit with `code`."""
    import typer
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print("[red]error:[/] " + escape(one_line(message)), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def user_errors(fn):
    """Decorator for a command: the errors a user can fix become one line and exit code 2."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from pydantic import ValidationError

        try:
            return fn(*args, **kwargs)
        except TrainingInterrupted as e:  # Ctrl-C: checkpointed; the shell's code for an interrupt
            fail(str(e), 130)
        except (UserError, FileNotFoundError, ValueError) as e:  # ValueError: unknown language, bad option value
            if isinstance(e, ValidationError):
                fail(pydantic_line(e))
            fail(str(e))
        except OSError as e:  # a full disk, a read-only directory
            fail((f"{e.filename}: " if e.filename else "") + write_reason(e))

    return wrapper


def pydantic_line(e, where: str = "", prefix: str = "") -> str:
    """One line for a pydantic ValidationError: `where: field 'a.b': message; ...`."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"] if not str(x).startswith("function-after")) or "(top)"
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"].replace("Value error, ", "")
        parts.append(f"field '{prefix}{loc}': {msg}")
    return (f"{where}: " if where else "") + "; ".join(parts)
