"""`lingotune judge`: model A against model B on open prompts, both answer orders judged; win/tie/loss with 95% CIs.

`lingotune.cli` registers `judge_command` under `lingotune.errors.user_errors`: user errors are one line and
exit code 2, and nothing is written before every input has been checked.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def _pct(v, ci) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")


def summary_table(s: dict) -> Table:
    """Wins / ties / losses of A (with their 95% Wilson intervals) and both models' target-language share."""
    table = Table(title=f"A: {s['a']['label']}  vs  B: {s['b']['label']}  (judge: {s['judge']['kind']}, n={s['n']})")
    for col in ("", "A wins", "ties", "A losses", "A in target script", "B in target script"):
        table.add_column(col, justify="left" if not col else "right")
    share = s["target_language_share"]
    table.add_row("% [95% CI]", _pct(s["win_rate"], s["ci"]["win_rate"]), _pct(s["tie_rate"], s["ci"]["tie_rate"]),
                  _pct(s["loss_rate"], s["ci"]["loss_rate"]), _pct(share["a"]["share"], share["a"]["ci"]),
                  _pct(share["b"]["share"], share["b"]["ci"]))
    table.add_row("count", str(s["wins"]), str(s["ties"]), str(s["losses"]),
                  f"{share['a']['in_script']}/{share['a']['n']}", f"{share['b']['in_script']}/{share['b']['n']}")
    return table


def judge_command(
    a: str = typer.Option(..., "--a", help="Model A: 'bundled', a local directory, a hub id, or api:NAME (a model of the endpoint)."),
    b: str = typer.Option(..., "--b", help="Model B, as --a."),
    prompts: str = typer.Option(..., help="A JSONL file ({prompt, reference?, id?} a line), 'starter' (lingotune's stage-2 "
                                "starter questions, with answers) or 'mt_bench' (MT-Bench first turns of --lang: ru, ko)."),
    judge: str = typer.Option(..., help="llm (a model of the endpoint, --judge-model), local (a local model, --judge-model) "
                              "or reference (chrF++ against the reference answers, with the target-script rule)."),
    out: Path = typer.Option(..., "--out", "-o", help="Results folder: summary.json, judgements.jsonl, cache/."),
    judge_model: str | None = typer.Option(None, help="llm: the endpoint's model name; local: 'bundled', a directory or a hub id."),
    lang: str = typer.Option("ru", help="Target language: the judge prompt's language and the script checked."),
    a_adapter: str | None = typer.Option(None, help="Model A's PEFT adapter directory."),
    a_embeddings: str | None = typer.Option(None, help="Model A's trained input embeddings (.safetensors)."),
    b_adapter: str | None = typer.Option(None, help="Model B's PEFT adapter directory."),
    b_embeddings: str | None = typer.Option(None, help="Model B's trained input embeddings (.safetensors)."),
    base_url: str = typer.Option("http://127.0.0.1:8000/v1", help="The OpenAI-compatible endpoint (…/v1) of api: models and the llm judge."),
    api_key_env: str | None = typer.Option(None, help="Environment variable holding the API key (default: OPENAI_API_KEY if set)."),
    api_timeout: float = typer.Option(60.0, min=0.01, help="Seconds before one request times out."),
    api_retries: int = typer.Option(3, min=0, help="Retries of a request that timed out, failed to connect or got HTTP 429/5xx."),
    max_new_tokens: int = typer.Option(512, min=1, help="Answer budget (new tokens)."),
    judge_max_tokens: int = typer.Option(512, min=1, help="The llm/local judge's budget (new tokens)."),
    batch_size: int = typer.Option(8, min=1, help="Prompts per batch (concurrent requests for an endpoint)."),
    limit: int | None = typer.Option(None, min=1, help="At most this many prompts (the first ones)."),
    tie_margin: float = typer.Option(1.0, help="reference: chrF++ points within which two answers tie."),
    echo_run: int = typer.Option(5, help="reference: cut from each answer every run of this many words or more that "
                                 "it copies from the prompt before scoring (0: score answers whole)."),
    cache_dir: Path | None = typer.Option(None, help="Answers and judgements cache (default: <out>/cache)."),
    data_root: str | None = typer.Option(None, help="Root of the shared data, for mt_bench (default: $LINGOTUNE_DATA or ../shared/data)."),
    device: str = typer.Option("cpu", help="Torch device of local models."),
    resume: bool = typer.Option(False, "--resume", help="Continue (or redo the summary of) a judge run in --out."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing judge run in --out."),
) -> None:
    """Pairwise win rate: both models answer the prompts, the judge compares each pair in both orders."""
    from lingotune.eval.answers import Endpoint, ModelSpec
    from lingotune.eval.judge import JudgeOptions, run_judge

    opts = JudgeOptions(
        a=ModelSpec(a, a_adapter, a_embeddings), b=ModelSpec(b, b_adapter, b_embeddings), prompts=prompts, judge=judge,
        out=out, lang=lang, judge_model=judge_model, endpoint=Endpoint(base_url, api_key_env, api_timeout, api_retries),
        max_new_tokens=max_new_tokens, judge_max_tokens=judge_max_tokens, batch_size=batch_size, limit=limit,
        tie_margin=tie_margin, echo_run=echo_run, cache_dir=cache_dir, data_root=data_root, device=device, resume=resume, overwrite=overwrite)
    summary = run_judge(opts)
    console.print(summary_table(summary))
    notes = [f"{summary['inconsistent']} pairs inconsistent across the two orders (ties)",
             f"{summary['unparsed']} verdicts unparsed (ties)"]
    if summary["without_reference"]:
        notes.append(f"{summary['without_reference']} prompts without a reference left out")
    console.print("; ".join(notes) + f"; {summary['ci_method']}")
    console.print(f"saved to {out / 'summary.json'} and {out / 'judgements.jsonl'}")
