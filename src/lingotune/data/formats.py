"""Readers for single-file instruction data: Alpaca, OpenOrca, ShareGPT/`messages`, prompt/completion,
Hugging Face `datasets` (saved to disk or from the hub).

Every reader returns `list[Record]` with `source` = "path:line" (the line where the record starts, also for
JSON arrays) and `lang` set. Structural problems raise `DataError` naming file, line and field: malformed JSON,
a missing field, a field of the wrong type. Quality problems (empty answers, wrong script, duplicates) are
not errors here; `validate.py` counts and drops them.

Multi-turn conversations (ShareGPT / `messages`): by default only the first exchange is kept (first user turn
-> the assistant turn after it), because later turns often depend on earlier ones ("rewrite your previous
answer"). `all_turns=True` keeps every user -> assistant exchange as its own record (ids "<id>#<turn>").
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable, Iterator

from lingotune.data.records import DataError, Example, PrefRecord, Record
from lingotune.hub import HubError, HubSpec, import_datasets, load_rows

FORMATS = ("alpaca", "openorca", "sharegpt", "prompt_completion")


# --------------------------------------------------------------------------------------------- raw rows

def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def read_text(path: str | Path) -> str:
    """The text of a data file; DataError naming it when it is missing, not UTF-8, or empty."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    return text


def read_texts(path: str | Path, text_field: str = "text") -> list[str]:
    """Plain texts of a file: one a line (.txt and anything else), or `text_field` of each JSON/JSONL row or
    of each row of a TSV file with a header (.tsv: `text_field` names the column)."""
    path = Path(path)
    if path.suffix == ".tsv":
        rows = read_tsv(path)
        if rows and text_field not in rows[0]:
            raise DataError(f"{path}: no column {text_field!r} (text_field); the header has {', '.join(rows[0])}")
        return [r[text_field] for r in rows if r[text_field]]
    if path.suffix not in (".json", ".jsonl"):
        return [line for line in read_text(path).splitlines() if line.strip()]
    return [t for where, row in iter_rows(path) if (t := field(row, text_field, where).strip())]


def read_tsv(path: str | Path) -> list[dict]:
    """The rows of a tab-separated file with a header line, as {column: value}; a row whose number of columns
    differs from the header's is a DataError naming its line."""
    path = Path(path)
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.strip() for h in next(reader, [])]
        rows = []
        for i, cells in enumerate(reader, 2):
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                raise DataError(f"{path}:{i}: {len(cells)} columns, header has {len(header)}")
            rows.append({h: c.strip() for h, c in zip(header, cells)})
    return rows


def iter_rows(path: str | Path) -> Iterator[tuple[str, Any]]:
    """(where, object) for each item of a JSON array file or each line of a JSONL file; where = "path:line"."""
    path = Path(path)
    text = read_text(path)
    stripped = text.lstrip()
    if stripped.startswith("["):
        yield from _iter_array(path, text)
        return
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{i}: malformed JSON ({e.msg}, column {e.colno})") from None
        yield f"{path}:{i}", obj


def _iter_array(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    """Items of a top-level JSON array, each with the line it starts on (so errors point at the record)."""
    dec = json.JSONDecoder()
    pos = text.index("[") + 1
    n = len(text)
    mark = [0, 1]  # (position, line at position): lines are counted incrementally, not from the start each time

    def line_at(p: int) -> int:
        if p < mark[0]:
            return _line_of(text, p)
        mark[1] += text.count("\n", mark[0], p)
        mark[0] = p
        return mark[1]

    def skip_ws(p: int) -> int:
        while p < n and text[p] in " \t\r\n":
            p += 1
        return p

    pos = skip_ws(pos)
    if pos < n and text[pos] == "]":
        return
    while True:
        pos = skip_ws(pos)
        try:
            obj, end = dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{line_at(e.pos)}: malformed JSON ({e.msg})") from None
        yield f"{path}:{line_at(pos)}", obj
        pos = skip_ws(end)
        if pos < n and text[pos] == ",":
            pos += 1
            continue
        if pos < n and text[pos] == "]":
            return
        raise DataError(f"{path}:{line_at(pos)}: malformed JSON (expected ',' or ']' between items)")


# --------------------------------------------------------------------------------------------- fields

def field(obj: Any, name: str, where: str, required: bool = True, default: str = "") -> str:
    """A string field of a JSON object; DataError naming file:line and field when missing or not a string."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if name not in obj or obj[name] is None:
        if required:
            raise DataError(f"{where}: field '{name}' is missing")
        return default
    value = obj[name]
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
    return value


def _id(obj: dict, id_field: str | None) -> str | None:
    if id_field and isinstance(obj, dict) and obj.get(id_field) is not None:
        return str(obj[id_field])
    return None


def join_input(instruction: str, inp: str) -> str:
    """Alpaca's instruction and optional input as one user turn."""
    return f"{instruction.strip()}\n\n{inp.strip()}" if inp.strip() else instruction.strip()


# --------------------------------------------------------------------------------------------- row readers


def alpaca_row(obj: Any, where: str, lang: str, id_field: str | None = "id") -> list[Record]:
    prompt = join_input(field(obj, "instruction", where), field(obj, "input", where, required=False))
    return [Record(prompt, field(obj, "output", where), None, _id(obj, id_field), lang, where)]


def openorca_row(obj: Any, where: str, lang: str, id_field: str | None = "id") -> list[Record]:
    system = field(obj, "system_prompt", where, required=False).strip() or None
    return [Record(field(obj, "question", where), field(obj, "response", where), system, _id(obj, id_field), lang, where)]


def prompt_completion_row(obj: Any, where: str, lang: str, id_field: str | None = "id") -> list[Record]:
    return [Record(field(obj, "prompt", where), field(obj, "completion", where), None, _id(obj, id_field), lang, where)]


_ROLE = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
         "bing": "assistant", "bard": "assistant", "system": "system"}


def sharegpt_turns(obj: Any, where: str) -> list[tuple[str, str]]:
    """(role, text) turns of a ShareGPT (`conversations`: from/value) or `messages` (role/content) record."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    key = "conversations" if "conversations" in obj else "messages" if "messages" in obj else None
    if key is None:
        raise DataError(f"{where}: field 'conversations' (or 'messages') is missing")
    turns = obj[key]
    if not isinstance(turns, list):
        raise DataError(f"{where}: field '{key}' must be a list, got {type(turns).__name__}")
    out = []
    for i, t in enumerate(turns):
        rk, tk = ("from", "value") if key == "conversations" else ("role", "content")
        name = f"{key}[{i}]"
        if not isinstance(t, dict):
            raise DataError(f"{where}: field '{name}' must be an object, got {type(t).__name__}")
        role = t.get(rk)
        if role not in _ROLE:
            raise DataError(f"{where}: field '{name}.{rk}' must be one of {sorted(_ROLE)}, got {role!r}")
        text = t.get(tk)
        if not isinstance(text, str):
            raise DataError(f"{where}: field '{name}.{tk}' must be a string, got {type(text).__name__}")
        out.append((_ROLE[role], text))
    return out


def sharegpt_row(obj: Any, where: str, lang: str, id_field: str | None = "id", all_turns: bool = False) -> list[Record]:
    turns = sharegpt_turns(obj, where)
    system = next((t for r, t in turns if r == "system"), None)
    rid = _id(obj, id_field)
    out: list[Record] = []
    convo = [(r, t) for r, t in turns if r != "system"]
    for i in range(len(convo) - 1):
        if convo[i][0] == "user" and convo[i + 1][0] == "assistant":
            tid = rid if not all_turns else f"{rid if rid is not None else where}#{len(out)}"
            out.append(Record(convo[i][1], convo[i + 1][1], system, tid, lang, where))
            if not all_turns:
                break
    if not out:
        raise DataError(f"{where}: field 'conversations' has no user turn followed by an assistant turn")
    return out


ROW_READERS: dict[str, Callable[..., list[Record]]] = {
    "alpaca": alpaca_row,
    "openorca": openorca_row,
    "sharegpt": sharegpt_row,
    "prompt_completion": prompt_completion_row,
}


def detect_format(obj: Any, where: str) -> str:
    """The format of one row, from its keys."""
    if isinstance(obj, dict):
        keys = set(obj)
        if {"instruction", "output"} <= keys:
            return "alpaca"
        if {"question", "response"} <= keys:
            return "openorca"
        if "conversations" in keys or "messages" in keys:
            return "sharegpt"
        if {"prompt", "completion"} <= keys:
            return "prompt_completion"
        raise DataError(f"{where}: cannot tell the format from fields {sorted(keys)}; "
                        f"expected one of alpaca (instruction/input/output), openorca (system_prompt/question/response), "
                        f"sharegpt (conversations|messages), prompt_completion (prompt/completion)")
    raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")


def records_from_rows(rows: Iterator[tuple[str, Any]], fmt: str, lang: str, limit: int | None = None,
                      id_field: str | None = "id", all_turns: bool = False) -> list[Record]:
    out: list[Record] = []
    for where, obj in rows:
        if limit is not None and len(out) >= limit:
            break
        f = detect_format(obj, where) if fmt == "auto" else fmt
        if f not in ROW_READERS:
            raise DataError(f"{where}: unknown format {f!r}; known: {', '.join(FORMATS)}")
        kw = {"all_turns": all_turns} if f == "sharegpt" else {}
        out.extend(ROW_READERS[f](obj, where, lang, id_field, **kw))
    return out[:limit] if limit is not None else out


def read_file(path: str | Path, fmt: str = "auto", lang: str = "en", limit: int | None = None,
              id_field: str | None = "id", all_turns: bool = False) -> list[Record]:
    """Records of a JSON/JSONL file in one of FORMATS ("auto": detected from each row's keys)."""
    return records_from_rows(iter_rows(path), fmt, lang, limit, id_field, all_turns)


# --------------------------------------------------------------------------------------------- preference pairs

def read_prefs(path: str | Path, lang: str | None = None, limit: int | None = None,
               id_field: str | None = "id") -> list[PrefRecord]:
    """Preference pairs of a JSONL (or JSON array) file in the standard layout: `prompt`, `chosen` and `rejected`
    strings, optional `system`, `id_field` and `kind` (how the pair was built, kept; default "file"). A missing
    or non-string field, or an empty prompt, is a DataError naming file:line and field; empty or identical
    answers are left to validation (counted and dropped there)."""
    out: list[PrefRecord] = []
    for where, obj in iter_rows(path):
        if limit is not None and len(out) >= limit:
            break
        prompt, chosen, rejected = (field(obj, name, where) for name in ("prompt", "chosen", "rejected"))
        if not prompt.strip():
            raise DataError(f"{where}: field 'prompt' is empty")
        system = field(obj, "system", where, required=False).strip() or None
        kind = field(obj, "kind", where, required=False).strip() or "file"
        out.append(PrefRecord(prompt, chosen, rejected, system, _id(obj, id_field), lang, where, kind))
    return out


# --------------------------------------------------------------------------------------------- Hugging Face

def _hf_rows(ds, name: str) -> Iterator[tuple[str, Any]]:
    for i, row in enumerate(ds):
        yield f"{name}:{i + 1}", dict(row)


def read_hf_disk(path: str | Path, fmt: str = "auto", lang: str = "en", split: str = "train",
                 limit: int | None = None, id_field: str | None = "id") -> list[Record]:
    """Records of a dataset saved with `save_to_disk` (a Dataset, or a DatasetDict and its `split`)."""
    try:
        datasets = import_datasets()
    except HubError as e:
        raise DataError(f"{path}: {e}") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError as e:
        raise DataError(f"{path}: cannot load dataset from disk ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{path}: field 'split' {split!r} not in the saved dataset; it has {sorted(ds)}")
        ds = ds[split]
    return records_from_rows(_hf_rows(ds, str(path)), fmt, lang, limit, id_field)


def read_hub(spec: HubSpec | str, fmt: str = "auto", lang: str = "en", split: str = "train",
             limit: int | None = None, id_field: str | None = "id") -> list[Record]:
    """Records of a hub dataset (a HubSpec, or an id read with `split`), or of a local folder in its layout."""
    if not isinstance(spec, HubSpec):
        spec = HubSpec(path=spec, split=split)
    return records_from_rows(source_rows(spec, limit), fmt, lang, limit, id_field)


def source_rows(source, limit: int | None = None) -> Iterator[tuple[str, Any]]:
    """(where, row) of a JSON/JSONL file, or of a hub dataset (a `lingotune.hub.HubSpec`; where =
    "hub:<id>:<config>/<split>:<row>"); a hub that cannot be read is a DataError naming the dataset."""
    if not isinstance(source, HubSpec):
        return iter_rows(source)
    try:
        rows = load_rows(source, limit)
    except HubError as e:
        raise DataError(str(e)) from None
    return ((f"hub:{source.label()}:{i}", r) for i, r in enumerate(rows, 1))


def source_name(source) -> str:
    """A file's path or a hub dataset's label, for messages."""
    return source.label() if isinstance(source, HubSpec) else str(source)


# --------------------------------------------------------------------------------------------- examples

def read_examples(path: str | Path) -> list[Example]:
    """Examples from a JSONL file written by `write_examples` / `BuiltData.write` ({"messages", "meta"} a line)."""
    return [Example.from_dict(obj if isinstance(obj, dict) else {}, where) for where, obj in iter_rows(path)]


def write_examples(examples, path: str | Path) -> Path:
    """One example a line, written to a temporary file and renamed into place."""
    from lingotune.files import atomic_write_text

    return atomic_write_text(Path(path), "".join(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n" for ex in examples))
