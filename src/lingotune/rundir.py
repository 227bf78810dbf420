"""Run directories: whose they are, when one may be reused or replaced, and atomic writes into them.

One policy for `lingotune run`, `train` and `compare`, and (`check_output`) for the folders a command writes
whole: `lingotune export`, `propagate`, `eval --export-lm-eval`:
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
Kind = Literal["run", "grid", "export", "lm-eval"]
_WHAT = {"run": "a lingotune run directory", "grid": "a lingotune compare grid", "export": "a lingotune export",
         "lm-eval": "a lingotune export of lm-eval tasks"}
_FLAG = {"grid": "the grid directory", "lm-eval": "--export-lm-eval"}  # the option naming the folder (else --out)
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
    flag = _FLAG.get(kind, "--out")
    if resume and overwrite:
        raise RunDirError(f"{path}: --resume and --overwrite exclude each other")
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path}: exists and is not a directory")
    if not _nonempty(path):
        if resume:
            raise RunDirError(f"{path}: nothing to resume (no run there); run without --resume to start one")
        return "fresh"
    # a marker without a kind is an earlier lingotune's run or grid, never a newer kind of folder
    ours = is_marked(path) and marker_kind(path) in ((kind, None) if kind in ("run", "grid") else (kind,))
    if not ours:
        what = _WHAT[kind]
        if is_marked(path):
            held = marker_kind(path) or "run of an earlier version (a marker without a kind)"
            raise RunDirError(f"{path}: holds a lingotune {held}, not {what}; choose another {flag}")
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


def check_output(path: Path, kind: Kind, overwrite: bool) -> Action:
    """`check` for a folder a command writes whole (an export, a propagated model, lm-eval tasks): "fresh", or
    "replace" with --overwrite when it holds an earlier folder of `kind`; RunDirError (writing nothing) otherwise."""
    action = check(path, kind=kind, resume=False, overwrite=overwrite)
    if action == "reuse":
        raise RunDirError(f"{path}: exists; pass --overwrite to replace it, or choose another {_FLAG.get(kind, '--out')}")
    return action


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
