"""The whole pipeline of one recipe: prepare data, evaluate the untouched model, train each
stage of the method, evaluate the adapted model, write results.json and report.md.

Reads top to bottom. Every step that is done is recorded in results.json, so `--resume`
skips it; a stage that was cut short continues from its last checkpoint.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lingotune import methods
from lingotune.data.batches import tokenize_all
from lingotune.models import load_model, resolve
from lingotune.recipe import Recipe, dump_recipe
from lingotune.train import environment, load_checkpoint, train_stage


class RunDirError(RuntimeError):
    pass


def progress_bar(console: Console | None = None) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
    )


def prepare_run_dir(recipe: Recipe, resume: bool) -> Path:
    """The run directory; refuses to touch an existing one unless asked (checked before anything is written)."""
    run_dir = recipe.run_dir()
    if run_dir.exists() and any(run_dir.iterdir()):
        if recipe.output.overwrite:
            shutil.rmtree(run_dir)
        elif not resume:
            raise RunDirError(f"{run_dir}: run directory exists; pass --resume to continue it or --overwrite to replace it")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _save_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False))
    tmp.replace(path)


def generate_answers(model, tok, prompts: list[str], max_new_tokens: int = 48) -> list[str]:
    """Greedy answers to single-turn prompts, through the chat template."""
    model.eval()
    out = []
    for p in prompts:
        enc = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        out.append(tok.decode(gen[0][enc["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return out


def sample_prompts(built, n: int) -> list[str]:
    """Target-language prompts from the stage-2 set, taken from its end (a fixed, seeded choice)."""
    seen, out = set(), []
    for ex in reversed(built.stage2):
        p = ex.messages[-2]["content"]
        if p not in seen:
            seen.add(p)
            out.append(p)
        if len(out) == n:
            break
    return out


def build_data(recipe: Recipe, run_dir: Path, console: Console):
    """Build the stage-1 and stage-2 sets once, write them (and their report) to run_dir/data."""
    from lingotune.data.config import build_datasets

    console.print(f"[bold]data[/] building for {recipe.language} …")
    built = build_datasets(recipe.data, recipe.language, recipe.seed, eval_texts=eval_texts(recipe))
    built.write(run_dir / "data")
    return built


def eval_texts(recipe: Recipe) -> list[str] | None:
    """Every text of the evaluation tasks (all of each task's rows), for the data layer's leakage
    check; None when the check is off. Tasks whose data is absent contribute nothing."""
    if not recipe.data.checks.leakage_check:
        return None
    from lingotune.eval.tasks import load_examples, load_task
    from lingotune.paths import data_root

    root = data_root(recipe.eval.data_root or recipe.data.root)
    texts: list[str] = []
    for name in recipe.eval.tasks:
        try:
            rows = load_examples(load_task(name), root, recipe.language)
        except (OSError, ValueError):
            continue
        texts += [v for r in rows for v in r.values() if isinstance(v, str)]
    return texts


def evaluate_model(model, tok, recipe: Recipe, run_dir: Path, label: str, prompts: list[str], results: dict,
                   console: Console) -> None:
    """Evaluate `model` under `label` into results['evals'], and record its answers to `prompts`."""
    from lingotune.eval import evaluate

    console.print(f"[bold]eval[/] {label} model …")
    results["evals"][label] = evaluate(model, tok, recipe.eval, run_dir / "eval", label=label, lang=recipe.language)
    samples = results.setdefault("samples", [{"prompt": p} for p in prompts])
    for s, a in zip(samples, generate_answers(model, tok, prompts)):
        s[label] = a


def train_method(model, tok, recipe: Recipe, built, run_dir: Path, results: dict, *, resume: bool,
                 only_stage: str | None, console: Console):
    """Run the method's stages through the one loop; a stage finished earlier is restored, not redone."""
    log_path = run_dir / "metrics.jsonl"
    with progress_bar(console) as progress:
        stages = methods.stages(recipe.method.name, recipe)
        names = [s.name for s in stages]
        if only_stage and only_stage not in names:
            raise RunDirError(f"--stage {only_stage}: method {recipe.method.name} has stages {', '.join(names)}")
        for stage in stages:
            if only_stage and names.index(stage.name) > names.index(only_stage):
                break
            if only_stage and stage.name != only_stage and not results["stages"].get(stage.name, {}).get("complete"):
                raise RunDirError(f"--stage {only_stage}: {stage.name} must be trained first (lingotune train --stage {stage.name})")
            stage_dir = run_dir / recipe.method.name / stage.name
            torch.manual_seed(recipe.seed)
            model, groups = stage.setup(model)
            done = results["stages"].get(stage.name)
            if done and done.get("complete"):
                state, _ = load_checkpoint(stage_dir / "checkpoint")
                named = dict(model.named_parameters())
                with torch.no_grad():
                    for n, p in state["params"].items():
                        named[n].copy_(p)
                console.print(f"[dim]{stage.name}: done earlier, restored[/]")
                continue
            examples = [ex for key in stage.data for ex in getattr(built, key)]
            items, dropped = tokenize_all(examples, tok, recipe.train.max_len, recipe.train.loss_on)
            res = train_stage(
                model, groups, items, steps=stage.steps, cfg=recipe.train, seed=recipe.seed,
                pad_id=tok.pad_token_id, stage_dir=stage_dir, log_path=log_path,
                log_key={"method": recipe.method.name, "stage": stage.name}, resume=resume, progress=progress,
            )
            model = getattr(model, "module", model)
            artefacts = stage.save(model, stage_dir)
            results["stages"][stage.name] = {
                **res.to_dict(), **stage.notes, "data": stage.data, "examples": len(items),
                "dropped_by_truncation": dropped, "loss_on": recipe.train.loss_on,
                "artefacts": artefacts, "complete": True,
            }
            _save_json(run_dir / "results.json", results)
    return model


def new_results(recipe: Recipe, run_dir: Path, resume: bool) -> dict:
    path = run_dir / "results.json"
    results = json.loads(path.read_text()) if resume and path.exists() else {}
    results.update({
        "recipe": recipe.name, "language": recipe.language, "model": recipe.model.source, "seed": recipe.seed,
        "method": recipe.method.name, "loss_on": recipe.train.loss_on, "tie": recipe.model.tie,
        "environment": environment(),
    })
    results.setdefault("evals", {})
    results.setdefault("stages", {})
    return results


def run(recipe: Recipe, *, resume: bool = False, do_eval: bool = True, only_stage: str | None = None,
        console: Console | None = None) -> dict:
    """prepare data → evaluate the untouched model → train every stage → evaluate → report."""
    console = console or Console()
    t_start = time.perf_counter()
    resolve(recipe.model.source)  # a wrong model path fails here, before the run directory exists
    run_dir = prepare_run_dir(recipe, resume)
    (run_dir / "recipe.yaml").write_text(dump_recipe(recipe))
    results = new_results(recipe, run_dir, resume)
    torch.manual_seed(recipe.seed)

    built = build_data(recipe, run_dir, console)
    results["data"] = built.report

    console.print(f"[bold]model[/] loading {recipe.model.source} …")
    t = time.perf_counter()
    model, tok = load_model(recipe.model.source, dtype=recipe.model.dtype,
                            attn_implementation=recipe.model.attn_implementation)
    results["model_load_seconds"] = round(time.perf_counter() - t, 2)

    prompts = sample_prompts(built, recipe.output.sample_prompts)
    if do_eval and "untouched" not in results["evals"]:
        evaluate_model(model, tok, recipe, run_dir, "untouched", prompts, results, console)
        _save_json(run_dir / "results.json", results)

    model = train_method(model, tok, recipe, built, run_dir, results, resume=resume, only_stage=only_stage, console=console)

    if do_eval and only_stage is None:
        evaluate_model(model, tok, recipe, run_dir, recipe.method.name, prompts, results, console)
    results["train_seconds"] = round(sum(s.get("seconds", 0) for s in results["stages"].values()), 2)
    results["wall_seconds"] = round(time.perf_counter() - t_start, 2)  # this invocation
    _save_json(run_dir / "results.json", results)

    from lingotune.report import write_report

    write_report(run_dir)
    return results
