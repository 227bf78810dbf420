"""`lingotune compare`: methods x seeds (x datasets) on one model, like the paper's comparison.

The model is loaded once and each dataset built once; every cell starts from a fresh copy of
the same weights, sees the same batches for its seed, and is evaluated with the same prompts.
Cells finish independently: an interrupted grid continues without redoing finished cells.
Then `lingotune.compare_report.summarize` writes tables (markdown + CSV), plots and a significance test.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections import Counter
from pathlib import Path

import torch
from rich.console import Console

from lingotune import files, rundir
from lingotune.compare_report import INSTRUCT, UNTOUCHED, summarize
from lingotune.models import load_model
from lingotune.recipe import Recipe, RecipeError, dump_recipe, parse_recipe, set_path
from lingotune.train import environment
from lingotune.run import (
    adapt_vocabulary, build_data, check_instruct, check_method, check_resumable, evaluate_model, load, new_results,
    sample_prompts, select_stages, stage_evaluator, tokenize_stages, train_method,
)


def cell_recipe(recipe: Recipe, method: str, seed: int, data, out: Path) -> Recipe:
    """The recipe of one cell: the grid's recipe, with the variant's overrides, seed, data and directory."""
    d = recipe.model_dump(mode="json")
    d["seed"] = seed
    d["data"] = data.model_dump(mode="json")
    d["output"]["dir"] = str(out)
    d["output"]["save_full_model"] = False
    for key, value in recipe.compare.variants.get(method, {"method.name": method}).items():
        set_path(d, key, value)
    d["method"]["single"] = None  # recomputed from the stages
    return parse_recipe(d, f"compare cell {method} seed {seed}")


def _complete(cell_dir: Path) -> bool:
    res = files.read_json(cell_dir / "results.json")
    return bool(res and res.get("complete"))


def judge_setup(recipe: Recipe):
    """(prompts, judge) of `compare.judge`, checked before anything is written; None without one."""
    from lingotune.eval.answers import Endpoint
    from lingotune.eval.judge import build_judge, grid_prompts

    j = recipe.compare.judge
    if j is None:
        return None
    try:
        prompts = grid_prompts(j, recipe.language, recipe.eval.data_root or recipe.data.root)
        judge = build_judge(j.judge, recipe.language, j.judge_model, Endpoint(j.base_url, j.api_key_env),
                            j.tie_margin, option="compare.judge.judge_model", echo_run=j.echo_run)
    except ValueError as e:
        raise RecipeError(f"compare.judge: {e}") from None
    return prompts, judge


def _answer(model, tok, recipe: Recipe, judged, cell_dir: Path) -> None:
    """The model's greedy answers to the judged prompts, beside its results (judge_answers.jsonl)."""
    import json

    from lingotune import inference

    if judged is None:
        return
    prompts = judged[0]
    outs = inference.generate_chat(model, tok, [[{"role": "user", "content": p.prompt}] for p in prompts],
                                   recipe.compare.judge.max_new_tokens, recipe.eval.batch_size, desc="judged prompts")
    files.atomic_write_text(cell_dir / "judge_answers.jsonl", "".join(
        json.dumps({"id": p.id, "prompt": p.prompt, "answer": a.strip()}, ensure_ascii=False) + "\n"
        for p, a in zip(prompts, outs)))


def _judge(out_dir: Path, recipe: Recipe, judged, console: Console) -> None:
    """Every dataset's win rates against `compare.judge.against` and target-language shares (judge.json)."""
    import json

    from lingotune.eval.answers import JsonlCache
    from lingotune.eval.judge import judge_grid, write_results
    from lingotune.languages import get_language

    prompts, judge = judged
    for d in sorted(p.name for p in out_dir.iterdir() if (p / UNTOUCHED).is_dir()):
        answers: dict[str, dict] = {}
        for f in sorted((out_dir / d).glob("*/judge_answers.jsonl")):
            res = files.read_json(f.parent / "results.json") or {}
            if not res.get("complete"):
                continue
            variant = res.get("variant", UNTOUCHED)
            rows = [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
            answers.setdefault(variant, {})[None if variant == UNTOUCHED else res["seed"]] = [r["answer"] for r in rows]
        if recipe.compare.judge.against not in answers:
            continue
        console.print(f"[bold]judge[/] {d}: {judge.identity['kind']} judge, against {recipe.compare.judge.against}")
        summary, records = judge_grid(judge, prompts, answers, recipe.compare.judge.against,
                                      get_language(recipe.language).script, JsonlCache(out_dir / d / "judge_cache.jsonl"))
        write_results(out_dir / d, summary, records, "judge.json")


def _untouched(model0, tok, base: Recipe, udir: Path, prompts: list[dict], judged, console: Console) -> None:
    """The untouched model: once per dataset (its prompts come from the dataset)."""
    if _complete(udir):
        return
    res = new_results(base, None)
    evaluate_model(model0, tok, base, udir, UNTOUCHED, prompts, res, console, resume=True)  # tasks scored before a cut
    _answer(model0, tok, base, judged, udir)
    res.update(complete=True, method=UNTOUCHED)
    files.save_json(udir / "results.json", res)


def training_key(r: Recipe) -> str:
    """What decides a cell's trained model: its recipe without the output and propagation sections. LEP variants
    that differ only in how they propagate (and have the same seed) train the same model."""
    d = r.model_dump(mode="json")
    d.pop("output"), d.pop("propagate"), d.pop("compare")
    return json.dumps(d, sort_keys=True)


class SharedTraining:
    """The trained weights of LEP cells, kept in memory for the cells still to run that would train the same model
    (`training_key`): such a cell takes the weights, training record, loss log and adapted-base scores of the first
    (its `shared_training` names it) instead of training again. Entries go as soon as no pending cell needs them."""

    def __init__(self, pending: list[str]):
        self.pending, self.kept = Counter(pending), {}

    def take(self, key: str) -> dict | None:
        """What an earlier cell trained for `key` (None: train), dropped once the last cell needing it took it."""
        self.pending[key] -= 1
        return self.kept.get(key) if self.pending[key] > 0 else self.kept.pop(key, None)

    def offer(self, key: str, model, cell_dir: Path, res: dict, label: str) -> None:
        if self.pending[key] > 0:
            self.kept[key] = {"cell": cell_dir, "label": label, "stages": copy.deepcopy(res["stages"]),
                              "eval": copy.deepcopy(res["evals"].get(label)),
                              "params": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}}


def _reuse(model, r: Recipe, stages: list, donor: dict, cell_dir: Path, res: dict, label: str) -> None:
    """Give a cell the model another cell of the same training key trained (see `SharedTraining`)."""
    for stage in stages:
        model, _ = stage.setup(model)  # the same module changes (e.g. an untied head) before the weights go in
    named = dict(model.named_parameters())
    with torch.no_grad():
        for n, p in donor["params"].items():
            named[n].copy_(p)
    src = donor["cell"]
    res["stages"] = copy.deepcopy(donor["stages"])
    res["shared_training"] = src.name
    res["train_seconds"] = round(sum(s.get("seconds", 0) for s in res["stages"].values()), 2)
    if (src / "metrics.jsonl").exists():
        files.atomic_write_bytes(cell_dir / "metrics.jsonl", (src / "metrics.jsonl").read_bytes())
    if donor["eval"] is not None:
        res["evals"][label] = copy.deepcopy(donor["eval"])
        if (src / "eval" / donor["label"]).is_dir():
            with files.atomic_dir(cell_dir / "eval" / label) as tmp:
                shutil.copytree(src / "eval" / donor["label"], tmp, dirs_exist_ok=True)


def _cell(model0, tok, r: Recipe, method: str, tokenized: dict, cell_dir: Path, prompts: list[dict], judged,
          console: Console, vocab=None, instruct=None, shared: SharedTraining | None = None) -> None:
    """Train and evaluate one (method, seed) cell from a fresh copy of the untouched weights. An LEP cell
    (`vocab`: its adapted tokenizer and report) starts its new rows as `lingotune run` does; with `instruct`
    (the instruct model and its tokenizer) the cell's result is the propagated model, and the adapted base
    model's evaluation is the cell's row after its last stage ('<variant>-<stage>'); with `shared`, a cell that
    would train what an earlier cell of this grid trained takes that model instead."""
    cell_dir.mkdir(parents=True, exist_ok=True)
    files.atomic_write_text(cell_dir / "recipe.yaml", dump_recipe(r))
    res = new_results(r, files.read_json(cell_dir / "results.json"))
    res["variant"] = method
    stages = select_stages(r, None, res)
    model = copy.deepcopy(model0)
    t = time.perf_counter()
    reference = files.read_json(cell_dir.parent / UNTOUCHED / "results.json")["evals"][UNTOUCHED]
    if vocab is not None:
        from lingotune.vocab import init_new_rows

        res["vocab"] = {**vocab[1], "init": init_new_rows(model, tok, vocab[0])}
        tok = vocab[0]
    label, key = f"{method}-{stages[-1].name}", training_key(r)
    donor = shared.take(key) if shared is not None and instruct is not None else None
    if donor is not None:
        console.print(f"[dim]{method}: the model {donor['cell'].name} trained, shared[/]")
        _reuse(model, r, stages, donor, cell_dir, res, label)
    else:
        model = train_method(model, tok, r, stages, tokenized, cell_dir, res, resume=True, console=console,
                             after_stage=stage_evaluator(r, tok, cell_dir, res, console, reference, method))
    if instruct is not None:
        adapted = model
        model, tok = _propagate(model0, adapted, tok, r, instruct, cell_dir, res, console, reference, label)
        if shared is not None and donor is None:
            shared.offer(key, adapted, cell_dir, res, label)
    evaluate_model(model, tok, r, cell_dir, method, prompts, res, console, reference, resume=True)
    _answer(model, tok, r, judged, cell_dir)
    res["cell_seconds"] = round(time.perf_counter() - t, 2)
    res["complete"] = True
    files.save_json(cell_dir / "results.json", res)
    if not r.compare.keep_checkpoints:
        for ck in cell_dir.glob("*/*/checkpoint"):
            shutil.rmtree(ck, ignore_errors=True)


def _propagate(model0, adapted, tok, r: Recipe, instruct, cell_dir: Path, res: dict, console: Console,
               reference: dict, label: str):
    """An LEP cell's adapted base model evaluated as its last stage's row, then propagated into a copy of the
    instruct model: (the propagated model, its tokenizer). The propagated model is written only with
    `compare.keep_checkpoints` (it is a whole model)."""
    from lingotune.propagate import propagate, save_propagation

    if label not in res["evals"]:
        evaluate_model(adapted, tok, r, cell_dir, label, [], res, console, reference, tasks=list(r.eval.tasks),
                       resume=True)
        files.save_json(cell_dir / "results.json", res)
    console.print(f"[bold]propagate[/] into {r.propagate.instruct} ({r.propagate.mode}) …")
    t0 = time.perf_counter()
    done = propagate(model0, adapted, tok, copy.deepcopy(instruct[0]), instruct[1], mode=r.propagate.mode,
                     copy=r.propagate.copy_rows)
    sources = {"base": r.model.source, "adapted": str(cell_dir), "instruct": r.propagate.instruct}
    record = done.record(sources)
    if r.compare.keep_checkpoints:
        record = save_propagation(done, cell_dir / "propagated", sources, overwrite=True)
    res["propagation"] = {**record, "seconds": round(time.perf_counter() - t0, 2)}
    return done.model, done.tokenizer


def _instruct(cells: dict, instruct, udir: Path, prompts: list[dict], console: Console):
    """The one instruct model the grid's LEP cells propagate into, loaded once (None without such cells), and its
    evaluation beside the untouched model's (cell 'instruct', once per dataset)."""
    if instruct is None:
        return None
    model, tok = instruct
    if not _complete(udir):
        base = next(iter(cells.values()))
        res = new_results(base, None)
        reference = files.read_json(udir.parent / UNTOUCHED / "results.json")["evals"][UNTOUCHED]
        evaluate_model(model, tok, base, udir, INSTRUCT, prompts, res, console, reference, resume=True)
        res.update(complete=True, method=INSTRUCT, variant=INSTRUCT, model=base.propagate.instruct)
        files.save_json(udir / "results.json", res)
    return instruct


def compare(recipe: Recipe, out_dir: Path, *, resume: bool = False, console: Console | None = None) -> dict:
    """Train and evaluate every (dataset, method, seed) cell missing from `out_dir`, then summarize the grid."""
    console = console or Console()
    cmp = recipe.compare
    action = rundir.check(out_dir, kind="grid", resume=resume, overwrite=recipe.output.overwrite)
    if action == "resume":
        check_resumable(recipe, out_dir)
    datasets = cmp.datasets or {"data": recipe.data}
    t0, started, ran = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S%z"), []
    judged = judge_setup(recipe)
    model0, tok, _ = load(recipe, console)
    check_method(recipe, model0)
    builts, tokenized, vocabs, lep = {}, {}, {}, {}
    for dname, dcfg in datasets.items():  # every dataset, and every method's stages on it, checked first
        builts[dname] = built = build_data(cell_recipe(recipe, cmp.methods[0], recipe.seed, dcfg, out_dir), console)
        adapted = {}  # one tokenizer per distinct vocab section: variants differing only in propagation share it
        for method in cmp.methods:  # tokenized once per method: a cell's seed does not change its examples
            r = cell_recipe(recipe, method, recipe.seed, dcfg, out_dir)
            check_method(r, model0)
            key = (r.vocab.model_dump_json(), r.model.chat_tokens)
            if key not in adapted:
                adapted[key] = adapt_vocabulary(r, tok, built)
            vocabs[dname, method] = None if adapted[key][0] is None else adapted[key]
            if r.propagate.instruct:
                check_instruct(r, model0)
                lep[method] = r
            tokenized[dname, method] = tokenize_stages(r, select_stages(r, None, {}), built,
                                                       adapted[key][0] or tok)
    instruct = _load_instruct(lep, console)
    rundir.prepare(out_dir, action, "grid")
    files.atomic_write_text(out_dir / "recipe.yaml", dump_recipe(recipe))
    for dname, dcfg in datasets.items():
        base = cell_recipe(recipe, cmp.methods[0], recipe.seed, dcfg, out_dir / dname)
        built = builts[dname]
        built.write(out_dir / dname / "data")
        prompts = sample_prompts(base, built)
        _untouched(model0, tok, base, out_dir / dname / UNTOUCHED, prompts, judged, console)
        _instruct(lep, instruct, out_dir / dname / INSTRUCT, prompts, console)
        shared = SharedTraining([training_key(cell_recipe(recipe, m, seed, dcfg, out_dir))
                                 for m in cmp.methods if m in lep for seed in cmp.seeds
                                 if not _complete(out_dir / dname / f"{m}-s{seed}")])
        for method in cmp.methods:
            for seed in cmp.seeds:
                cell_dir = out_dir / dname / f"{method}-s{seed}"
                if _complete(cell_dir):
                    console.print(f"[dim]{dname} {method} seed {seed}: done earlier[/]")
                    continue
                console.print(f"[bold]{dname} · {method} · seed {seed}[/]")
                r = cell_recipe(recipe, method, seed, dcfg, cell_dir)
                _cell(model0, tok, r, method, tokenized[dname, method], cell_dir, prompts, judged, console,
                      vocabs[dname, method], instruct if method in lep else None, shared)
                ran.append(f"{dname}/{cell_dir.name}")
    if judged is not None:
        _judge(out_dir, recipe, judged, console)
    parts = _parts(out_dir)
    part = {"started": started, "methods": cmp.methods, "seeds": cmp.seeds, "cells_run": ran, "environment": environment()}
    parts.append(part)
    part["wall_seconds"] = round(time.perf_counter() - t0, 2)  # for the report; again below, with the summary's time
    summary = summarize(out_dir, recipe, parts)
    part["wall_seconds"] = summary["wall_seconds"] = round(time.perf_counter() - t0, 2)
    summary.update(parts=parts, wall_seconds_all_parts=round(sum(p.get("wall_seconds") or 0 for p in parts), 2))
    files.save_json(out_dir / "summary.json", summary)
    return summary


def _load_instruct(lep: dict, console: Console):
    """(model, tokenizer) of the instruct model the LEP cells propagate into; one for the whole grid."""
    sources = {r.propagate.instruct for r in lep.values()}
    if not sources:
        return None
    if len(sources) > 1:
        raise RecipeError(f"compare: the LEP variants propagate into different instruct models ({', '.join(sorted(sources))}); "
                          "a grid compares them against one")
    r = next(iter(lep.values()))
    console.print(f"[bold]model[/] loading the instruct model {r.propagate.instruct} …")
    return load_model(r.propagate.instruct, **r.model.loading())


def _parts(out_dir: Path) -> list[dict]:
    """The grid's earlier invocations (`summary.json`'s parts: when, what ran, wall time, where); a summary written
    before parts were recorded gives one part with its wall time only."""
    old = files.read_json(out_dir / "summary.json") or {}
    if "parts" in old:
        return list(old["parts"])
    return [{"wall_seconds": old["wall_seconds"], "note": "written before lingotune recorded a grid's parts"}] \
        if "wall_seconds" in old else []
