"""Label preference pairs (kind "label"): the right vs the wrong verbalisation of labelled rows of evaluation
tasks, read on a split the task does NOT evaluate (see `lingotune.data.prefs` for the file layout and the checks).

The prompt is the one the evaluation renders (yes/no: `eval.yesno.build_messages`; multiple choice:
`eval.multiple_choice.mc_context`), which is why this lives in `eval/`.
"""

from __future__ import annotations

import random
from pathlib import Path

from lingotune.data.prefs import PrefCounts
from lingotune.data.records import DataError, PrefRecord
from lingotune.errors import UserError
from lingotune.eval.multiple_choice import mc_choices, mc_context
from lingotune.eval.tasks import carve_part, load_task, map_label, read_rows
from lingotune.eval.yesno import answer_word, build_messages

LABEL_TASKS = ("kobest_boolq", "kobest_copa", "kobest_hellaswag", "kobest_sentineg", "kobest_wic",
               "danetqa", "terra", "idat", "mq2q")  # the label tasks of a language: those here in its language


def label_spec(task: str, lang: str | None = None):
    """The TaskSpec of a label task, checked: yes/no or multiple choice, in `lang`, with a split that is not
    evaluated (a `train_file` other than its `file`, or a carve whose other half is used)."""
    spec = load_task(task)
    if spec.kind not in ("yesno", "multiple_choice"):
        raise UserError(f"task {spec.name}: kind {spec.kind} has no labels to verbalise (yesno or multiple_choice)")
    if spec.lang is None or (lang is not None and spec.lang != lang):
        raise UserError(f"task {spec.name}: written in {spec.lang or 'the run language'}, not {lang}; "
                        f"label pairs need a task in the language built")
    if spec.train_file and spec.train_file == spec.file:
        raise UserError(f"task {spec.name}: train_file is the evaluated file {spec.file}; no pairs from it")
    if not spec.train_file and not spec.carve:
        raise UserError(f"task {spec.name}: no training split (train_file or carve); label pairs come only from "
                        f"data that is not evaluated")
    return spec


def label_tasks(lang: str) -> list[str]:
    """The built-in label tasks written in `lang` (those of LABEL_TASKS)."""
    return [t for t in LABEL_TASKS if load_task(t).lang == lang]


def training_rows(spec, root: Path | None) -> tuple[list[dict], str]:
    """(rows, what they are) of a checked task's split that is not evaluated: its `train_file`, or else the half
    of its carve that it does not evaluate (IDAT, MQ2Q: `carve: test`, so the dev half)."""
    if spec.train_file:
        return read_rows(spec, root, spec.lang, which="train"), spec.train_file
    other = "dev" if spec.carve == "test" else "test"
    rows = [r for r in read_rows(spec, root, spec.lang) if carve_part(r, spec.carve_key) == other]
    return rows, f"{spec.file} ({other} half)"


def _label_record(spec, row: dict, lang: str, seed: int) -> tuple[str | None, str, str, str]:
    """(system, prompt, chosen, rejected) of one labelled row."""
    if spec.kind == "yesno":
        msgs = build_messages(spec, row, lang, seed)
        system = msgs[0]["content"] if msgs[0]["role"] == "system" else None
        wrong = "no" if row["label"] == "yes" else "yes"
        return system, msgs[-1]["content"], answer_word(row["label"], lang), answer_word(wrong, lang)
    options = [c.strip() for c in mc_choices(spec, row, lang)]
    if not isinstance(row["label"], int) or not 0 <= row["label"] < len(options):
        raise DataError(f"task {spec.name}: row {row['id']}: label {row['label']!r} is not an option index")
    wrong = [c for j, c in enumerate(options) if j != row["label"]]
    rejected = random.Random(f"{seed}:{row['id']}").choice(wrong)
    return None, mc_context(spec, row, lang).strip(), options[row["label"]], rejected


def label_pairs(task: str, root: Path | None, lang: str | None = None, seed: int = 0,
                limit: int | None = None) -> tuple[list[PrefRecord], PrefCounts]:
    """Right vs wrong verbalisation for the rows of a task's split that is not evaluated (see the module doc):
    the task's train_file; for IDAT and MQ2Q, which have none and evaluate the test half of their carve, the
    dev half."""
    spec = label_spec(task, lang)
    rows, what = training_rows(spec, root)
    rows = rows[:limit] if limit is not None else rows
    counts, out = PrefCounts(kind="label", read=len(rows)), []
    for i, row in enumerate(rows):
        row = {**row, "label": map_label(spec, row, where=f"{what}: row {i + 1}")}
        system, prompt, chosen, rejected = _label_record(spec, row, spec.lang, seed)
        out.append(PrefRecord(prompt, chosen, rejected, system, f"{spec.name}/{row['id']}", spec.lang,
                              f"{spec.name}:{what}#{row['id']}", "label"))
    return out, counts
