"""`lingotune eval`: evaluate a model (plus adapter / trained embeddings) and print a table.

`lingotune.cli` registers `eval_command` under `lingotune.errors.user_errors`: user errors are one
line and exit code 2.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from lingotune.errors import fail
from lingotune.eval.declared import result_metrics

console = Console()


def _fmt(v) -> str:
    return f"{v:.2f}" if isinstance(v, float) else ("-" if v is None else str(v))


def results_table(results: dict, title: str = "") -> Table:
    """One row per task and declared metric: value, 95% CI, n, seconds (skipped tasks with their reason)."""
    table = Table(title=title or None)
    for col in ("task", "metric", "value", "95% CI", "n", "seconds"):
        table.add_column(col, justify="left" if col in ("task", "metric") else "right")
    for task, res in results.items():
        if res.get("skipped"):
            table.add_row(task, "[yellow]skipped[/yellow]", res["skipped"], "", "0", _fmt(res.get("seconds")))
            continue
        first = True
        for metric in result_metrics(res):
            value = res.get(metric)
            ci = res["ci"].get(metric)
            ci_txt = f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ("" if value is not None else res.get("comet_skipped", ""))
            table.add_row(task if first else "", metric, _fmt(value), ci_txt, str(res["n"]) if first else "",
                          _fmt(res["seconds"]) if first else "")
            first = False
    return table


def eval_command(
    model: str = typer.Option("bundled", help="Base model: 'bundled', a local directory or a hub id."),
    adapter: str | None = typer.Option(None, help="PEFT adapter directory (LoRA, DParT stage 2)."),
    embeddings: str | None = typer.Option(None, help="Trained input embeddings (.safetensors, DParT stage 1)."),
    tasks: str = typer.Option("", help="Comma-separated task names or task YAML paths (default: the language's suite)."),
    limit: int | None = typer.Option(None, help="At most this many examples per task."),
    sample: bool = typer.Option(False, help="With --limit, draw the examples at random (seeded)."),
    batch_size: int = typer.Option(8, help="Examples per batch."),
    mode: str = typer.Option("generate", help="Yes/no scoring: generate, loglik or both."),
    shots: str | None = typer.Option(None, help="Comma-separated k-shot settings (e.g. 0,5) overriding the tasks'."),
    data_root: str | None = typer.Option(None, help="Root of the shared data (default: $LINGOTUNE_DATA or ../shared/data)."),
    comet_model: str | None = typer.Option(None, help="Local COMET checkpoint for translation tasks."),
    out: Path = typer.Option(Path("runs/eval"), help="Output folder: <out>/<label>/<task>.jsonl and scores.json."),
    label: str = typer.Option("model", help="Name of this model's results folder under --out."),
    seed: int = typer.Option(0, help="Seed for sampling, k-shot demonstrations and bootstrap."),
    lang: str = typer.Option("ru", help="Language of the run (default suite, starter questions)."),
    n_bootstrap: int = typer.Option(1000, help="Bootstrap resamples for the 95% CIs (0 = none)."),
    api_model: str | None = typer.Option(None, help="Evaluate this model of an OpenAI-compatible endpoint instead "
                                         "(generation tasks only: yes/no in generate mode, translation, copy)."),
    base_url: str = typer.Option("http://127.0.0.1:8000/v1", help="--api-model: the endpoint's base URL (…/v1)."),
    api_key_env: str | None = typer.Option(None, help="--api-model: environment variable holding the API key "
                                           "(default: OPENAI_API_KEY if set)."),
    export_lm_eval: Path | None = typer.Option(None, help="Evaluate nothing: write the log-likelihood tasks (yes/no "
                                               "with --mode loglik, multiple choice) as lm-evaluation-harness tasks "
                                               "into this folder (its README.md says how to run lm_eval on them)."),
    overwrite: bool = typer.Option(False, help="--export-lm-eval: replace an earlier export in that folder."),
) -> None:
    """Evaluate a model on yes/no benchmarks, translation and perplexity; print scores with 95% CIs."""
    from pydantic import ValidationError

    from lingotune.eval import EvalConfig, evaluate
    from lingotune.eval.tasks import load_task
    from lingotune.languages import get_language
    from lingotune.models import load_adapted
    from lingotune.files import safe_name

    get_language(lang)
    safe_name(label, "evaluation label")
    try:
        ks = [int(k) for k in shots.split(",")] if shots else None
    except ValueError:
        fail(f"option --shots: {shots!r} is not a comma-separated list of integers")
    try:
        cfg = EvalConfig(
            tasks=[t for t in tasks.split(",") if t.strip()], limit=limit, sample=sample, seed=seed,
            batch_size=batch_size, mode=mode, data_root=data_root, comet_model=comet_model, n_bootstrap=n_bootstrap,
            shots=ks,
        )
    except ValidationError as e:
        err = e.errors()[0]
        fail(f"option --{'.'.join(map(str, err['loc'])).replace('_', '-')}: {err['msg']}")
    for t in cfg.tasks:
        load_task(t)
    if export_lm_eval is not None:
        return _export_lm_eval(cfg, lang, model, adapter, embeddings, api_model, export_lm_eval, overwrite)
    if api_model:
        from lingotune.eval.answers import eval_api_model

        m, tok = eval_api_model(api_model, base_url, api_key_env, cfg.task_names(lang), cfg.mode,
                                        bool(adapter or embeddings))
        model = f"api:{api_model}"
    else:
        m, tok = load_adapted(model, adapter=adapter, embeddings=embeddings)
    results = evaluate(m, tok, cfg, out_dir=out, label=label, lang=lang)
    console.print(results_table(results, title=f"{label}: {model}" + (f" + {adapter}" if adapter else "")))
    console.print(f"saved to {out / label}")


def _export_lm_eval(cfg, lang: str, model: str, adapter, embeddings, api_model, out: Path, overwrite: bool) -> None:
    from rich.markup import escape

    from lingotune.eval.lm_eval_export import export_lm_eval
    from lingotune.models import load_tokenizer, resolve

    if adapter or embeddings or api_model:
        flag = "--adapter" if adapter else "--embeddings" if embeddings else "--api-model"
        fail(f"option --export-lm-eval: lm_eval loads one model directory, not {flag}; for a lingotune run, "
             f"`lingotune export RUN --out EXPORT`, then --model EXPORT")
    summary = export_lm_eval(load_tokenizer(model), cfg, lang, out, resolve(model), overwrite)
    for w in summary["tasks"]:
        note = f", [yellow]{w['differ']} tokenized differently in lm-eval[/yellow]" if w["differ"] else ""
        console.print(f"{w['name']}: {w['n']} examples ({w['task']}, {w['k']}-shot{note})")
    for reason in summary["left_out"]:
        console.print(f"[yellow]left out {escape(reason)}[/yellow]")
    console.print(f"wrote {len(summary['tasks'])} lm-eval tasks to {out} in {summary['seconds']} s; "
                  f"how to run lm_eval: {out / 'README.md'}")
