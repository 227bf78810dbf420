"""Run directories: whose they are, when one may be reused or replaced, and atomic writes into them.

One policy for `lingotune run`, `train` and `compare`:
- lingotune marks every directory it creates for a run (or a compare grid) with a small file,
  `.lingotune-run`. `--overwrite` only ever removes a marked directory, and never the current
  directory, the home directory, the filesystem root or a parent of any of them.
- An existing run is continued with `--resume` or replaced with `--overwrite`; without either it is
  left alone, except a marked run that never got past its first step (no results, no metrics),
  which a corrected rerun may reuse.
- `check` decides and writes nothing; `prepare` acts on the decision. Callers check first, do
  everything that can fail on bad input, and only then prepare.
Files inside are written with `lingotune.files` (temporary name, then rename), so a crash or a full
disk never leaves half a file where a whole one was.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Literal

from lingotune.errors import RunDirError
from lingotune.files import atomic_write_text

MARKER = ".lingotune-run"
Kind = Literal["run", "grid"]
Action = Literal["fresh", "reuse", "resume", "replace"]
_STARTED = ("results.json", "metrics.jsonl", "summary.json")


# ----------------------------------------------------------------------------- the policy


def is_marked(path: Path) -> bool:
    return (Path(path) / MARKER).is_file()


def marker_kind(path: Path) -> str | None:
    try:
        return json.loads((Path(path) / MARKER).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def protected_reason(path: Path) -> str | None:
    """Why `path` must never be removed (current or home directory, root, or a parent of one), or None."""
    p = Path(path).resolve()
    for name, special in (("the current directory", Path.cwd().resolve()), ("the home directory", Path.home().resolve())):
        if p == special:
            return f"it is {name}"
        if p in special.parents:
            return f"it contains {name}"
    if p == Path(p.anchor):
        return "it is the filesystem root"
    return None


def _nonempty(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def check(path: Path, *, kind: Kind, resume: bool, overwrite: bool) -> Action:
    """What to do with run directory `path`; raises RunDirError (writing nothing) when it may not be used."""
    path = Path(path)
    flag = "--out" if kind == "run" else "the grid directory"
    if resume and overwrite:
        raise RunDirError(f"{path}: --resume and --overwrite exclude each other")
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path}: exists and is not a directory")
    if not _nonempty(path):
        if resume:
            raise RunDirError(f"{path}: nothing to resume (no run there); run without --resume to start one")
        return "fresh"
    ours = is_marked(path) and marker_kind(path) in (kind, None)
    if not ours:
        what = "a lingotune compare grid" if kind == "grid" else "a lingotune run directory"
        if is_marked(path):
            raise RunDirError(f"{path}: holds a lingotune {marker_kind(path)}, not {what}; choose another {flag}")
        hint = "--overwrite only replaces directories lingotune made" if overwrite else f"choose another {flag}"
        if (path / "recipe.yaml").exists():
            hint += f" (a run of an older lingotune? create an empty {MARKER} file in it to adopt it)"
        raise RunDirError(f"{path}: exists and is not {what} (no {MARKER} marker); {hint}")
    if overwrite:
        reason = protected_reason(path)
        if reason:
            raise RunDirError(f"{path}: refusing to remove it with --overwrite: {reason}")
        return "replace"
    if resume:
        return "resume"
    if not any((path / name).exists() for name in _STARTED):
        return "reuse"  # a first attempt that failed before any result: nothing to lose
    raise RunDirError(f"{path}: run directory exists; pass --resume to continue it or --overwrite to replace it")


def prepare(path: Path, action: Action, kind: Kind) -> Path:
    """Act on `check`'s decision: remove (replace) and (re)create the directory, with its marker."""
    path = Path(path)
    if action == "replace":
        if not is_marked(path) or protected_reason(path):  # checked again: never remove what is not ours
            raise RunDirError(f"{path}: not removed (not a lingotune {kind} directory)")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    if not is_marked(path):
        from lingotune import __version__

        atomic_write_text(path / MARKER, json.dumps({"kind": kind, "lingotune": __version__,
                                                     "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
    return path
