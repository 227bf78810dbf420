"""`lingotune compare`: methods x seeds (x datasets) on one model, like the paper's comparison.

The model is loaded once and each dataset built once; every cell starts from a fresh copy of
the same weights, sees the same batches for its seed, and is evaluated with the same prompts.
Cells finish independently: an interrupted grid continues without redoing finished cells.
Then `lingotune.compare_report.summarize` writes tables (markdown + CSV), plots and a significance test.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import time
from collections import Counter
from pathlib import Path

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


def stage_keys(r: Recipe, stages: list) -> list[str]:
    """What decides a cell's model after each of its stages: the recipe without its output, propagation, compare and
    method-name fields, and the stages up to that one (what builds each, its name, data, steps, loss). Cells of a
    grid with the same key at a stage train the same model up to it: the sft variant's stage and dpo's first, or
    LEP variants that differ only in how they propagate, every stage."""
    d = r.model_dump(mode="json")
    d.pop("output"), d.pop("propagate"), d.pop("compare"), d["method"].pop("name")
    parts, keys = [json.dumps(d, sort_keys=True)], []
    for s in stages:
        parts.append(json.dumps([f"{s.setup.__module__}.{s.setup.__qualname__}", s.name, s.data, s.steps,
                                 s.row_sparse, type(s.loss).__qualname__, s.notes], sort_keys=True, default=str))
        keys.append(hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16])
    return keys


class SharedStages:
    """Stages a cell takes from an earlier cell of the same dataset instead of training them again (`stage_keys`).

    A finished cell's stage records carry their `share_key`, and its stage checkpoints stay on disk while a cell
    still to run has that key. A cell about to train finds the finished cell with which it shares the longest
    prefix of stages and copies that prefix: the stage folders (checkpoint and artefacts), the training records
    (`shared_from` names the cell), their loss-log lines and the scores after those stages. `train_method` then
    restores those stages as it does on `--resume` and trains the rest."""

    def __init__(self, data_dir: Path, pending: list[str], keep_checkpoints: bool):
        self.dir, self.pending, self.keep = data_dir, Counter(pending), keep_checkpoints

    def take(self, r: Recipe, stages: list, keys: list[str], cell_dir: Path, res: dict) -> None:
        best, n = None, 0
        for other in sorted(p for p in self.dir.iterdir() if p.is_dir() and p != cell_dir):
            done = files.read_json(other / "results.json") or {}
            if not done.get("complete"):
                continue
            k = 0
            while k < len(stages) and _donated(done, other, stages[k].name, keys[k]):
                k += 1
            if k > n:
                best, n = (other, done), k
        if best is None:
            return
        src, done = best
        log = []
        for stage in stages[:n]:
            if res["stages"].get(stage.name, {}).get("complete"):
                continue
            old, new = _stage_dir(src, done, stage.name), cell_dir / r.method.name / stage.name
            with files.atomic_dir(new) as tmp:
                shutil.copytree(old, tmp, dirs_exist_ok=True)
            record = copy.deepcopy(done["stages"][stage.name])
            record["artefacts"] = {k: str(new / Path(v).relative_to(old)) if Path(v).is_relative_to(old) else v
                                   for k, v in record.get("artefacts", {}).items()}
            res["stages"][stage.name] = {**record, "shared_from": src.name}
            label, mine = f"{done.get('variant', done['method'])}-{stage.name}", f"{res['variant']}-{stage.name}"
            if label in done["evals"]:
                res["evals"][mine] = copy.deepcopy(done["evals"][label])
                if (src / "eval" / label).is_dir():
                    with files.atomic_dir(cell_dir / "eval" / mine) as tmp:
                        shutil.copytree(src / "eval" / label, tmp, dirs_exist_ok=True)
            log += [{**line, "method": r.method.name} for line in _log(src / "metrics.jsonl")
                    if line.get("method") == done["method"] and line.get("stage") == stage.name]
        if log:
            shared = {line["stage"] for line in log}
            kept = [line for line in _log(cell_dir / "metrics.jsonl") if line.get("stage") not in shared]
            files.atomic_write_text(cell_dir / "metrics.jsonl",
                                    "".join(json.dumps(line) + "\n" for line in log + kept))
        files.save_json(cell_dir / "results.json", res)

    def finished(self, keys: list[str]) -> None:
        """A cell is done: the stage checkpoints of finished cells that no cell still to run can take are removed
        (all of them with `compare.keep_checkpoints` false; none with it true)."""
        self.pending.subtract(keys)
        if self.keep:
            return
        for cell in self.dir.iterdir():
            done = files.read_json(cell / "results.json") if cell.is_dir() else None
            if not (done and done.get("complete")):
                continue
            for name, record in done["stages"].items():
                where = _stage_dir(cell, done, name)
                if self.pending[record.get("share_key")] <= 0 and where is not None:
                    shutil.rmtree(where / "checkpoint", ignore_errors=True)


def _log(path: Path) -> list[dict]:
    """The lines of a cell's loss log (metrics.jsonl; none when it has none)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if path.exists() else []


def _stage_dir(cell: Path, done: dict, stage: str) -> Path | None:
    """The folder of `stage` in finished cell `cell` (its results `done`), as `train_method` writes it; None when the
    names in results.json would lead outside the cell (nothing is copied from or removed there)."""
    where = cell / str(done.get("method")) / stage
    return where if where.resolve().parent.parent == cell.resolve() else None


def _donated(done: dict, cell: Path, stage: str, key: str) -> bool:
    """Whether finished cell `cell` (its results `done`) trained `stage` under `key` and still has its checkpoint."""
    record, where = done["stages"].get(stage, {}), _stage_dir(cell, done, stage)
    return (record.get("complete", False) and record.get("share_key") == key and where is not None
            and (where / "checkpoint").is_dir())


def _cell(model0, tok, r: Recipe, method: str, tokenized: dict, cell_dir: Path, prompts: list[dict], judged,
          console: Console, shared: SharedStages, vocab=None, instruct=None) -> None:
    """Train and evaluate one (method, seed) cell from a fresh copy of the untouched weights. An LEP cell
    (`vocab`: its adapted tokenizer and report) starts its new rows as `lingotune run` does; with `instruct`
    (the instruct model and its tokenizer) the cell's result is the propagated model, and the adapted base
    model's evaluation is the cell's row after its last stage ('<variant>-<stage>'). The stages an earlier cell of
    this grid trained the same way are taken from it (`shared`), not trained again."""
    cell_dir.mkdir(parents=True, exist_ok=True)
    files.atomic_write_text(cell_dir / "recipe.yaml", dump_recipe(r))
    res = new_results(r, files.read_json(cell_dir / "results.json"))
    res["variant"] = method
    stages = select_stages(r, None, res)
    keys = stage_keys(r, stages)
    model = copy.deepcopy(model0)
    t = time.perf_counter()
    reference = files.read_json(cell_dir.parent / UNTOUCHED / "results.json")["evals"][UNTOUCHED]
    if vocab is not None:
        from lingotune.vocab import init_new_rows

        res["vocab"] = {**vocab[1], "init": init_new_rows(model, tok, vocab[0])}
        tok = vocab[0]
    shared.take(r, stages, keys, cell_dir, res)
    for name in sorted({s["shared_from"] for s in res["stages"].values() if "shared_from" in s}):
        console.print(f"[dim]{method}: stages {', '.join(n for n, s in res['stages'].items() if s.get('shared_from') == name)} "
                      f"taken from {name} (trained the same way)[/]")
    model = train_method(model, tok, r, stages, tokenized, cell_dir, res, resume=True, console=console,
                         after_stage=stage_evaluator(r, tok, cell_dir, res, console, reference, method))
    for stage, key in zip(stages, keys):
        res["stages"][stage.name]["share_key"] = key
    if instruct is not None:
        model, tok = _propagate(model0, model, tok, r, instruct, cell_dir, res, console, reference,
                                f"{method}-{stages[-1].name}")
    evaluate_model(model, tok, r, cell_dir, method, prompts, res, console, reference, resume=True)
    _answer(model, tok, r, judged, cell_dir)
    res["cell_seconds"] = round(time.perf_counter() - t, 2)
    res["complete"] = True
    files.save_json(cell_dir / "results.json", res)
    shared.finished(keys)


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
        todo = [(m, seed) for m in cmp.methods for seed in cmp.seeds if not _complete(out_dir / dname / f"{m}-s{seed}")]
        shared = SharedStages(out_dir / dname, [k for m, seed in todo for k in _keys(recipe, m, seed, dcfg, out_dir)],
                              cmp.keep_checkpoints)
        for method in cmp.methods:
            for seed in cmp.seeds:
                cell_dir = out_dir / dname / f"{method}-s{seed}"
                if _complete(cell_dir):
                    console.print(f"[dim]{dname} {method} seed {seed}: done earlier[/]")
                    continue
                console.print(f"[bold]{dname} · {method} · seed {seed}[/]")
                r = cell_recipe(recipe, method, seed, dcfg, cell_dir)
                _cell(model0, tok, r, method, tokenized[dname, method], cell_dir, prompts, judged, console, shared,
                      vocabs[dname, method], instruct if method in lep else None)
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


def _keys(recipe: Recipe, method: str, seed: int, data, out: Path) -> list[str]:
    r = cell_recipe(recipe, method, seed, data, out)
    return stage_keys(r, select_stages(r, None, {}))


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


WEIGHTS = {".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt"}
RECORD = "record.json"  # what marks a folder as a grid's record, which a later record may replace


def check_record(out_dir: Path, dest: Path) -> tuple[Path, Path]:
    """Where `record` may write (checked before a grid runs): outside the grid, and not a folder of the user's."""
    out_dir, dest = Path(out_dir).resolve(), Path(dest).resolve()
    if dest == out_dir or out_dir in dest.parents or dest in out_dir.parents:
        raise rundir.RunDirError(f"{dest}: the record must lie outside the grid {out_dir}, and the grid outside it")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir()) and not (
            (dest / RECORD).is_file() and not any(f.suffix in WEIGHTS for f in dest.rglob("*")))):
        raise rundir.RunDirError(f"{dest}: exists and is not a grid record (no {RECORD}, or it holds weights); "
                                 "choose another --record")
    return out_dir, dest


def record(out_dir: Path, dest: Path) -> Path:
    """Write the grid's record to `dest`: every score, loss log, recipe, report and plot, without weights and
    without data text, small enough to keep in git. Left out: a folder holding a weight file (a model, an adapter, a
    checkpoint, a stage's embeddings), whole; a trained cell that has not finished (without its checkpoint it trains
    again from the start); the training sets a grid writes under `<dataset>/data`. Per-example files (`*.jsonl` but
    the loss log) keep, per line, only `id`, numbers and flags, which the grid's paired tests read; a cell's sample
    answers keep their source and the models' answers, not the prompt. Copied back into place, the record is a grid
    that `--resume` continues: finished cells are read, not redone. `dest` is replaced whole, so it must be absent,
    empty or an earlier record, and outside the grid."""
    out_dir, dest = check_record(out_dir, dest)
    weighty = {f.parent for f in out_dir.rglob("*") if f.suffix in WEIGHTS and f.is_file()}
    training_sets = {p.parent.parent / "data" for p in out_dir.glob("*/*/results.json")}
    unfinished = {p.parent for p in out_dir.glob("*/*/recipe.yaml") if not _complete(p.parent)}  # cut while training
    with files.atomic_dir(dest) as tmp:
        for src in sorted(out_dir.rglob("*")):
            rel = src.relative_to(out_dir)
            folders = set(src.parents) - set(out_dir.parents) - {out_dir}
            if (not src.is_file() or folders & (weighty | unfinished) or src.suffix in WEIGHTS
                    or any(p.name.startswith(".") for p in folders)  # an unfinished atomic write
                    or (src.parent in training_sets and src.suffix == ".jsonl")):
                continue
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if src.suffix == ".jsonl" and src.name != "metrics.jsonl":
                target.write_text("".join(json.dumps(_numbers(json.loads(line))) + "\n"
                                          for line in src.read_text().splitlines() if line.strip()))
            elif src.name == "results.json":  # its sample prompts are evaluation data
                res = files.read_json(src)
                res["samples"] = [{k: v for k, v in s.items() if k != "prompt"} for s in res.get("samples") or []]
                files.save_json(target, res)
            else:
                shutil.copy2(src, target)
        files.save_json(tmp / RECORD, {"grid": str(out_dir), "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                       "left_out": "weights (every folder holding one), the training sets, data text"})
    return dest


def _numbers(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k == "id" or isinstance(v, (int, float, bool)) or v is None}
