"""Evaluation tasks described as data: one small YAML file per task.

A task file names its data (files relative to the data root, and/or its public copy on the Hugging Face
hub: `hub: {path, name, split, revision, columns, values}`, see `lingotune.hub`), how to read it, the prompt
template(s), the label field and how labels map to answers.

Where rows come from: the task's file under the data root when it is there, else its `hub:` copy, else the
task is skipped with one line that says both why and how to get the data (`FileNotFoundError`). Rows from
the hub are given the file's field names and values by `columns`/`values`, so everything after reading is
the same for both. The built-in tasks live in
`lingotune/eval/tasks/*.yaml`; a user's file is loaded by path (`--tasks my.yaml`).

Templates: Python `str.format` with the row's field names (`{passage}`), or Jinja when the
template contains `{{` or `{%` (the row is also available as `row`, for keys like "1").
Every template also sees `answer_yes_no`, `yes` and `no` of the task's language.
"""

from __future__ import annotations

import hashlib
import importlib
import random
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from lingotune.data.formats import read_tsv
from lingotune.data.records import DataError
from lingotune.eval.declared import MetricSpec, check_metrics, describe
from lingotune.errors import pydantic_line
from lingotune.files import FileFormatError, read_yaml, safe_name
from lingotune.hub import HubError, HubSpec, load_rows
from lingotune.languages import get_language

TASKS_DIR = Path(__file__).parent / "tasks"


class TaskSpec(BaseModel):
    """One evaluation task, as its YAML file describes it.

    `metrics` declares what the task reports, one mapping per metric, exactly one primary:

        metrics:
          - {name: accuracy, primary: true, higher_is_better: true}
          - {name: f1, higher_is_better: true}

    Names are the kind's own (`lingotune.eval.declared.KIND_METRICS`); a declared name also covers
    its log-likelihood form (yes/no `mode: loglik`: accuracy -> accuracy_ll) and its k-shot forms
    (accuracy_5shot, accuracy_ll_5shot). `higher_is_better` may be left out (the metric's own
    direction); omitting `metrics` declares all of the kind's metrics (`DEFAULT_PRIMARY` primary).
    Each result carries the mapping (`describe_metrics`), so readers of results.json need no task file.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Task name: the key in results and the file stem of its outputs.")
    lang: str | None = Field(None, description="Language of the task (ISO code); null = the run's language.")
    kind: Literal["yesno", "translation", "perplexity", "multiple_choice", "copy", "transfer", "alignment"] = Field(
        description="How the task is scored (transfer, alignment: lingotune.eval.transfer).")
    description: str = Field("", description="One line on what the task is and where it comes from.")
    format: Literal["jsonl", "tsv", "lines", "parallel", "starter", "starter_transfer", "xquad"] = Field(
        description="Reader: jsonl (one object a line), tsv (with a header), lines (one text a line), "
        "parallel (two line-aligned files), starter (lingotune.data.starter held-out questions), starter_transfer "
        "(the transfer probe's own items: held-out CLDR facts and sums, in English and the run's language), xquad "
        "(`file` is a folder with xquad.en.json and xquad.<lang>.json: passage + question in both languages)."
    )
    file: str | None = Field(None, description="Data file relative to the data root (the source side for `parallel`).")
    target_file: str | None = Field(None, description="`parallel` only: the line-aligned target-side file.")
    hub: HubSpec | None = Field(None, description="The data's copy on the Hugging Face hub (or a local folder in the "
                                "hub's layout), read when `file` is not under the data root: {path, name, split, "
                                "revision, columns, values}. `lines` reads field 'text'; `parallel` reads fields "
                                "'source' and 'target', or 'text' of `hub` and of `target_hub`.")
    target_hub: HubSpec | None = Field(None, description="`parallel` only: the target side as another hub split "
                                       "(e.g. another config), aligned with `hub` by position; ids must agree.")
    hub_train_split: str | None = Field(None, description="Split of `hub` the k-shot demonstrations come from when "
                                        "`train_file` is not under the data root (e.g. 'train').")
    group_lines: int | None = Field(
        None, ge=2, description="`lines` only: one row per `group_lines` consecutive non-blank lines joined by a space "
        "(paragraphs; the last row holds the remainder); null = one row a line."
    )
    train_file: str | None = Field(None, description="File the k-shot demonstrations are drawn from (same format).")
    split: str = Field("", description="Which split `file` is (val, dev, devtest, test), for the record.")
    rename: dict[str, str] = Field(default_factory=dict, description="Rename fields after reading (e.g. '1' -> option1).")
    carve: Literal["dev", "test"] | None = Field(
        None, description="Keep one half of a set that has no official split: rows whose sha256(carve_key fields) "
        "starts with an even 32-bit number are 'dev', odd ones 'test'."
    )
    carve_key: list[str] = Field(default_factory=list, description="Fields hashed by `carve` and `keep_fraction`.")
    keep_fraction: float | None = Field(
        None, gt=0, le=1, description="Keep only rows whose sha256(carve_key fields), read as a fraction of 2^32, is "
        "below this (a stable held-out share, e.g. the XQuAD paragraphs the probe keeps out of training)."
    )
    max_new_tokens: int | None = Field(None, ge=1, le=512, description="transfer: tokens generated per answer "
                                       "(null = the evaluation's max_new_tokens).")
    score: Literal["generate", "loglik"] = Field(
        "generate", description="transfer only: generate each answer and match it (generate), or score the item's "
        "options by log-likelihood per character (loglik; format starter_transfer, whose items carry options).")
    system: str | None = Field(None, description="System prompt (template); null = the chat template's default.")
    prompts: list[str] = Field(default_factory=list, description="User prompt template(s); with several, one is drawn per example (seeded).")
    choices: list[str] = Field(default_factory=list, description="multiple_choice: one template per option (the continuation scored).")
    label_field: str | None = Field(None, description="Field holding the gold label.")
    labels: dict[str, Any] = Field(
        default_factory=dict,
        description="Raw label -> 'yes'/'no' (yesno) or option index (multiple_choice); compared case-insensitively.",
    )
    metrics: list[MetricSpec] | None = Field(
        None, validate_default=True,
        description="Metrics reported: [{name, primary, higher_is_better}], exactly one primary; null = all of the kind's.",
    )
    shots: list[int] = Field(default_factory=lambda: [0], description="k-shot settings (demonstrations from train_file).")
    src_lang: str | None = Field(None, description="translation: source language code.")
    tgt_lang: str | None = Field(None, description="translation: target language code.")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return safe_name(v, "task name")

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, v: Any) -> Any:
        # YAML 1.1 reads unquoted true/yes/no as booleans: map them back to words.
        if not isinstance(v, dict):
            return v
        word = lambda x: ("yes" if x else "no") if isinstance(x, bool) else x  # noqa: E731
        return {str(k).strip().lower(): word(val) for k, val in v.items()}

    @field_validator("metrics", mode="before")
    @classmethod
    def _metric_entries(cls, v: Any) -> Any:
        bare = [x for x in v if not isinstance(x, dict)] if isinstance(v, list) else []
        if bare:
            raise ValueError(f"each metric is a mapping like {{name: accuracy, primary: true, higher_is_better: true}}, "
                             f"not {bare[0]!r}")
        return v

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: list[MetricSpec] | None, info: ValidationInfo) -> list[MetricSpec] | None:
        kind = info.data.get("kind")
        return check_metrics(kind, v) if kind else v

    def describe_metrics(self, keys) -> dict[str, dict]:
        """Result name -> declaration for a result of this task (see `lingotune.eval.declared.describe`)."""
        return describe(self.kind, self.metrics or [], keys)

    @model_validator(mode="after")
    def _check(self) -> "TaskSpec":
        if self.lang is not None:
            get_language(self.lang)
        if self.format not in ("starter", "starter_transfer") and not (self.file or self.hub):
            raise ValueError("field 'file' or 'hub' is required unless format is 'starter' or 'starter_transfer'")
        if (self.kind in ("transfer", "alignment")) != (self.format in ("starter_transfer", "xquad")):
            raise ValueError("kinds 'transfer' and 'alignment' go with formats 'starter_transfer' and 'xquad' "
                             "(rows with the question in English and in the target language), and only with them")
        if self.score == "loglik" and (self.kind, self.format) != ("transfer", "starter_transfer"):
            raise ValueError("'score: loglik' is for kind 'transfer' on format 'starter_transfer' (items with options); "
                             "yes/no tasks take the evaluation's 'mode'")
        if self.format == "xquad" and self.hub:
            raise ValueError("format 'xquad' reads the data root's xquad folder; it has no hub copy yet")
        if self.format == "parallel" and self.file and not self.target_file:
            raise ValueError("format 'parallel' needs field 'target_file'")
        if self.target_hub and not (self.hub and self.format == "parallel"):
            raise ValueError("'target_hub' needs format 'parallel' and 'hub'")
        if self.group_lines is not None and self.format != "lines":
            raise ValueError(f"'group_lines' needs format 'lines', not {self.format!r}")
        if self.kind == "yesno":
            if not self.prompts:
                raise ValueError("kind 'yesno' needs at least one entry in 'prompts'")
            bad = [k for k, v in self.labels.items() if v not in ("yes", "no")]
            if bad:
                raise ValueError(f"labels: values must be 'yes' or 'no' (quote them in YAML); bad keys {bad}")
        if self.kind == "multiple_choice" and (not self.prompts or len(self.choices) < 2):
            raise ValueError("kind 'multiple_choice' needs 'prompts' (the context) and at least two 'choices'")
        if self.kind == "translation" and not (self.src_lang and self.tgt_lang):
            raise ValueError("kind 'translation' needs 'src_lang' and 'tgt_lang'")
        if (self.carve or self.keep_fraction) and not self.carve_key:
            raise ValueError("'carve' and 'keep_fraction' need 'carve_key' (the fields hashed)")
        if any(k < 0 for k in self.shots):
            raise ValueError("shots must be >= 0")
        return self


def builtin_tasks() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def load_task(name_or_path: str) -> TaskSpec:
    """A built-in task by name, or a task YAML file by path; ValueError with the file at fault otherwise."""
    path = Path(name_or_path).expanduser()
    if not (path.suffix in (".yaml", ".yml") or "/" in name_or_path or "\\" in name_or_path):
        path = TASKS_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ValueError(f"unknown task {name_or_path!r}; built-in: {', '.join(builtin_tasks())} (or give a .yaml path)")
    raw = read_yaml(path, "task file")
    if not isinstance(raw, dict):
        raise FileFormatError(f"{path}: a task file must be a mapping of fields")
    try:
        return TaskSpec(**raw)
    except ValidationError as e:
        raise FileFormatError(pydantic_line(e, str(path))) from None


# ---------------------------------------------------------------- templates

_JINJA = None


def render(template: str, fields: dict[str, Any]) -> str:
    """Fill a template: str.format with the fields, or Jinja when it uses {{ }} / {% %}."""
    if "{{" in template or "{%" in template:
        global _JINJA
        if _JINJA is None:
            from jinja2 import StrictUndefined
            from jinja2.sandbox import SandboxedEnvironment

            _JINJA = SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)
        return _JINJA.from_string(template).render(row=fields, **{k: v for k, v in fields.items() if k.isidentifier()})
    try:
        return template.format_map(fields)
    except KeyError as e:
        raise DataError(f"template {template[:40]!r}: no field {e.args[0]!r} (fields: {', '.join(sorted(fields))})") from None


def template_fields(row: dict[str, Any], lang: str) -> dict[str, Any]:
    language = get_language(lang)
    return {**row, "answer_yes_no": language.answer_yes_no, "yes": language.yes[0], "no": language.no[0]}


# ---------------------------------------------------------------- readers

def _read_jsonl(path: Path) -> list[dict]:
    from lingotune.data.formats import iter_rows

    rows = []
    for where, row in iter_rows(path):
        if not isinstance(row, dict):
            raise DataError(f"{where}: each line must be a JSON object")
        rows.append(row)
    return rows




def _read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def group_lines(lines: list[str], size: int | None) -> list[str]:
    """The lines unchanged (size None), or paragraphs: the non-blank lines, stripped, `size` at a time in file
    order, joined by one space; the last paragraph holds what remains (1012 lines by 5: 202 of 5 and one of 2)."""
    if size is None:
        return lines
    kept = [t.strip() for t in lines if t.strip()]
    return [" ".join(kept[i:i + size]) for i in range(0, len(kept), size)]


def _read_starter(lang: str) -> list[dict]:
    mod = importlib.import_module("lingotune.data.starter")  # lazily: written by another part of lingotune
    return [dict(r) for r in mod.generate(lang, seed=0).heldout_yesno]


def read_rows(spec: TaskSpec, root: Path | None, lang: str, which: str = "file") -> list[dict]:
    """Rows of the task's `file` (or `train_file`), else of its hub copy, renamed and with ids; a
    FileNotFoundError says why neither could be read and how to get the data."""
    if spec.format == "starter":
        return [{**r, "id": r.get("id", i)} for i, r in enumerate(_read_starter(lang))]
    if spec.format == "starter_transfer":
        return importlib.import_module("lingotune.data.starter").transfer_items(lang)
    if spec.format == "xquad":
        try:
            folder = data_path(root, spec.file)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e}; format xquad reads the data root only (a folder with xquad.en.json and "
                                    f"xquad.<lang>.json, from github.com/google-deepmind/xquad)") from None
        return importlib.import_module("lingotune.data.sources").xquad_transfer_rows(folder, lang)
    rel = spec.file if which == "file" else spec.train_file
    try:
        rows = _read_file_rows(spec, root, rel)
    except FileNotFoundError as e:
        split = spec.hub.split if spec.hub and which == "file" else spec.hub_train_split
        if spec.hub is None or split is None:
            raise FileNotFoundError(f"{e}; no hub copy is named (give the task a `hub:`)") from None
        try:
            rows = _read_hub_rows(spec, split)
        except HubError as h:
            raise FileNotFoundError(f"{e}; {h}") from None
    if spec.rename:
        rows = [{spec.rename.get(k, k): v for k, v in r.items()} for r in rows]
    for i, r in enumerate(rows):
        r.setdefault("id", r.get("idx", r.get("ID", i)))
    return rows


def _read_file_rows(spec: TaskSpec, root: Path | None, rel: str | None) -> list[dict]:
    path = data_path(root, rel)
    if spec.format == "jsonl":
        return _read_jsonl(path)
    if spec.format == "tsv":
        return read_tsv(path)
    if spec.format == "lines":
        return [{"text": t} for t in group_lines(_read_lines(path), spec.group_lines)]
    src, tgt = _read_lines(path), _read_lines(data_path(root, spec.target_file))
    if len(src) != len(tgt):
        raise DataError(f"{spec.target_file}: {len(tgt)} lines, {rel} has {len(src)}: files must be line-aligned")
    return [{"source": s, "target": t} for s, t in zip(src, tgt)]


def _read_hub_rows(spec: TaskSpec, split: str) -> list[dict]:
    """The hub copy's rows of `split`, in the shape the file's reader gives."""
    src = spec.hub.model_copy(update={"split": split})
    rows = load_rows(src, keep=True)
    if spec.format == "lines":
        return [{"text": t} for t in group_lines([_field(r, "text", src) for r in rows], spec.group_lines)]
    if spec.format != "parallel":
        return rows
    if spec.target_hub is None:
        return [{"source": _field(r, "source", src), "target": _field(r, "target", src),
                 **({"id": r["id"]} if "id" in r else {})} for r in rows]
    tgt = spec.target_hub.model_copy(update={"split": split})
    trows = load_rows(tgt, keep=True)
    if len(trows) != len(rows):
        raise DataError(f"hub dataset {tgt.label()}: {len(trows)} rows, {src.label()} has {len(rows)}: the sides "
                        f"must be aligned")
    out = []
    for i, (s, t) in enumerate(zip(rows, trows)):
        if "id" in s and "id" in t and str(s["id"]) != str(t["id"]):
            raise DataError(f"hub dataset {tgt.label()}: row {i + 1}: field 'id' {t['id']!r} differs from "
                            f"{src.label()} ({s['id']!r}); the sides are not aligned")
        out.append({"source": _field(s, "text", src), "target": _field(t, "text", tgt), **({"id": s["id"]} if "id" in s else {})})
    return out


def _field(row: dict, name: str, spec: HubSpec):
    if name not in row:
        raise DataError(f"hub dataset {spec.label()}: no field {name!r} (fields: {', '.join(map(str, row))}); "
                        f"map a column to it with 'columns'")
    return row[name]


def data_path(root: Path | None, rel: str | None) -> Path:
    if rel is None:
        raise FileNotFoundError("no file is given")
    p = Path(rel).expanduser()
    if not p.is_absolute():
        if root is None:
            raise FileNotFoundError(f"{rel}: no data root (set LINGOTUNE_DATA or --data-root)")
        p = root / p
    if not p.exists():
        raise FileNotFoundError(f"{p}: data file not found")
    return p


def _key_hash(row: dict, key: list[str]) -> int:
    text = "\x1f".join(str(row.get(k, "")) for k in key)
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16)


def carve_part(row: dict, key: list[str]) -> str:
    """'dev' or 'test' for a row, from the sha256 of its key fields (stable across runs and machines)."""
    return "dev" if _key_hash(row, key) % 2 == 0 else "test"


def kept(row: dict, key: list[str], fraction: float) -> bool:
    """Whether a row falls in the `keep_fraction` share (sha256 of its key fields below fraction x 2^32)."""
    return _key_hash(row, key) < fraction * 2**32


def map_label(spec: TaskSpec, row: dict, where: str = "") -> Any:
    """The gold answer of a row: 'yes'/'no' or an option index; None when the task has no label field."""
    if spec.label_field is None:
        return None
    if spec.label_field not in row:
        raise DataError(f"{where}: no label field {spec.label_field!r} (fields: {', '.join(map(str, row))})")
    raw = row[spec.label_field]
    key = str(raw).strip().lower()
    if not spec.labels:
        return int(raw) if spec.kind == "multiple_choice" else key
    if key not in spec.labels:
        raise DataError(f"{where}: label {raw!r} is not in the task's labels {sorted(spec.labels)}")
    return spec.labels[key]


def select(items: list, limit: int | None, sample: bool, seed: int) -> list:
    """The first `limit` items, or `limit` drawn at random with `seed` (kept in file order)."""
    if limit is None or limit >= len(items):
        return list(items)
    if not sample:
        return list(items[:limit])
    idx = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in idx]


def load_examples(spec: TaskSpec, root: Path | None, lang: str, limit: int | None = None,
                  sample: bool = False, seed: int = 0) -> list[dict]:
    """The task's evaluation rows, each with `label` mapped, carved and capped/sampled."""
    rows = read_rows(spec, root, lang)
    if spec.carve:
        rows = [r for r in rows if carve_part(r, spec.carve_key) == spec.carve]
    if spec.keep_fraction is not None:
        rows = [r for r in rows if kept(r, spec.carve_key, spec.keep_fraction)]
    out = []
    for i, r in enumerate(rows):
        r = dict(r)
        r["label"] = map_label(spec, r, where=f"{spec.file or spec.name}: row {i + 1}")
        out.append(r)
    return select(out, limit, sample, seed)


def load_demos(spec: TaskSpec, root: Path | None, lang: str) -> list[dict]:
    """Rows of `train_file` (for k-shot demonstrations) with labels mapped; [] when there is none."""
    if not (spec.train_file or spec.hub_train_split):
        return []
    rows = read_rows(spec, root, lang, which="train")
    return [{**r, "label": map_label(spec, r, where=f"{spec.train_file or spec.hub_train_split}: row {i + 1}")}
            for i, r in enumerate(rows)]


# ---------------------------------------------------------------- k-shot demonstrations
#
# For each evaluated example, k rows drawn from `train_file` with `random.Random(f"{seed}:{k}:{example id}")`,
# so a given example always sees the same demonstrations whatever the limit or sample. Yes/no tasks put them
# before the question as earlier chat turns; multiple-choice tasks as plain text blocks.


def draw_demos(train: list[dict], k: int, seed: int, example_id) -> list[dict]:
    if k <= 0 or not train:
        return []
    rng = random.Random(f"{seed}:{k}:{example_id}")
    pool = [r for r in train if str(r.get("id")) != str(example_id)] or train
    return rng.sample(pool, min(k, len(pool)))


def suffix(k: int) -> str:
    """Metric-name suffix of a k-shot setting: '' for 0-shot, else '_{k}shot' (e.g. f1_5shot)."""
    return "" if k == 0 else f"_{k}shot"
