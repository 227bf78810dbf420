"""`evaluate`: run a list of tasks on a model and save scores and per-example outputs.

Outputs (when `out_dir` is given): out_dir/<label>/<task>.jsonl with one record per example
(prompt, output, parsed answer, label, ...) and out_dir/<label>/scores.json with every task's
result, rewritten after each task. A result carries its task's `kind` and `metrics` (result name ->
declaration, `lingotune.eval.declared.describe`), so it is read without the task file.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from rich.console import Console

from lingotune.eval.config import EvalConfig
from lingotune.eval.copy import build_messages as copy_messages, run_copy
from lingotune.eval.multiple_choice import mc_context, run_multiple_choice
from lingotune.eval.perplexity import run_perplexity
from lingotune.eval.tasks import TaskSpec, load_demos, load_examples, load_task
from lingotune.eval.transfer import run_alignment, run_transfer, run_transfer_loglik
from lingotune.eval.translation import build_messages as translation_messages, run_translation
from lingotune.eval.yesno import run_yesno, user_prompt as yesno_prompt
from lingotune.paths import data_root
from lingotune.files import atomic_write_text, read_json, safe_name, save_json

console = Console(stderr=True)


def _clean(v):
    """JSON-safe: NaN/inf -> None, rounded floats, recursively."""
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else round(v, 4)
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def task_examples(spec: TaskSpec, cfg: EvalConfig, root: Path | None, task_lang: str) -> list[dict]:
    """The examples `cfg` evaluates of a task: `limits` or `limit` (perplexity: else `bpc_max_lines`), `sample`."""
    limit = cfg.limits.get(spec.name, cfg.limit)
    if limit is None and spec.kind == "perplexity":
        limit = cfg.bpc_max_lines
    return load_examples(spec, root, task_lang, limit, cfg.sample, cfg.seed)


def task_shots(spec: TaskSpec, cfg: EvalConfig, root: Path | None, task_lang: str) -> tuple[list[int], list[dict]]:
    """(k-shot settings, demonstration rows) of a yes/no or multiple-choice task: `cfg.shots` where the task has
    a training split, else its own; FileNotFoundError when k > 0 has no demonstrations."""
    shots = cfg.shots if cfg.shots is not None and (spec.train_file or spec.hub_train_split) else spec.shots
    train = load_demos(spec, root, task_lang) if any(k > 0 for k in shots) else []
    if any(k > 0 for k in shots) and not train:
        raise FileNotFoundError(f"task {spec.name}: k-shot needs a train_file")
    return shots, train


def run_task(model, tok, spec: TaskSpec, cfg: EvalConfig, root: Path | None, lang: str,
             reference: dict | None = None) -> tuple[dict, list[dict]]:
    """(result, per-example records) of one task; FileNotFoundError/ImportError when its data is absent.
    `reference`: the untouched model's result of this task (a transfer task scores the items it knew)."""
    task_lang = spec.lang or lang
    rows = task_examples(spec, cfg, root, task_lang)
    metrics, cis, records = {}, {}, []
    if spec.kind == "translation":
        records, metrics, cis = run_translation(model, tok, spec, rows, cfg)
    elif spec.kind == "perplexity":
        records, metrics, cis = run_perplexity(model, tok, spec, rows, cfg)
    elif spec.kind == "copy":
        records, metrics, cis = run_copy(model, tok, spec, rows, cfg, task_lang)
    elif spec.kind == "transfer":
        run = run_transfer_loglik if spec.score == "loglik" else run_transfer
        records, metrics, cis = run(model, tok, spec, rows, task_lang, cfg, reference)
    elif spec.kind == "alignment":
        records, metrics, cis = run_alignment(model, tok, spec, rows, task_lang, cfg, reference)
    else:
        shots, train = task_shots(spec, cfg, root, task_lang)
        for k in shots:
            run = run_yesno if spec.kind == "yesno" else run_multiple_choice
            recs, m, c = run(model, tok, spec, rows, task_lang, cfg, train, k)
            records += recs
            metrics.update(m)
            cis.update(c)
    result = {**metrics, "ci": cis, "n": len(rows), "lang": task_lang, "split": spec.split or None,
              "kind": spec.kind, "metrics": spec.describe_metrics(metrics)}
    return result, records


def task_fingerprint(cfg: EvalConfig, spec, lang: str, reference: dict | None) -> str:
    """sha256 of what a task's result depends on besides the model: the evaluation settings, the task file, the
    language and the untouched model's result it is conditioned on (the transfer probe)."""
    import hashlib

    what = {"cfg": cfg.model_dump(mode="json"), "task": spec.model_dump(mode="json"), "lang": lang,
            "reference": reference}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def evaluate(model, tokenizer, cfg: EvalConfig, out_dir: Path | None = None, label: str = "model",
             lang: str = "ru", reference: dict | None = None, tasks: list[str] | None = None,
             resume: bool = False) -> dict:
    """Run `cfg.tasks` (or the default suite of `lang`; or `tasks`) and return {task: {metric: value, "ci",
    "metrics", "n", "seconds", "skipped"}}. `reference`: the untouched model's results (transfer tasks score
    every model on the items the untouched model answers correctly in English).

    A task whose data is missing is skipped with its reason in "skipped"; an unknown task name or
    a bad task file raises ValueError before anything runs. `resume` (an interrupted evaluation of the
    same model into the same `out_dir`/`label`, e.g. a grid cell): a task already scored there with the same
    settings (`task_fingerprint`, kept in `done.json`) is not run again; its result is read back.
    """
    safe_name(label, "evaluation label")
    root = data_root(cfg.data_root)
    names = cfg.task_names(lang) if tasks is None else tasks
    specs = [load_task(n) for n in names]
    results: dict[str, dict] = {}
    folder = Path(out_dir) / label if out_dir is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    if folder is not None and not resume:  # a fresh evaluation: what an earlier one scored here is not reused later
        (folder / "done.json").unlink(missing_ok=True)
    done = (read_json(folder / "done.json") or {}) if folder is not None and resume else {}
    earlier = (read_json(folder / "scores.json") or {}) if done else {}
    for spec in specs:
        mark = task_fingerprint(cfg, spec, lang, (reference or {}).get(spec.name)) if folder is not None else None
        if mark and done.get(spec.name) == mark and spec.name in earlier:
            console.print(f"[dim]{label} {spec.name}: scored earlier[/]")
            results[spec.name] = earlier[spec.name]
            continue
        t0 = time.perf_counter()
        try:
            result, records = run_task(model, tokenizer, spec, cfg, root, lang, (reference or {}).get(spec.name))
            result["skipped"] = None
        except (FileNotFoundError, ImportError) as e:
            reason = str(e) if isinstance(e, FileNotFoundError) else f"cannot import {e.name or e} ({e})"
            console.print(f"[yellow]skipping {spec.name}: {reason}[/yellow]")
            result, records = {"ci": {}, "n": 0, "skipped": reason}, []
        result["seconds"] = round(time.perf_counter() - t0, 2)
        results[spec.name] = _clean(result)
        if folder is not None:
            if records:
                atomic_write_text(folder / f"{spec.name}.jsonl",
                                  "".join(json.dumps(_clean(r), ensure_ascii=False) + "\n" for r in records))
            save_json(folder / "scores.json", results)
            if not result.get("skipped"):  # a skipped task is tried again (its data may be there now)
                done[spec.name] = mark
                save_json(folder / "done.json", done)
    return results


def leakage_texts(cfg: EvalConfig, lang: str, root: Path | None) -> list[str]:
    """Every text of the tasks `cfg` evaluates for `lang` (all rows, not only the evaluated sample), for
    the data layer's leakage check. Tasks whose data is absent contribute nothing."""
    texts: list[str] = []
    for name in cfg.task_names(lang):
        spec = load_task(name)
        try:
            rows = load_examples(spec, root, spec.lang or lang)
        except (OSError, ValueError):
            continue
        texts += [t for r in rows for t in row_texts(r)]
    return texts


def row_texts(row: dict) -> list[str]:
    """An example's texts (its string fields), as the leakage check sees them."""
    return [v for v in row.values() if isinstance(v, str)]


def question(spec: TaskSpec, row: dict, lang: str, seed: int) -> str | None:
    """The user prompt a task puts to the model for one example (0-shot); None for perplexity tasks, which ask
    nothing."""
    if spec.kind == "yesno":
        return yesno_prompt(spec, row, lang, seed)
    if spec.kind == "multiple_choice":
        return mc_context(spec, row, lang)
    if spec.kind == "translation":
        return translation_messages(spec, row)[-1]["content"]
    if spec.kind == "copy":
        return copy_messages(spec, row, lang)[-1]["content"]
    return None


def sample_questions(cfg: EvalConfig, lang: str, root: Path | None, limit: int) -> list[dict]:
    """Up to `limit` questions of the evaluated examples of `cfg`'s tasks, taken in turn from each task that
    asks something (in file order within a task): {"prompt", "source": "<task>, example <id>", "texts": the
    example's texts}. Tasks whose data is absent contribute nothing."""
    per_task = []
    for name in cfg.task_names(lang):
        spec = load_task(name)
        task_lang = spec.lang or lang
        try:
            rows = load_examples(spec, root, task_lang, cfg.limits.get(spec.name, cfg.limit), cfg.sample, cfg.seed)
            asked = [(q, r) for r in rows if (q := question(spec, r, task_lang, cfg.seed))]
        except (OSError, ValueError, ImportError):
            continue
        per_task.append([{"prompt": q, "source": f"{spec.name}, example {r['id']}", "texts": row_texts(r)}
                         for q, r in asked])
    out = [t[i] for i in range(max(map(len, per_task), default=0)) for t in per_task if i < len(t)]
    return out[:limit]
