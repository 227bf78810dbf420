"""The `lingotune` command line: run, train, eval, info, data, recipe."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from lingotune.errors import user_errors

app = typer.Typer(help="Teach an English-centric LLM a new language by changing a few of its weights.", no_args_is_help=False,
                  pretty_exceptions_enable=False, add_completion=False)
console = Console()
err = Console(stderr=True)

SMOKE = [
    "method.stage1.steps=4", "method.stage2.steps=4", "method.single=null", "method.lep.steps=4",
    "method.pref.sft.steps=4", "method.pref.dpo.steps=4", "method.pref.orpo.steps=4",
    "eval.limit=4", "eval.limits={}", "output.sample_prompts=2", "train.checkpoint_every=2",
]


def _load(recipe: Optional[Path], sets: list[str], smoke: bool, out: Optional[str], overwrite: bool):
    from lingotune.recipe import load_recipe

    overrides = list(SMOKE) if smoke else []
    if smoke and out is None:
        out = "runs/smoke-{method}-{language}-s{seed}"
    if out:
        overrides.append(f"output.dir={out}")
    if overwrite:
        overrides.append("output.overwrite=true")
    return load_recipe(recipe, overrides + list(sets or []))


RecipeArg = typer.Argument(None, help="Recipe YAML (default: the shipped default recipe).", show_default=False)
SetOpt = typer.Option([], "--set", "-s", help="Override a recipe field: key.path=value (YAML value). Repeatable.")


@app.command()
@user_errors
def run(
    recipe: Optional[Path] = RecipeArg,
    smoke: bool = typer.Option(False, "--smoke", help="A tiny run (a few steps, a few eval examples) to check the setup."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in its directory."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Run directory (overrides output.dir)."),
    set_: list[str] = SetOpt,
):
    """The whole pipeline: prepare data, evaluate, train every stage, evaluate again, report."""
    from lingotune.run import run as run_pipeline

    r = _load(recipe, set_, smoke, out, overwrite)
    results = run_pipeline(r, resume=resume, console=console)
    console.print(f"[green]done[/] in {results['wall_seconds']:.0f} s: {r.run_dir() / 'report.md'}")


@app.command()
@user_errors
def train(
    recipe: Optional[Path] = RecipeArg,
    method: Optional[str] = typer.Option(None, "--method", "-m", help="dpart | lora | full | combined (default: the recipe's)."),
    stage: Optional[str] = typer.Option(None, "--stage", help="Train only this stage (stage1, stage2; 'train' for one-stage methods)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Run directory (overrides output.dir)."),
    set_: list[str] = SetOpt,
):
    """Train one method (or one of its stages), without evaluation."""
    from lingotune.run import run as run_pipeline

    sets = list(set_) + ([f"method.name={method}"] if method else [])
    r = _load(recipe, sets, False, out, overwrite)
    results = run_pipeline(r, resume=resume, do_eval=False, only_stage=stage, console=console)
    for name, s in results["stages"].items():
        console.print(f"{name}: {s['trainable_params']:,} trainable parameters, {s['seconds']} s, final loss {s['final_loss']:.4f}")


@app.command()
@user_errors
def report(
    run_dir: Path = typer.Argument(..., help="A run directory (holding results.json).", show_default=False),
    html: bool = typer.Option(False, "--html", help="Also write report.html: one self-contained page (plots inlined)."),
):
    """Write a run's report.md and its plots again from results.json (and, with --html, report.html)."""
    from lingotune.report import write_report

    console.print(f"[green]wrote[/] {write_report(run_dir, html=html)}")


@app.command()
@user_errors
def compare(
    recipe: Optional[Path] = RecipeArg,
    out: Path = typer.Option(Path("runs/compare"), "--out", "-o", help="Grid directory (one sub-directory per dataset and cell)."),
    methods: Optional[str] = typer.Option(None, "--methods", help="Comma-separated methods/variants (default: the recipe's compare.methods)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Comma-separated seeds (default: the recipe's compare.seeds)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted grid; finished cells are not redone."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing grid directory."),
    publish: Optional[Path] = typer.Option(None, "--publish", help="Also copy report.md, tables, plots and summary.json here (e.g. docs/results)."),
    record: Optional[Path] = typer.Option(None, "--record", help="Also write the grid's record here: scores, logs, plots, no weights, no data text; "
                                          "copied back as --out, --resume continues it (a grid run in parts on machines that do not keep files)."),
    set_: list[str] = SetOpt,
):
    """Methods x seeds (x datasets) on one model: tables, plots, significance (report.md)."""
    from lingotune.compare import compare as run_grid

    sets = list(set_)
    if methods:
        sets.append(f"compare.methods=[{methods}]")
    if seeds:
        sets.append(f"compare.seeds=[{seeds}]")
    r = _load(recipe, sets, False, None, overwrite)
    if record:
        from lingotune.compare import check_record

        check_record(out, record)
    summary = run_grid(r, out, resume=resume, console=console)
    if publish:
        import shutil

        publish.mkdir(parents=True, exist_ok=True)
        for f in [*out.glob("*.md"), *out.glob("*.png"), *out.glob("*.csv"), out / "summary.json", out / "recipe.yaml"]:
            shutil.copy2(f, publish / f.name)
    if record:
        from lingotune.compare import record as write_record

        console.print(f"[bold]record[/] {write_record(out, record)}")
    console.print(f"[green]done[/] in {summary['wall_seconds']:.0f} s: {out / 'report.md'}")


@app.command()
@user_errors
def info(
    model: str = typer.Option("bundled", "--model", help="Model source to inspect."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Shared data root (default: ../shared/data or $LINGOTUNE_DATA)."),
):
    """Which model, tokenizer, devices and data lingotune sees."""
    import torch

    from lingotune.models import bf16_supported, count_parameters, is_tied, load_model
    from lingotune.paths import data_root as find_root

    table = Table(title="lingotune info", show_header=False)
    table.add_row("torch", f"{torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    table.add_row("devices", "cuda: " + (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none") + ", cpu")
    table.add_row("bf16 autocast", str(bf16_supported("cuda" if torch.cuda.is_available() else "cpu")))
    m, tok = load_model(model)
    trainable, total = count_parameters(m)
    emb = m.get_input_embeddings().weight
    table.add_row("model", f"{model}: {type(m).__name__}, {total / 1e6:.1f}M parameters, tied embeddings: {is_tied(m)}")
    table.add_row("embeddings", f"{tuple(emb.shape)} = {emb.numel() / 1e6:.1f}M ({100 * emb.numel() / total:.0f}% of the model)")
    fallback = bool(tok.init_kwargs.get("lingotune_fallback_template"))
    table.add_row("tokenizer", f"{type(tok).__name__}, {len(tok)} tokens, chat template: {'fallback' if fallback else 'own'}")
    root = find_root(data_root)
    table.add_row("data root", f"{root}" + ("" if root else " (not found)"))
    if root:
        table.add_row("data sets", ", ".join(sorted(p.name for p in root.iterdir() if p.is_dir())))
    console.print(table)


@app.command("export")
@user_errors
def export_cmd(
    run_dir: Path = typer.Argument(..., help="A finished run directory.", show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="The directory to write (a Hugging Face model directory)."),
    adapter_only: bool = typer.Option(False, "--adapter-only", help="Write a PEFT adapter (LoRA + the changed "
                                      "embedding rows) for the base model instead of merged weights."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier export in --out."),
    license_: Optional[str] = typer.Option(None, "--license", help="The licence for the model card (default: the "
                                           "base model's, where known)."),
):
    """A finished run as one model directory (merged weights, tokenizer, chat template) with a model card."""
    from lingotune.export import export

    res = export(run_dir, out, adapter_only=adapter_only, overwrite=overwrite, licence=license_)
    console.print(f"[green]exported[/] {res['out']} ({res['bytes'] / 1e6:.1f} MB) in {res['seconds']:.0f} s: "
                  + "; ".join(res["parts"]), highlight=False)


@app.command()
@user_errors
def chat(
    model: str = typer.Argument("bundled", help="A run directory, a model directory (e.g. an export), a hub id or "
                                "bundled[:name]."),
    compare: bool = typer.Option(False, "--compare", help="The untouched model answers beside it (a run's own base "
                                 "model, or --base)."),
    base: Optional[str] = typer.Option(None, "--base", help="--compare: the untouched model (default: a run's base)."),
    system: Optional[str] = typer.Option(None, "--system", help="System prompt to start with."),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="Answer these prompts and exit: a file ('-': stdin), "
                                          "one prompt a line, or JSONL with a 'prompt' field (*.jsonl or --jsonl)."),
    jsonl: bool = typer.Option(False, "--jsonl", help="--prompts is JSONL whatever its name."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="--prompts: write the JSONL records here (default: stdout)."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="Longest reply, in tokens."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0: greedy; above: sample."),
    top_p: float = typer.Option(1.0, "--top-p", help="Sampling: nucleus probability mass, in (0, 1]."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampling: seed torch's generator."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="--prompts: prompts per generation batch."),
    transcript: Optional[Path] = typer.Option(None, "--transcript", help="Append each turn here as JSONL (the rendered "
                                              "chat-template input, the reply, tokens, timings)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
):
    """Talk to a model: replies stream as they are generated; or answer a file of prompts into JSONL."""
    from lingotune import chat as chat_mod

    settings = chat_mod.settings_of(max_new_tokens, temperature, top_p, seed)
    todo = chat_mod.read_prompts(prompts, jsonl) if prompts is not None else None
    if prompts is None and (out is not None or jsonl):
        raise ValueError("options --out and --jsonl go with --prompts FILE")
    if prompts is not None and transcript is not None:
        raise ValueError("option --transcript records an interactive chat; with --prompts the records go to --out")
    if transcript is not None and not transcript.parent.is_dir():
        raise ValueError(f"option --transcript: {transcript.parent} is not a folder")
    chatters = chat_mod.load_all(model, compare, base, err, device)
    if todo is not None:
        chat_mod.write_records(chat_mod.answer_file(chatters, todo, system, settings, batch_size), out)
        if out is not None:
            err.print(f"{len(todo)} answers: {out}")
        return
    chat_mod.interact(chat_mod.Session(chatters, settings, console, system, transcript))


@app.command("recipe")
def recipe_cmd(
    recipe: Optional[Path] = RecipeArg,
    set_: list[str] = SetOpt,
    schema: bool = typer.Option(False, "--schema", help="Print every recipe field with its documentation."),
):
    """Validate a recipe and print it resolved (defaults filled in), or print the documented schema."""
    from lingotune.recipe import Recipe, dump_recipe

    if schema:
        _print_schema(Recipe)
        return
    r = user_errors(lambda: _load(recipe, set_, False, None, False))()
    console.print(dump_recipe(r), highlight=False)


def _print_schema(model, prefix: str = "") -> None:
    from pydantic import BaseModel

    for name, f in model.model_fields.items():
        ann = f.annotation
        sub = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        default = "" if f.is_required() else f" = {f.default!r}" if f.default_factory is None else ""
        console.print(f"[bold]{prefix}{name}[/]{default}: {f.description or ''}", highlight=False)
        if sub is not None:
            _print_schema(sub, prefix + name + ".")


def _mount() -> None:
    from lingotune.data.cli import app as data_app
    from lingotune.prefs_cli import build_prefs_command
    from lingotune.vocab_cli import app as vocab_app
    from lingotune.eval.cli import eval_command
    from lingotune.propagate import propagate_command
    from lingotune.eval.judge_cli import judge_command

    data_app.command("build-prefs")(user_errors(build_prefs_command))
    app.add_typer(data_app, name="data", help="Build, translate, generate and inspect training data.")
    app.add_typer(vocab_app, name="vocab", help="Adapt the vocabulary to a language (LEP) and inspect its cost.")
    app.command("eval")(user_errors(eval_command))
    app.command("propagate")(user_errors(propagate_command))
    app.command("judge")(user_errors(judge_command))


_mount()

if __name__ == "__main__":
    app()
