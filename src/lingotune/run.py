"""The whole pipeline of one recipe: prepare data, evaluate the untouched model, train each
stage of the method, evaluate the adapted model, write results.json and report.md.

Reads top to bottom. Everything that bad input can break is checked before the run directory
is touched: the directory policy, the recipe on resume, the data, the model, every stage's
examples after tokenization, the method's settings against the model. Every step that is done
is recorded in results.json, so `--resume` skips it; a stage that was cut short continues from
its last checkpoint.

Launched as several processes (torchrun, accelerate launch), every process checks, builds the data,
loads the model and trains its share of each step (`lingotune.distributed`); rank 0 alone writes the
run directory, evaluates (the untouched and the adapted model, and propagation) and reports, while
the others wait at barriers.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lingotune import distributed, files, methods, rundir
from lingotune.checkpoint import Checkpoints
from lingotune.data.batches import full_length, pair_examples, tokenize_all, tokenize_pairs, tokenize_texts
from lingotune.errors import RunDirError, TrainingError, UserError
from lingotune.losses import PairLoss
from lingotune.models import load_model, resolve
from lingotune.recipe import Recipe, RecipeError, changed_training_fields, dump_recipe, parse_recipe, training_fields
from lingotune.train import EARLIER, environment, train_stage

__all__ = ["RunDirError", "run"]


def progress_bar(console: Console | None = None) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
    )


def sample_prompts(recipe: Recipe, built) -> list[dict]:
    """The held-out prompts of report.md's sample answers, each {"prompt", "source"}: the recipe's
    `output.samples`, or `output.sample_prompts` questions of the run's evaluation tasks that no training text
    contains, as the data layer's leakage index sees it (a word n-gram shared with the example's texts, as the
    build's leakage check), nor is (the same prompt). The prompt itself is not indexed: its template words
    (e.g. "... в этой стране? Ответь да или нет.") recur in the training questions of the starter data."""
    from lingotune.data.validate import LeakageIndex
    from lingotune.eval.runner import sample_questions
    from lingotune.paths import data_root

    if recipe.output.samples:
        return [{"prompt": p, "source": "recipe samples"} for p in recipe.output.samples]
    n = recipe.output.sample_prompts
    if n == 0:
        return []
    root = data_root(recipe.eval.data_root or recipe.data.root)
    found = sample_questions(recipe.eval, recipe.language, root, 4 * n)
    ngram = recipe.data.checks.leakage_ngram
    index = LeakageIndex([t for q in found for t in q["texts"]], n=ngram)  # the examples' texts, as the build's check
    train = built.texts()
    suspects = [t for t in train if index.leaks(t)]  # one pass over the training texts; then per question
    seen = {" ".join(t.split()) for t in train}
    out = []
    for q in found:
        own = LeakageIndex(q["texts"], n=ngram)
        if " ".join(q["prompt"].split()) not in seen and not any(own.leaks(t) for t in suspects):
            out.append({"prompt": q["prompt"], "source": q["source"]})
    return out[:n]


# ----------------------------------------------------------------------------- checks before anything is written


def check_resumable(recipe: Recipe, run_dir: Path) -> None:
    """On --resume: the recipe must shape training exactly as the one the run started with."""
    path = run_dir / "recipe.yaml"
    if not path.exists():
        raise RunDirError(f"{run_dir}: nothing to resume (no recipe.yaml); run without --resume to start again")
    try:
        raw = files.read_yaml(path, "recipe") or {}
        for key, value in EARLIER.items():  # a field the run's recipe predates: the value it was trained with
            section = raw
            for part in key.split(".")[:-1]:
                section = section.get(part) if isinstance(section, dict) else None
            if isinstance(section, dict) and key.rsplit(".", 1)[-1] not in section:
                section[key.rsplit(".", 1)[-1]] = value
        old = parse_recipe(raw, str(path))
    except UserError as e:
        raise RunDirError(f"{path}: cannot read the run's recipe ({str(e)[:200]}); start again with --overwrite") from None
    before = training_fields(old)
    changed = changed_training_fields(before, training_fields(recipe))
    if changed:
        was = ", ".join(f"{k} was {before.get(k)}" for k in changed)
        raise RecipeError(f"--resume: the recipe changed fields that shape training ({was}); "
                          f"resume with the run's own recipe ({path}) or start again with --overwrite")


def select_stages(recipe: Recipe, only_stage: str | None, results: dict) -> list:
    """The method's stages to run (up to `only_stage`), checked against what is already trained."""
    stages = methods.stages(recipe.method.name, recipe)
    names = [s.name for s in stages]
    if only_stage is None:
        return stages
    if only_stage not in names:
        raise RunDirError(f"--stage {only_stage}: method {recipe.method.name} has stages {', '.join(names)}")
    for s in stages[:names.index(only_stage)]:
        if not results.get("stages", {}).get(s.name, {}).get("complete"):
            raise RunDirError(f"--stage {only_stage}: {s.name} must be trained first (lingotune train --stage {s.name})")
    return stages[:names.index(only_stage) + 1]


def tokenize_stages(recipe: Recipe, stages: list, built, tok) -> dict[str, tuple[list[dict], int]]:
    """stage name -> (tokenized items, number cut away by max_len); a one-line error when a stage has none.

    Chat examples (stage1, stage2) get their loss mask from `train.loss_on`; plain text (`text`) is
    trained on every token, in windows of `train.max_len`; preference pairs (`prefs`, alone in their
    stage) become pair items (`data.batches.tokenize_pair`: chosen and rejected, labels on the completion)."""
    out, max_len = {}, recipe.train.max_len
    for stage in stages:
        prefs = isinstance(stage.loss, PairLoss)
        if prefs:
            chats, texts = [ex for p in built.prefs for ex in pair_examples(p)], []
            items, dropped = tokenize_pairs(built.prefs, tok, max_len)
            hint = "a source of format prefs"
        else:
            chats = [ex for key in stage.data if key not in ("text", "prefs") for ex in getattr(built, key)]
            chats += [pair_examples(p)[0] for p in built.prefs] if "prefs" in stage.data else []  # the chosen side
            texts = built.text if "text" in stage.data else []
            items, dropped = tokenize_all(chats, tok, max_len, recipe.train.loss_on,
                                          pairs=recipe.data.pair_batching == "together")
            more, cut = tokenize_texts(texts, tok, max_len)
            items, dropped = items + more, dropped + cut
            hint = "a source used as text" if "text" in stage.data else "data.sources and data.max_stage1/max_stage2"
        if not chats and not texts:
            raise TrainingError(f"{stage.name}: the data section yields no examples for {'+'.join(stage.data)} "
                                f"(check {hint})")
        if not items and chats:
            shortest = min(full_length(ex, tok) for ex in chats[:500])
            raise TrainingError(f"train.max_len: {max_len} tokens cuts every one of the "
                                f"{len(built.prefs) if prefs else len(chats)} {stage.name} examples before its "
                                f"answer (the shortest needs {shortest}); raise it")
        out[stage.name] = (items, dropped)
    return out


def adapt_vocabulary(recipe: Recipe, tok, built):
    """(adapted tokenizer, report) per the recipe's `vocab:` section and `model.chat_tokens`, or (None, None)."""
    from lingotune import vocab
    from lingotune.data.formats import read_texts
    from lingotune.paths import data_root

    root = data_root(recipe.data.root)

    def read(paths: list[str]) -> list[str]:
        return [t for rel in paths for t in read_texts(root / rel if root else rel)]

    texts = read(recipe.vocab.corpus) or built.text
    new_tok, report = vocab.adapt(recipe.vocab, tok, recipe.language, texts, read(recipe.vocab.english_corpus))
    if recipe.model.chat_tokens == "chatml":  # ChatML's tokens on top (appendix A.6): the same resize path
        new_tok, chat = vocab.with_chat_tokens(new_tok or tok)
        report = {**(report or {}), **chat}
    return new_tok, report


def check_method(recipe: Recipe, model) -> None:
    try:
        methods.check(recipe.method.name, recipe, model)
    except ValueError as e:
        raise RecipeError(str(e)) from None


# ----------------------------------------------------------------------------- the steps


def build_data(recipe: Recipe, console: Console):
    """The stage-1 and stage-2 sets, in memory (written to the run directory once it is prepared)."""
    from lingotune.data.build import build_datasets
    from lingotune.eval.runner import leakage_texts
    from lingotune.paths import data_root

    console.print(f"[bold]data[/] building for {recipe.language} …")
    texts = None
    if recipe.data.checks.leakage_check:
        also = [t for t in recipe.data.checks.leakage_tasks if t not in recipe.eval.task_names(recipe.language)]
        held = recipe.eval.model_copy(update={"tasks": recipe.eval.task_names(recipe.language) + also})
        texts = leakage_texts(held, recipe.language, data_root(recipe.eval.data_root or recipe.data.root))
        if recipe.compare.judge is not None:  # the grid's judged prompts and their references are evaluation data too
            from lingotune.eval.judge import grid_prompts

            try:
                judged = grid_prompts(recipe.compare.judge, recipe.language, recipe.eval.data_root or recipe.data.root)
            except ValueError as e:
                raise RecipeError(f"compare.judge: {e}") from None
            texts += [t for p in judged for t in (p.prompt, p.reference) if t]
    return build_datasets(recipe.data, recipe.language, recipe.seed, eval_texts=texts)


def load(recipe: Recipe, console: Console):
    console.print(f"[bold]model[/] loading {recipe.model.source} …")
    t = time.perf_counter()
    model, tok = load_model(recipe.model.source, **recipe.model.loading())
    return model, tok, round(time.perf_counter() - t, 2)


def evaluate_model(model, tok, recipe: Recipe, run_dir: Path, label: str, prompts: list[dict], results: dict,
                   console: Console, reference: dict | None = None, tasks: list[str] | None = None,
                   resume: bool = False) -> None:
    """Evaluate `model` under `label` into results['evals'], and record its answers to `prompts` (`sample_prompts`).
    `reference`: the untouched model's results (default: results['evals']['untouched']), which the transfer
    probe conditions on; `tasks`: only these tasks (and no sample answers); `resume`: tasks an interrupted
    evaluation of this model already scored under `label` are read back, not run again."""
    from lingotune import inference
    from lingotune.eval import evaluate

    console.print(f"[bold]eval[/] {label} model …")
    if reference is None and label != "untouched":
        reference = results["evals"].get("untouched")
    results["evals"][label] = evaluate(model, tok, recipe.eval, run_dir / "eval", label=label, lang=recipe.language,
                                       reference=reference, tasks=tasks, resume=resume)
    if tasks is not None:
        return
    samples = results.setdefault("samples", [dict(p) for p in prompts])
    answers = inference.generate_chat(model, tok, [[{"role": "user", "content": s["prompt"]}] for s in samples], 48,
                                      desc="samples")
    for s, a in zip(samples, answers):
        s[label] = a.strip()


def stage_evaluator(recipe: Recipe, tok, run_dir: Path, results: dict, console: Console, reference: dict | None = None,
                    variant: str | None = None):
    """What `train_method` runs after every stage but the last: rank 0 evaluates the `eval.every_stage` tasks
    under '<variant>-<stage>' (variant: the grid's name of the cell, default the method; once: a resumed run keeps
    the earlier result). None when there are none."""
    if not recipe.eval.every_stage or not distributed.is_main():
        return None

    def after(model, stage: str) -> None:
        label = f"{variant or recipe.method.name}-{stage}"
        if label not in results["evals"]:
            evaluate_model(model, tok, recipe, run_dir, label, [], results, console, reference,
                           tasks=recipe.eval.every_stage, resume=True)
            files.save_json(run_dir / "results.json", results)
    return after


def restore_stage(model, stage_dir: Path) -> None:
    """Put a finished stage's trained weights back (from its last checkpoint)."""
    loaded = Checkpoints(stage_dir / "checkpoint").load_latest()
    if loaded is None:
        raise RunDirError(f"{stage_dir}: marked complete but its checkpoint is gone; start again with --overwrite")
    named = dict(model.named_parameters())
    with torch.no_grad():
        for n, p in loaded[0]["params"].items():
            named[n].copy_(p)


def _train_one(model, groups, tok, recipe: Recipe, stage, tokenized: dict, run_dir: Path, results: dict,
               resume: bool, progress, fingerprint) -> None:
    stage_dir = run_dir / recipe.method.name / stage.name
    items, dropped = tokenized[stage.name]
    res = train_stage(
        model, groups, items, steps=stage.steps, cfg=recipe.train, seed=recipe.seed,
        pad_id=tok.pad_token_id, stage_dir=stage_dir, log_path=run_dir / "metrics.jsonl",
        log_key={"method": recipe.method.name, "stage": stage.name}, resume=resume, progress=progress,
        row_sparse=stage.row_sparse, loss=stage.loss, fingerprint=fingerprint,
    )
    main = distributed.is_main()
    results["stages"][stage.name] = {
        **res.to_dict(), **stage.notes, "data": stage.data, "examples": len(items),
        "dropped_by_truncation": dropped, "loss_on": recipe.train.loss_on,
        "artefacts": stage.save(model, stage_dir, tok) if main else {}, "complete": True,
    }
    if main:
        files.save_json(run_dir / "results.json", results)


def train_method(model, tok, recipe: Recipe, stages: list, tokenized: dict, run_dir: Path, results: dict, *,
                 resume: bool, console: Console, after_stage=None):
    """Run the stages through the one loop; a stage finished earlier is restored, not redone.
    `after_stage(model, stage name)` runs after every stage but the last (the `eval.every_stage` tasks)."""
    fingerprint = training_fields(recipe)
    main = distributed.is_main()
    for stage in stages:
        torch.manual_seed(recipe.seed)
        model, groups = stage.setup(model)
        if results["stages"].get(stage.name, {}).get("complete"):
            restore_stage(model, run_dir / recipe.method.name / stage.name)
            console.print(f"[dim]{stage.name}: done earlier, restored[/]")
        else:
            with progress_bar(console) as bar:
                _train_one(model, groups, tok, recipe, stage, tokenized, run_dir, results, resume,
                           bar if main else None, fingerprint)
        if after_stage is not None and stage is not stages[-1]:
            after_stage(model, stage.name)
    results["train_seconds"] = round(sum(s.get("seconds", 0) for s in results["stages"].values()), 2)
    return model


def check_instruct(recipe: Recipe, model) -> None:
    """Before anything is written: the instruct model exists, matches the base's family and hidden size,
    and has a chat template (its config and tokenizer only; the weights load after training)."""
    from transformers import AutoConfig

    from lingotune.models import load_tokenizer
    from lingotune.propagate import PropagationError

    where = resolve(recipe.propagate.instruct)
    config = AutoConfig.from_pretrained(where, trust_remote_code=recipe.model.trust_remote_code)
    if (config.model_type, config.hidden_size) != (model.config.model_type, model.config.hidden_size):
        raise PropagationError(f"propagate.instruct: {config.model_type} with hidden size {config.hidden_size}, but "
                               f"model.source is {model.config.model_type} with {model.config.hidden_size}")
    tok = load_tokenizer(recipe.propagate.instruct, recipe.model.trust_remote_code)
    if tok.init_kwargs.get("lingotune_fallback_template"):
        raise PropagationError("propagate.instruct: its tokenizer has no chat template (is it an instruct model?)")


def propagate_into_instruct(model, tok, recipe: Recipe, run_dir: Path, prompts: list[dict], results: dict,
                            console: Console, do_eval: bool) -> None:
    """LEP step 4: the instruct model with the adapted vocabulary and rows, evaluated beside the instruct model."""
    from lingotune.propagate import propagate, save_propagation

    cfg = recipe.propagate
    console.print(f"[bold]propagate[/] into {cfg.instruct} ({cfg.mode}) …")
    base, _ = load_model(recipe.model.source, **recipe.model.loading())
    instruct, instruct_tok = load_model(cfg.instruct, **recipe.model.loading())
    if do_eval and "instruct" not in results["evals"]:
        evaluate_model(instruct, instruct_tok, recipe, run_dir, "instruct", prompts, results, console)
    t0 = time.perf_counter()
    done = propagate(base, model, tok, instruct, instruct_tok, mode=cfg.mode, copy=cfg.copy_rows)
    sources = {"base": recipe.model.source, "adapted": str(run_dir), "instruct": cfg.instruct}
    results["propagation"] = {**save_propagation(done, run_dir / "propagated", sources, overwrite=True),
                              "seconds": round(time.perf_counter() - t0, 2), "dir": str(run_dir / "propagated")}
    if do_eval:
        evaluate_model(done.model, done.tokenizer, recipe, run_dir, "propagated", prompts, results, console)
    files.save_json(run_dir / "results.json", results)


def new_results(recipe: Recipe, previous: dict | None, world_size: int = 1) -> dict:
    results = dict(previous or {})
    results.update({
        "recipe": recipe.name, "language": recipe.language, "model": recipe.model.source, "seed": recipe.seed,
        "method": recipe.method.name, "loss_on": recipe.train.loss_on, "tie": recipe.model.tie,
        "environment": environment(), "world_size": world_size,
    })
    results.setdefault("evals", {})
    results.setdefault("stages", {})
    return results


def run(recipe: Recipe, *, resume: bool = False, do_eval: bool = True, only_stage: str | None = None,
        console: Console | None = None) -> dict:
    """check → prepare data and model → evaluate the untouched model → train every stage → evaluate → report."""
    console = console or Console()
    t_start = time.perf_counter()
    world = start_processes(recipe)
    main = distributed.is_main()
    console.quiet = console.quiet or not main  # rank 0 speaks for every process
    run_dir = recipe.run_dir()
    action = rundir.check(run_dir, kind="run", resume=resume, overwrite=recipe.output.overwrite)
    if action == "resume":
        check_resumable(recipe, run_dir)
    previous = files.read_json(run_dir / "results.json") if action == "resume" else None
    stages = select_stages(recipe, only_stage, previous or {})
    with distributed.main_first():  # rank 0 fills the model cache first
        resolve(recipe.model.source)  # a wrong model path fails here, before any work
    built = build_data(recipe, console)
    model, tok, load_seconds = load(recipe, console)
    new_tok, vocab_report = adapt_vocabulary(recipe, tok, built)
    tokenized = tokenize_stages(recipe, stages, built, new_tok or tok)
    check_method(recipe, model)
    if recipe.propagate.instruct:
        check_instruct(recipe, model)
    distributed.barrier()  # every process has checked before rank 0 touches the run directory

    if main:
        rundir.prepare(run_dir, action, "run")  # from here on, the run directory is written
        files.atomic_write_text(run_dir / "recipe.yaml", dump_recipe(recipe))
        built.write(run_dir / "data")
    results = new_results(recipe, previous, world)
    results.update(data=built.report, model_load_seconds=load_seconds)
    torch.manual_seed(recipe.seed)

    prompts = sample_prompts(recipe, built) if do_eval else []
    if main and do_eval and "untouched" not in results["evals"]:  # evaluation: rank 0 alone
        evaluate_model(model, tok, recipe, run_dir, "untouched", prompts, results, console, resume=resume)
        files.save_json(run_dir / "results.json", results)
    distributed.barrier()

    if new_tok is not None:  # the untouched model was evaluated with its own tokenizer; train and evaluate the new one
        from lingotune.vocab import init_new_rows

        results["vocab"] = {**vocab_report, "init": init_new_rows(model, tok, new_tok)}
        tok = new_tok
        if main:
            with files.atomic_dir(run_dir / "tokenizer") as tmp:
                tok.save_pretrained(tmp)
    model = train_method(model, tok, recipe, stages, tokenized, run_dir, results, resume=resume, console=console,
                         after_stage=stage_evaluator(recipe, tok, run_dir, results, console) if do_eval else None)

    if main:
        finish(model, tok, recipe, run_dir, prompts, results, console, do_eval=do_eval and only_stage is None,
               propagate=bool(recipe.propagate.instruct) and only_stage is None, t_start=t_start, resume=resume)
    distributed.barrier()  # the others wait for rank 0's evaluation and report
    results.setdefault("wall_seconds", round(time.perf_counter() - t_start, 2))  # the other processes'
    return results


def start_processes(recipe: Recipe) -> int:
    """Refuse FSDP/DeepSpeed without a GPU; under a multi-process launch, start data parallelism now (the
    barriers need it). The number of processes."""
    distributed.check_backend(torch.cuda.is_available())
    if distributed.launched_world() == 1:
        return 1
    from lingotune.train import accelerator_for

    distributed.check_batch(recipe.train.batch_size, recipe.train.grad_accum, distributed.launched_world())
    return accelerator_for(recipe.train.precision).num_processes


def finish(model, tok, recipe: Recipe, run_dir: Path, prompts: list[dict], results: dict, console: Console, *,
           do_eval: bool, propagate: bool, t_start: float, resume: bool = False) -> None:
    """Rank 0, after training: evaluate the adapted model, propagate, write results.json and report.md."""
    if do_eval:
        evaluate_model(model, tok, recipe, run_dir, recipe.method.name, prompts, results, console, resume=resume)
    if propagate:
        propagate_into_instruct(model, tok, recipe, run_dir, prompts, results, console, do_eval)
    results["wall_seconds"] = round(time.perf_counter() - t_start, 2)  # this invocation
    files.save_json(run_dir / "results.json", results)

    from lingotune.report import write_report

    write_report(run_dir)

