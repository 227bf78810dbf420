"""Copy tasks (Darumeru's cp_sent / cp_para, LEP paper): can the model repeat a text exactly?

Each example is one row's `text`: a FLORES-200 devtest sentence (cp_sent_*), or a paragraph of
consecutive lines (cp_para_*: the task's `group_lines: 5`, see `lingotune.eval.tasks.group_lines`).
The prompt is one user message: the task language's `copy_instruction` (`lingotune.languages`), a
blank line, then the text ("{instruction}\\n\\n{text}"), unless the task file gives its own `prompts`
(fields: the row's and `instruction`).

Generation: greedy, ended by the end-of-sequence token or the budget alone (2 x the source's tokens + 16,
capped by `copy_max_new_tokens`). It is not cut at a line break: a model that goes on after the copy
is what these tasks catch. The reply and the source are compared with surrounding whitespace stripped,
nothing else normalized.

Per example (`lingotune.eval.metrics`):
- len = min(reply/source, source/reply) in characters; 0 for an empty reply;
- lcs = 1 if LCS(source, reply) >= 99% of max(len(source), len(reply)), else 0. The longer side, so
  that a truncated copy and a copy padded with chatter both fail. (llmtf's Darumeru counts len in
  tokens and divides a difflib match count by the reply's length alone, which passes a truncated copy.)
A task reports their means in percent (as accuracy is: `lcs`'s per-example 0/1, the record field
`lingotune compare` pairs for its significance test, then reads in points), with bootstrap 95% CIs.
"""

from __future__ import annotations

import numpy as np

from lingotune import inference
from lingotune.data.records import DataError
from lingotune.eval.metrics import bootstrap_mean_ci, lcs_match, length_ratio
from lingotune.eval.tasks import TaskSpec, render
from lingotune.languages import get_language

DEFAULT_USER = "{instruction}\n\n{text}"


def source_text(spec: TaskSpec, row: dict) -> str:
    """The text to copy: the row's `text`, stripped; DataError when it is missing or blank."""
    if "text" not in row:
        raise DataError(f"task {spec.name}: example {row.get('id')} has no 'text' field (fields: "
                        f"{', '.join(map(str, row))}); rename the field to copy to 'text'")
    text = str(row["text"]).strip()
    if not text:
        raise DataError(f"task {spec.name}: example {row.get('id')} has no text to copy")
    return text


def build_messages(spec: TaskSpec, row: dict, lang: str) -> list[dict]:
    instruction = get_language(lang).require("copy_instruction", ValueError, f"the copy task {spec.name}")
    fields = {**row, "text": source_text(spec, row), "instruction": instruction}
    msgs = [{"role": "system", "content": render(spec.system, fields)}] if spec.system else []
    msgs.append({"role": "user", "content": render(spec.prompts[0] if spec.prompts else DEFAULT_USER, fields)})
    return msgs


def score(source: str, output: str) -> dict:
    """{"len", "lcs"} of one reply against its (stripped) source."""
    reply = output.strip()
    return {"len": length_ratio(source, reply), "lcs": lcs_match(source, reply)}


def run_copy(model, tok, spec: TaskSpec, rows: list[dict], cfg, lang: str | None = None) -> tuple[list[dict], dict, dict]:
    """(per-example records, {len, lcs} in percent, their CIs); `lang` (default the task's) picks the instruction."""
    lang = lang or spec.lang
    if lang is None:
        raise ValueError(f"task {spec.name}: no language for the copy instruction (set the task's 'lang')")
    msgs = [build_messages(spec, r, lang) for r in rows]
    sources = [source_text(spec, r) for r in rows]
    budgets = [min(cfg.copy_max_new_tokens, 2 * len(inference.encode(tok, s)) + 16) for s in sources]
    outs = inference.generate_chat(model, tok, msgs, budgets, cfg.batch_size, stop="eos", desc=spec.name)
    records = [{"id": r["id"], "prompt": m[-1]["content"], "source": s, "output": o, **score(s, o), "max_new_tokens": b}
               for r, m, s, o, b in zip(rows, msgs, sources, outs, budgets)]
    metrics, cis = {}, {}
    for name in ("len", "lcs"):
        values = [100.0 * rec[name] for rec in records]
        metrics[name] = float(np.mean(values)) if values else float("nan")
        cis[name] = bootstrap_mean_ci(values, cfg.n_bootstrap, cfg.seed)
    return records, metrics, cis
