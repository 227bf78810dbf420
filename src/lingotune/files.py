"""Reading and writing lingotune's own files safely.

- Writes go to a temporary file in the same folder, are flushed to disk, then renamed into place:
  a crash or a full disk never leaves half a file where a whole one was.
- YAML (recipes, task files) is read by one loader whose errors name the file and line.
- `safe_name` guards every name that becomes a file or folder name (tasks, variants, labels).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from lingotune.errors import UserError

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=-]*$")


class FileFormatError(UserError, ValueError):
    """A file lingotune reads is missing or not in its format; one line naming the file (and line)."""


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to a temporary file next to `path`, flush it to disk, rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def atomic_dir(path: Path):
    """Yield a fresh temporary folder next to `path` (a unique hidden name, so no folder of the user's is ever
    touched and two writers never share one); once the block succeeds it replaces `path` whole: the old folder
    is renamed aside first and removed only after the new one is in place."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            path.rename(old / "x")
        try:
            tmp.rename(path)
        except BaseException:
            if old is not None:
                (old / "x").rename(path)  # put the old folder back
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def save_json(path: Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False))


def read_json(path: Path) -> dict | None:
    """A JSON file lingotune wrote, or None when absent; a one-line error when it is not JSON."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FileFormatError(f"{path}: not valid JSON ({e}); restore it or start again with --overwrite") from None


def read_yaml(path: Path, what: str = "file") -> Any:
    """A YAML file's content; FileFormatError naming the file and line when it is missing or malformed."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError):
        raise FileFormatError(f"{path}: no such {what}") from None
    except UnicodeDecodeError as e:
        raise FileFormatError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}:" if mark else ""
        raise FileFormatError(f"{path}:{line} not valid YAML ({getattr(e, 'problem', None) or e})") from None


def safe_name(name: str, what: str) -> str:
    """`name` when it can be one file or folder name (no separators, no '..', no leading dot)."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name or len(name) > 100:
        raise ValueError(f"{what} {name!r}: use letters, digits and _ . + = - only (it becomes a file name)")
    return name


class JsonlCache:
    """Finished items of a resumable job in an append-only JSONL file, {"key": ..., <field>: ...} a line.

    Appended and flushed after every batch, so an interrupted job keeps what it finished. A torn last
    line (a kill mid-write) is skipped on reading and closed before the next append. Values are any JSON.
    Used for translations, on-policy generations, judged answers and verdicts.
    """

    def __init__(self, path: str | Path, field: str = "value"):
        self.path, self.field = Path(path), field
        self.items: dict[str, Any] = {}
        for line in self.path.read_text(encoding="utf-8").splitlines() if self.path.is_file() else []:
            try:
                row = json.loads(line)
                self.items[str(row["key"])] = row[field]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue

    @staticmethod
    def key(*parts) -> str:
        """sha256 of the parts as JSON: a key from everything the value depends on."""
        return hashlib.sha256(json.dumps(parts, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()

    def get(self, key: str):
        return self.items.get(key)

    def put_many(self, items) -> None:
        """Store (key, value) pairs, or a dict of them, and append them to the file."""
        pairs = list(items.items() if isinstance(items, dict) else items)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as fh:
            size = fh.seek(0, 2)
            if size:
                fh.seek(size - 1)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")  # close a torn last line, so the next record starts a line of its own
            fh.writelines((json.dumps({"key": k, self.field: v}, ensure_ascii=False) + "\n").encode() for k, v in pairs)
            fh.flush()
        self.items.update(pairs)

    def fill(self, keys: list[str], compute: Callable[[list[int]], list], chunk: int) -> list:
        """The values of `keys`; the missing ones computed `chunk` at a time (`compute(indices)`) and stored
        before the next chunk starts, so an interruption keeps every finished chunk."""
        todo = [i for i, k in enumerate(keys) if k not in self.items]
        for start in range(0, len(todo), max(1, chunk)):
            idx = todo[start:start + max(1, chunk)]
            self.put_many({keys[i]: v for i, v in zip(idx, compute(idx))})
        return [self.items[k] for k in keys]
