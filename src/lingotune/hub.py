"""Datasets on the Hugging Face hub, or in a local folder laid out like one, as rows of fields.

A `hub:` mapping (evaluation tasks, data sources, `lingotune data translate --hub`) names one split of
one config: `{path, name, split, revision, columns}`. `path` is a hub id (`skt/kobest_v1`) or a local
directory in the hub's layout (`<dir>/<config>/validation-00000-of-00001.parquet`, `data/*.jsonl`, ...):
both go through `datasets.load_dataset(path, name, split=, revision=)`, so the only difference is the path.
Downloads land in the usual Hugging Face cache (`HF_HOME`, `HF_DATASETS_CACHE`).

Rows come back as plain dicts: `columns` renames the hub's columns to the fields the reader expects
(`{paragraph: Text}`; every column it names must exist), a `ClassLabel` column gives its label name
(`entailment`, not 0; -1, "no label", stays -1), and `values` maps a column's values to the ones the local
file holds (`{label: {0: 'False', 1: 'True'}}`), so rows read from the hub look like rows read from the file.

Failing fast offline: with `HF_DATASETS_OFFLINE=1` / `HF_HUB_OFFLINE=1`, `datasets` reads only its cache;
otherwise a hub id is tried only after a TCP connection to the hub's host opens within `PROBE_SECONDS`,
so a machine without network never waits on the hub's retries. Every failure (no `datasets` package,
offline and not cached, unknown id, gated set, missing column) is a `HubError`: one line that names the
dataset. It is a UserError (a command exits 2 with that line) and a FileNotFoundError, so an evaluation task
skips on it with that line as its reason; the data layer turns it into a DataError.

What a process remembers (`load_rows`): an evaluation task's rows (`keep=True`: read before and after training
and in every cell of a grid), for the last `KEPT` specs; a failure, for good (the same spec under the same
offline setting and endpoint is not asked again). A data source's rows (read once per data build, possibly
millions) are not held once its records are made.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lingotune.errors import UserError, one_line

PROBE_SECONDS = 3.0
INSTALL_HINT = "pip install 'lingotune[datasets]' (or pip install datasets)"


class HubError(UserError, FileNotFoundError):
    """A hub dataset could not be read; the message is one line naming it and why."""


class HubSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, description="Hub dataset id (owner/name) or a local directory in the hub's "
                      "layout (read the same way, through datasets.load_dataset).")
    name: str | None = Field(None, description="Config (subset) name, e.g. 'rus_Cyrl' or 'boolq'; null = the default.")
    split: str = Field("train", min_length=1, description="Split to read, e.g. 'validation', 'devtest'.")
    revision: str | None = Field(None, description="Git revision (branch, tag or commit) of the hub dataset; null = main.")
    columns: dict[str, str] = Field(default_factory=dict, description="The hub's column -> the field the reader "
                                    "expects, e.g. {paragraph: Text}; unnamed columns keep their names.")
    values: dict[str, dict[str, Any]] = Field(default_factory=dict, description="The hub's column -> {its value: the "
                                              "value the reader expects}, e.g. {label: {0: 'False', 1: 'True'}}; "
                                              "values not listed are kept.")

    @field_validator("values", mode="before")
    @classmethod
    def _str_keys(cls, v: Any) -> Any:  # YAML reads 0/1/true as numbers and booleans: compare as text
        return {c: {str(k): x for k, x in m.items()} if isinstance(m, dict) else m for c, m in v.items()} \
            if isinstance(v, dict) else v

    def label(self) -> str:
        """`owner/name:config/split@revision`, for messages and reports."""
        return (f"{self.path}" + (f":{self.name}" if self.name else "") + f"/{self.split}"
                + (f"@{self.revision}" if self.revision else ""))

    def is_local(self) -> bool:
        return Path(self.path).expanduser().is_dir()


def import_datasets():
    """The `datasets` package, or a HubError saying how to install it (hub datasets and `hf_disk` sources)."""
    try:
        import datasets
    except ImportError:
        raise HubError(f"reading Hugging Face datasets needs the `datasets` package: {INSTALL_HINT}") from None
    return datasets


def offline() -> bool:
    """True when the environment asks Hugging Face libraries to stay offline."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


@lru_cache(maxsize=None)
def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=PROBE_SECONDS):
            return True
    except OSError:
        return False


def hub_reachable() -> bool:
    """Whether a TCP connection to the hub's host ($HF_ENDPOINT or huggingface.co) opens quickly (cached)."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return _reachable(url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443))


_FAILED: dict[tuple, str] = {}  # (spec, limit, offline, endpoint) -> why it failed: each failure is tried once


def load_rows(spec: HubSpec, limit: int | None = None, keep: bool = False) -> list[dict]:
    """The rows of one split of a hub (or hub-layout local) dataset, columns renamed; HubError otherwise.
    `keep=True` (evaluation tasks: small splits read before and after training, after every stage and in every
    cell of a grid) keeps the rows for the process, the last `KEPT` specs; a data source (read once per data
    build, possibly large) is read afresh and not held once its records are made. A failure is remembered for
    the process (same spec, limit and offline setting and endpoint): a gated or unknown id is asked once."""
    import_datasets()  # first, every call: what is remembered is a dataset's failure, never a missing package
    key = spec.model_dump_json()
    failed = (key, limit, offline(), os.environ.get("HF_ENDPOINT"))
    if failed in _FAILED:
        raise HubError(_FAILED[failed])
    try:
        rows = _kept(key, limit) if keep else _load(key, limit)
    except HubError as e:
        _FAILED[failed] = str(e)
        raise
    return [dict(r) for r in rows]


def _load(key: str, limit: int | None) -> tuple[dict, ...]:
    spec = HubSpec.model_validate_json(key)
    datasets = import_datasets()
    where = spec.label()
    local = spec.is_local()
    if not local and not offline() and not hub_reachable():
        raise HubError(f"hub dataset {where}: the hub is unreachable (no network; a cached copy is used with "
                       f"HF_DATASETS_OFFLINE=1)")
    path = str(Path(spec.path).expanduser()) if local else spec.path
    sl = f"{spec.split}[:{limit}]" if limit else spec.split
    try:
        ds = datasets.load_dataset(path, spec.name, split=sl, revision=spec.revision)
    except Exception as e:  # the hub raises many types (offline, gated, unknown id or config): one line
        if offline() and not local:
            raise HubError(f"hub dataset {where}: offline (HF_DATASETS_OFFLINE or HF_HUB_OFFLINE is set) and not in "
                           f"the Hugging Face cache") from None
        raise HubError(f"hub dataset {where}: cannot load ({one_line(e) or type(e).__name__})") from None
    missing = [c for c in [*spec.columns, *spec.values] if c not in ds.column_names]
    if missing:
        raise HubError(f"hub dataset {where}: field 'columns'/'values' names {missing[0]!r}, which it does not have "
                       f"(columns: {', '.join(ds.column_names)})")
    names = {c: f for c, f in ds.features.items() if isinstance(f, datasets.ClassLabel)}
    rows = []
    for row in ds:
        for c, feat in names.items():
            if isinstance(row.get(c), int) and row[c] >= 0:
                row[c] = feat.int2str(row[c])
        for c, m in spec.values.items():
            row[c] = m.get(str(row[c]), row[c])
        rows.append({spec.columns.get(k, k): v for k, v in row.items()})
    return tuple(rows)


KEPT = 64  # more than the hub splits a run's evaluation reads (40 tasks, some with a train split or a second
#            config): an LRU smaller than what one evaluation reads would read every task again each time
_kept = lru_cache(maxsize=KEPT)(_load)
