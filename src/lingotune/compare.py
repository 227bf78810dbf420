"""`lingotune compare`: methods x seeds (x datasets) on one model, like the paper's comparison.

The model is loaded once and each dataset built once; every cell starts from a fresh copy of
the same weights, sees the same batches for its seed, and is evaluated with the same prompts.
Cells finish independently: an interrupted grid continues without redoing finished cells.
Then `summarize` writes tables (markdown + CSV), plots and a significance test.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import random
import shutil
import time
from pathlib import Path

from rich.console import Console

from lingotune import files, rundir
from lingotune.recipe import Recipe, dump_recipe, parse_recipe, set_path
from lingotune.run import (
    build_data, check_method, check_resumable, evaluate_model, load, new_results, sample_prompts, select_stages,
    tokenize_stages, train_method,
)

UNTOUCHED = "untouched"


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


def _untouched(model0, tok, base: Recipe, udir: Path, prompts: list[str], console: Console) -> None:
    """The untouched model: once per dataset (its prompts come from the dataset)."""
    if _complete(udir):
        return
    res = new_results(base, None)
    evaluate_model(model0, tok, base, udir, UNTOUCHED, prompts, res, console)
    res.update(complete=True, method=UNTOUCHED)
    files.save_json(udir / "results.json", res)


def _cell(model0, tok, r: Recipe, method: str, built, cell_dir: Path, prompts: list[str], console: Console) -> None:
    """Train and evaluate one (method, seed) cell from a fresh copy of the untouched weights."""
    cell_dir.mkdir(parents=True, exist_ok=True)
    files.atomic_write_text(cell_dir / "recipe.yaml", dump_recipe(r))
    res = new_results(r, files.read_json(cell_dir / "results.json"))
    res["variant"] = method
    stages = select_stages(r, None, res)
    tokenized = tokenize_stages(r, stages, built, tok)
    model = copy.deepcopy(model0)
    t = time.perf_counter()
    model = train_method(model, tok, r, stages, tokenized, cell_dir, res, resume=True, console=console)
    res["train_seconds"] = round(sum(s.get("seconds", 0) for s in res["stages"].values()), 2)
    evaluate_model(model, tok, r, cell_dir, method, prompts, res, console)
    res["cell_seconds"] = round(time.perf_counter() - t, 2)
    res["complete"] = True
    files.save_json(cell_dir / "results.json", res)
    if not r.compare.keep_checkpoints:
        for ck in cell_dir.glob("*/*/checkpoint"):
            shutil.rmtree(ck, ignore_errors=True)


def compare(recipe: Recipe, out_dir: Path, *, resume: bool = False, console: Console | None = None) -> dict:
    console = console or Console()
    cmp = recipe.compare
    action = rundir.check(out_dir, kind="grid", resume=resume, overwrite=recipe.output.overwrite)
    if action == "resume":
        check_resumable(recipe, out_dir)
    datasets = cmp.datasets or {"data": recipe.data}
    t0 = time.perf_counter()
    model0, tok, _ = load(recipe, console)
    check_method(recipe, model0)
    builts = {}
    for dname, dcfg in datasets.items():  # every dataset, and every method's stages on it, checked first
        builts[dname] = built = build_data(cell_recipe(recipe, cmp.methods[0], recipe.seed, dcfg, out_dir), console)
        for method in cmp.methods:
            r = cell_recipe(recipe, method, recipe.seed, dcfg, out_dir)
            tokenize_stages(r, select_stages(r, None, {}), built, tok)
    rundir.prepare(out_dir, action, "grid")
    files.atomic_write_text(out_dir / "recipe.yaml", dump_recipe(recipe))
    for dname, dcfg in datasets.items():
        base = cell_recipe(recipe, cmp.methods[0], recipe.seed, dcfg, out_dir / dname)
        built = builts[dname]
        built.write(out_dir / dname / "data")
        prompts = sample_prompts(built, recipe.output.sample_prompts)
        _untouched(model0, tok, base, out_dir / dname / UNTOUCHED, prompts, console)
        for method in cmp.methods:
            for seed in cmp.seeds:
                cell_dir = out_dir / dname / f"{method}-s{seed}"
                if _complete(cell_dir):
                    console.print(f"[dim]{dname} {method} seed {seed}: done earlier[/]")
                    continue
                console.print(f"[bold]{dname} · {method} · seed {seed}[/]")
                r = cell_recipe(recipe, method, seed, dcfg, cell_dir)
                _cell(model0, tok, r, method, built, cell_dir, prompts, console)
    summary = summarize(out_dir, recipe)
    summary["wall_seconds"] = round(time.perf_counter() - t0, 2)
    files.save_json(out_dir / "summary.json", summary)
    return summary


# ----------------------------------------------------------------------------- statistics


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval over seeds (0 for a single value)."""
    from scipy import stats

    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, 0.0
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return m, float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))


def paired_permutation(diffs: list[float], n_perm: int = 10000, seed: int = 0) -> float:
    """Two-sided p-value of a paired sign-flip permutation test that the mean difference is 0."""
    if not diffs or all(d == 0 for d in diffs):
        return 1.0
    obs = abs(sum(diffs))
    rng = random.Random(seed)
    hits = 0
    for _ in range(n_perm):
        s = sum(d if rng.random() < 0.5 else -d for d in diffs)
        if abs(s) >= obs - 1e-12:
            hits += 1
    return (hits + 1) / (n_perm + 1)


# ----------------------------------------------------------------------------- tables and plots

# metrics shown per task kind, in order; everything else stays in summary.json
SHOWN = ["accuracy", "rate", "accuracy_ll", "f1", "chrf++", "comet", "bits_per_char"]


def _cells(out_dir: Path) -> list[dict]:
    cells = []
    for p in sorted(out_dir.glob("*/*/results.json")):
        r = json.loads(p.read_text())
        if r.get("complete"):
            r["_dataset"] = p.parent.parent.name
            r["_dir"] = str(p.parent)
            r["_variant"] = r.get("variant", r.get("method"))
            cells.append(r)
    return cells


def _per_example(cell: dict, task: str) -> dict:
    """example id -> 1/0 correctness, from the cell's per-example JSONL."""
    label = cell["_variant"] if cell["_variant"] != UNTOUCHED else UNTOUCHED
    path = Path(cell["_dir"]) / "eval" / label / f"{task}.jsonl"
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if "correct" in rec:
                out[rec["id"]] = 1.0 if rec["correct"] else 0.0
    return out


def summarize(out_dir: Path, recipe: Recipe) -> dict:
    cells = _cells(out_dir)
    order = [UNTOUCHED] + list(recipe.compare.methods)
    table: dict = {}  # dataset -> variant -> task -> metric -> [values over seeds]
    params: dict = {}
    times: dict = {}
    for c in cells:
        v, d = c["_variant"], c["_dataset"]
        evals = c["evals"].get(v if v != UNTOUCHED else UNTOUCHED, {})
        for task, res in evals.items():
            if not isinstance(res, dict) or res.get("skipped"):
                continue
            for m in SHOWN:
                if isinstance(res.get(m), (int, float)):
                    table.setdefault(d, {}).setdefault(v, {}).setdefault(task, {}).setdefault(m, []).append(float(res[m]))
        if c["stages"]:
            params[v] = {name: s["trainable_params"] for name, s in c["stages"].items()}
            times.setdefault(d, {}).setdefault(v, []).append(c.get("train_seconds", 0))

    summary: dict = {"datasets": {}, "params": params, "significance": {}}
    lines = ["# lingotune compare", ""]
    lines.append(f"Model `{recipe.model.source}`, language `{recipe.language}`, seeds {recipe.compare.seeds}. "
                 "Cells are mean over seeds ± half-width of the 95% t-interval over seeds.")
    for d, by_variant in table.items():
        variants = [v for v in order if v in by_variant]
        tasks = sorted({t for v in variants for t in by_variant[v]})
        rows = []
        for v in variants:
            row = {"dataset": d, "method": v}
            for t in tasks:
                for m, vals in by_variant[v].get(t, {}).items():
                    mean, half = mean_ci(vals)
                    row[f"{t}/{m}"] = (round(mean, 3), round(half, 3), len(vals))
            yes_no = [by_variant[v][t]["accuracy"] for t in tasks if "accuracy" in by_variant[v].get(t, {}) and "rate" in by_variant[v][t]]
            if yes_no:
                per_seed = [sum(x) / len(x) for x in zip(*yes_no)]
                row["yes/no mean accuracy"] = tuple(round(x, 3) for x in mean_ci(per_seed)) + (len(per_seed),)
            tm = times.get(d, {}).get(v)
            row["train seconds"] = (round(sum(tm) / len(tm), 1), 0.0, 1) if tm else None
            total = sum(params.get(v, {}).values()) if v in params else 0
            row["trainable params"] = (total, 0.0, 1)
            rows.append(row)
        cols = sorted({k for r in rows for k in r if k not in ("dataset", "method")})
        summary["datasets"][d] = rows
        _write_csv(out_dir / f"table_{d}.csv", rows, cols)
        lines += ["", f"## Dataset `{d}`", ""]
        lines += _md_table(rows, cols)
        sig = significance(cells, d, recipe.compare.candidate, recipe.compare.baseline)
        summary["significance"][d] = sig
        if sig:
            lines += ["", f"### {recipe.compare.candidate} vs {recipe.compare.baseline}", "",
                      "Delta = candidate − baseline: accuracy points for yes/no tasks (mean over seeds with its 95% "
                      "t-interval; p from a paired sign-flip permutation test over (seed, example) pairs); chrF++ and "
                      "bits per char per seed (p from a paired t-test over seeds). Lower bits per char is better.", "",
                      "| task | delta | 95% CI | pairs (examples or seeds) | p |", "|---|---|---|---|---|"]
            for task, s in sig.items():
                lines.append(f"| {task} | {s['delta']:+.2f} | [{s['ci'][0]:+.2f}, {s['ci'][1]:+.2f}] | {s['pairs']} | {s['p']:.3f} |")
        plots = plot(out_dir, d, by_variant, variants, tasks, cells)
        lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    lines += ["", "## Trainable parameters (Table 6 shape)", "", "| method | " + " | ".join(["stages", "total"]) + " |", "|---|---|---|"]
    for v in order:
        if v in params:
            lines.append(f"| {v} | " + ", ".join(f"{k}: {n:,}" for k, n in params[v].items()) + f" | {sum(params[v].values()):,} |")
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    return summary


def significance(cells: list[dict], dataset: str, cand: str, base: str) -> dict:
    """Per yes/no task (and pooled): candidate − baseline accuracy, paired by seed and example."""
    by = {(c["_variant"], c["seed"]): c for c in cells if c["_dataset"] == dataset}
    seeds = sorted({s for (v, s) in by if v == cand} & {s for (v, s) in by if v == base})
    if not seeds:
        return {}
    tasks = sorted({t for s in seeds for t, r in by[(cand, s)]["evals"].get(cand, {}).items()
                    if isinstance(r, dict) and "rate" in r and not r.get("skipped")})
    out = {}
    pooled: list[float] = []
    pooled_seed: dict[int, list[float]] = {}
    for t in tasks:
        diffs, per_seed = [], []
        for s in seeds:
            a, b = _per_example(by[(cand, s)], t), _per_example(by[(base, s)], t)
            common = sorted(set(a) & set(b), key=str)
            if not common:
                continue
            d = [a[i] - b[i] for i in common]
            diffs += d
            per_seed.append(100 * sum(d) / len(d))
            pooled_seed.setdefault(s, []).extend(d)
        if not per_seed:
            continue
        mean, half = mean_ci(per_seed)
        out[t] = {"delta": mean, "ci": [mean - half, mean + half], "pairs": len(diffs), "p": paired_permutation(diffs)}
        pooled += diffs
    if len(out) > 1:
        per_seed = [100 * sum(v) / len(v) for v in pooled_seed.values()]
        mean, half = mean_ci(per_seed)
        out["all yes/no"] = {"delta": mean, "ci": [mean - half, mean + half], "pairs": len(pooled), "p": paired_permutation(pooled)}
    # corpus-level metrics (chrF++, bits per char): per-seed deltas, paired t-test over seeds
    from scipy import stats

    for t in sorted(by[(cand, seeds[0])]["evals"].get(cand, {})):
        for metric in ("chrf++", "bits_per_char"):
            a = [by[(cand, s)]["evals"][cand].get(t, {}).get(metric) for s in seeds]
            b = [by[(base, s)]["evals"][base].get(t, {}).get(metric) for s in seeds]
            if any(x is None for x in a + b):
                continue
            d = [x - y for x, y in zip(a, b)]
            mean, half = mean_ci(d)
            p = float(stats.ttest_rel(a, b).pvalue) if len(d) > 1 and any(d) else 1.0
            out[f"{t} {metric}"] = {"delta": mean, "ci": [mean - half, mean + half], "pairs": len(d), "p": p}
    return out


def _cell_text(v) -> str:
    if v is None:
        return "–"
    mean, half, n = v
    if isinstance(mean, int) or float(mean).is_integer() and half == 0 and mean > 1000:
        return f"{int(mean):,}"
    return f"{mean:.2f}" + (f" ± {half:.2f}" if n > 1 else "")


def _md_table(rows: list[dict], cols: list[str]) -> list[str]:
    out = ["| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for r in rows:
        out.append(f"| {r['method']} | " + " | ".join(_cell_text(r.get(c)) for c in cols) + " |")
    return out


def _write_csv(path: Path, rows: list[dict], cols: list[str]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dataset", "method"] + [x for c in cols for x in (c, c + " ci95", c + " n")])
        for r in rows:
            vals = []
            for c in cols:
                v = r.get(c)
                vals += list(v) if v else ["", "", ""]
            w.writerow([r["dataset"], r["method"]] + vals)


def plot(out_dir: Path, dataset: str, by_variant: dict, variants: list[str], tasks: list[str], cells: list[dict]) -> list[Path]:
    """Training-loss curves per method, and bars with 95% CIs per task/metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(7, 4))
    for v in variants:
        for c in cells:
            if c["_dataset"] != dataset or c["_variant"] != v or not c["stages"]:
                continue
            log = Path(c["_dir"]) / "metrics.jsonl"
            if not log.exists():
                continue
            recs = [json.loads(x) for x in log.read_text().splitlines()]
            xs, ys, offset, last_stage = [], [], 0, None
            for rec in recs:
                if rec["stage"] != last_stage and xs:
                    offset = xs[-1]
                last_stage = rec["stage"]
                xs.append(offset + rec["step"])
                ys.append(rec["loss"])
            ax.plot(xs, ys, label=f"{v} s{c['seed']}", alpha=0.7)
    ax.set_xlabel("step (stages concatenated)")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    p = out_dir / f"loss_{dataset}.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    panels = [(t, m) for t in tasks for m in ("accuracy", "chrf++", "bits_per_char")
              if any(m in by_variant[v].get(t, {}) for v in variants)]
    if panels:
        cols = min(3, len(panels))
        rows = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
        for ax, (t, m) in zip(axes.flat, panels):
            means, errs = [], []
            for v in variants:
                vals = by_variant[v].get(t, {}).get(m)
                mean, half = mean_ci(vals) if vals else (0.0, 0.0)
                means.append(mean)
                errs.append(half)
            ax.bar(range(len(variants)), means, yerr=errs, capsize=3, color="tab:blue")
            ax.set_xticks(range(len(variants)), variants, rotation=45, ha="right", fontsize=7)
            ax.set_title(f"{t}: {m}", fontsize=8)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        fig.tight_layout()
        p = out_dir / f"bars_{dataset}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths
