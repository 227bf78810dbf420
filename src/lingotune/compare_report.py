"""The statistics and report of a compare grid: tables (markdown + CSV), plots, significance test.

Reads the grid directory only: each cell's results.json, whose task results carry their declared
metrics (`result["metrics"]`, see `lingotune.eval.declared`), and the per-example JSONL. Tables
show every declared metric; the significance test and the bar plots use each task's primary one,
and whether a delta is an improvement follows its `higher_is_better`.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from lingotune.eval.declared import arrow, result_metrics
from lingotune import files, plots
from lingotune.files import atomic_write_text
from lingotune.recipe import Recipe
from lingotune.report import cell_text
from lingotune.stats import paired_permutation, paired_t_pvalue, t_interval

UNTOUCHED = "untouched"
INSTRUCT = "instruct"  # the instruct model a grid's LEP cells propagate into, evaluated once per dataset
POOLED = "all tasks"  # "all tasks/<result name>": the mean over tasks (tables), the pooled test (significance)


def load_cells(out_dir: Path) -> list[dict]:
    """The complete cells of a grid: results.json plus _dataset, _dir and _variant."""
    cells = []
    for p in sorted(out_dir.glob("*/*/results.json")):
        r = json.loads(p.read_text())
        if r.get("complete"):
            r["_dataset"] = p.parent.parent.name
            r["_dir"] = str(p.parent)
            r["_variant"] = r.get("variant", r.get("method"))
            cells.append(r)
            cells += stage_cells(r)
    return cells


def stage_cells(cell: dict) -> list[dict]:
    """A cell's evaluations after an earlier stage (`eval.every_stage`, labels '<variant>-<stage>') as cells of
    their own, so the tables and tests show what each stage moved: the stages up to that one, its evaluation."""
    out, stages = [], list(cell.get("stages") or {})
    for label in cell.get("evals", {}):
        stage = label[len(cell["_variant"]) + 1:] if label.startswith(cell["_variant"] + "-") else None
        if stage in stages:
            kept = {k: cell["stages"][k] for k in stages[:stages.index(stage) + 1]}
            out.append({**cell, "_variant": label, "variant": label, "_parent": cell["_variant"], "stages": kept,
                        "train_seconds": round(sum(v.get("seconds", 0) for v in kept.values()), 2)})
    return out


def task_results(cell: dict) -> dict[str, dict]:
    """The cell's evaluated (not skipped) task results, under its own label."""
    evals = cell["evals"].get(cell["_variant"], {})
    return {t: r for t, r in evals.items() if isinstance(r, dict) and not r.get("skipped")}


def shared_md(cells: list[dict], dataset: str) -> list[str]:
    """One line per cell of `dataset` that took some of its stages from another cell (`compare.SharedStages`)."""
    lines = []
    for c in cells:
        if c["_dataset"] != dataset or "_parent" in c:
            continue
        by: dict[str, list[str]] = {}
        for name, record in c.get("stages", {}).items():
            if record.get("shared_from"):
                by.setdefault(record["shared_from"], []).append(f"`{name}`")
        lines += [f"- `{Path(c['_dir']).name}` took {', '.join(names)} from `{src}` (trained the same way): their "
                  "train seconds are that cell's" for src, names in by.items()]
    return ["", "Stages trained once, shared:", ""] + lines if lines else []


def skipped_md(cells: list[dict], dataset: str) -> list[str]:
    """One line per task skipped in some cell of `dataset`: the variants and each whole reason (never cut)."""
    reasons: dict[str, dict[str, list[str]]] = {}
    for c in cells:
        if c["_dataset"] != dataset:
            continue
        for label, tasks in c["evals"].items():
            for task, r in (tasks or {}).items():
                if isinstance(r, dict) and r.get("skipped"):
                    who = reasons.setdefault(task, {}).setdefault(" ".join(str(r["skipped"]).split()), [])
                    if label not in who:
                        who.append(label)
    lines = [f"- `{task}` ({', '.join(who)}): {why}" for task, by in reasons.items() for why, who in by.items()]
    return ["", "Skipped tasks:", ""] + lines if lines else []


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _value(cell: dict, task: str, key: str) -> float | None:
    return _number(task_results(cell).get(task, {}).get(key))


def _per_example(cell: dict, task: str, info: dict) -> dict:
    """(example id) -> 1/0 from the cell's per-example JSONL: the metric's correctness field at its shots."""
    path = Path(cell["_dir"]) / "eval" / cell["_variant"] / f"{task}.jsonl"
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if info["per_example"] in rec and rec.get("shots", 0) == info["shots"]:
                out[rec["id"]] = 1.0 if rec[info["per_example"]] else 0.0
    return out


# ----------------------------------------------------------------------------- tables


def collect(cells: list[dict]) -> tuple[dict, dict]:
    """values: dataset -> variant -> task -> result name -> {seed: value};
    meta: dataset -> task -> result name -> declaration (declared order)."""
    values: dict = {}
    meta: dict = {}
    for c in cells:
        d, v = c["_dataset"], c["_variant"]
        for task, res in task_results(c).items():
            for key, info in result_metrics(res).items():
                x = _number(res.get(key))
                if x is not None:
                    values.setdefault(d, {}).setdefault(v, {}).setdefault(task, {}).setdefault(key, {})[c["seed"]] = x
                    meta.setdefault(d, {}).setdefault(task, {}).setdefault(key, info)
    return values, meta


def _stat(vals: list[float]) -> tuple:
    mean, half = t_interval(vals)
    return round(mean, 3), round(half, 3), len(vals)


def _means(by_task: dict, meta: dict) -> dict:
    """'all tasks/<name>': per seed, the mean over the tasks whose primary metric has that result name (2+ tasks)."""
    groups: dict = {}
    for t, keys in by_task.items():
        for key, seeds in keys.items():
            if meta[t][key]["primary"]:
                groups.setdefault(key, []).append(seeds)
    out = {}
    for key, per_task in groups.items():
        common = sorted(set.intersection(*(set(s) for s in per_task)))
        if len(per_task) > 1 and common:
            out[f"{POOLED}/{key}"] = _stat([sum(s[seed] for s in per_task) / len(per_task) for seed in common])
    return out


def _rows(d: str, by_variant: dict, meta: dict, variants: list[str], times: dict, params: dict) -> list[dict]:
    rows = []
    for v in variants:
        row: dict = {"dataset": d, "method": v}
        for t, keys in by_variant[v].items():
            row.update({f"{t}/{key}": _stat(list(seeds.values())) for key, seeds in keys.items()})
        row.update(_means(by_variant[v], meta))
        tm = times.get(v)
        row["train seconds"] = (round(sum(tm) / len(tm), 1), 0.0, 1) if tm else None
        row["trainable params"] = (sum(params.get(v, {}).values()), 0.0, 1)
        rows.append(row)
    return rows


def _columns(rows: list[dict], meta: dict) -> list[str]:
    """Task columns (tasks sorted, metrics in declared order), then means, time and parameters."""
    present = {k for r in rows for k in r}
    cols = [f"{t}/{key}" for t in sorted(meta) for key in meta[t] if f"{t}/{key}" in present]
    cols += sorted(k for k in present if k.startswith(f"{POOLED}/"))
    return cols + ["train seconds", "trainable params"]


def _col_arrow(col: str, meta: dict) -> str:
    task, _, key = col.partition("/")
    info = meta.get(task, {}).get(key) or next((m[key] for m in meta.values() if key in m), None)
    return f"{col} {arrow(info)}" if info else col


def _cell_text(v) -> str:
    if v is None:
        return "–"
    mean, half, n = v
    if isinstance(mean, int) or float(mean).is_integer() and half == 0 and mean > 1000:
        return f"{int(mean):,}"
    return f"{mean:.2f}" + (f" ± {half:.2f}" if n > 1 else "")


def md_table(rows: list[dict], cols: list[str], meta: dict) -> list[str]:
    out = ["| method | seeds | " + " | ".join(_col_arrow(c, meta) for c in cols) + " |",
           "|---|---|" + "---|" * len(cols)]
    for r in rows:
        seeds = ",".join(map(str, r.get("seeds", [])))
        out.append(f"| {r['method']} | {seeds} | " + " | ".join(_cell_text(r.get(c)) for c in cols) + " |")
    return out


def write_csv(path: Path, rows: list[dict], cols: list[str]) -> None:
    f = io.StringIO(newline="")
    w = csv.writer(f)
    w.writerow(["dataset", "method", "seeds"] + [x for c in cols for x in (c, c + " ci95", c + " n")])
    for r in rows:
        vals = []
        for c in cols:
            v = r.get(c)
            vals += list(v) if v else ["", "", ""]
        w.writerow([r["dataset"], r["method"], " ".join(map(str, r.get("seeds", [])))] + vals)
    atomic_write_text(path, f.getvalue())


# ----------------------------------------------------------------------------- significance


def _row(per_seed: list[float], pairs: int, p: float, test: str) -> dict:
    """`p`: the row's own test; `p_seeds`: a paired t-test over the seeds' deltas, the test of a claim about the
    method (training randomness included), which the permutation over (seed, example) pairs is not."""
    mean, half = t_interval(per_seed)
    return {"delta": mean, "ci": [mean - half, mean + half], "pairs": pairs, "p": p, "test": test,
            "p_seeds": paired_t_pvalue(per_seed, [0.0] * len(per_seed)), "seeds": len(per_seed)}


def _example_diffs(by: dict, seeds: list, cand: str, base: str, task: str, info: dict) -> dict:
    """seed -> candidate − baseline correctness per example both answered."""
    out = {}
    for s in seeds:
        a, b = _per_example(by[(cand, s)], task, info), _per_example(by[(base, s)], task, info)
        common = sorted(set(a) & set(b), key=str)
        if common:
            out[s] = [a[i] - b[i] for i in common]
    return out


def _example_row(diffs: dict) -> dict | None:
    """Delta in points (mean over seeds, t-interval) with a sign-flip permutation p over (seed, example) pairs."""
    if not diffs:
        return None
    flat = [x for d in diffs.values() for x in d]
    return _row([100 * sum(d) / len(d) for d in diffs.values()], len(flat), paired_permutation(flat), "permutation")


def _seed_row(by: dict, seeds: list, cand: str, base: str, task: str, key: str) -> dict | None:
    """Delta per seed (t-interval) with a paired t-test over seeds."""
    a = [_value(by[(cand, s)], task, key) for s in seeds]
    b = [_value(by[(base, s)], task, key) for s in seeds]
    if any(x is None for x in a + b):
        return None
    return _row([x - y for x, y in zip(a, b)], len(a), paired_t_pvalue(a, b), "t")


def significance(cells: list[dict], dataset: str, cand: str, base: str) -> dict:
    """Candidate − baseline on each task's primary metric and those it declares `compare: true`, keyed
    'task/result name'.

    Metrics scored per example (accuracy: `correct`, `correct_ll`) are paired by seed and example,
    and pooled over tasks as 'all tasks/<name>'; the others (F1, chrF++, bits per char) by seed.
    `better` names the method the metric's direction favours (None for no difference).
    """
    by = {(c["_variant"], c["seed"]): c for c in cells if c["_dataset"] == dataset}
    seeds = sorted({s for (v, s) in by if v == cand} & {s for (v, s) in by if v == base})
    if not seeds:
        return {}
    first = task_results(by[(cand, seeds[0])])
    out, pooled, infos = {}, {}, {}
    for t in sorted(first):
        for key, info in result_metrics(first[t]).items():
            if not (info["primary"] or info.get("compare")):
                continue
            if info.get("per_example"):
                diffs = _example_diffs(by, seeds, cand, base, t, info)
                row = _example_row(diffs)
                pooled.setdefault(key, []).append(diffs)
                infos[key] = info
            else:
                row = _seed_row(by, seeds, cand, base, t, key)
            if row:
                out[f"{t}/{key}"] = _direction(row, info, cand, base)
    for key, parts in pooled.items():
        merged: dict = {}
        for diffs in parts:
            for s, d in diffs.items():
                merged.setdefault(s, []).extend(d)
        if sum(1 for p in parts if p) > 1:
            out[f"{POOLED}/{key}"] = _direction(_example_row(merged), infos[key], cand, base)
    return out


def _direction(row: dict, info: dict, cand: str, base: str) -> dict:
    hib = info["higher_is_better"]
    better = None if row["delta"] == 0 else cand if (row["delta"] > 0) == hib else base
    return {**row, "higher_is_better": hib, "better": better}


def significance_md(sig: dict, cand: str, base: str) -> list[str]:
    how = ("Delta = candidate − baseline on each task's primary metric and those it declares `compare: true` (↑ "
           "higher is better, ↓ lower is better), "
           "mean over seeds with its 95% t-interval. Metrics scored per example (accuracy): delta in points, p from "
           "a paired sign-flip permutation test over (seed, example) pairs: it takes every seed's examples as "
           "independent pairs, so it tests these trained models, not the method. Corpus-level metrics (F1, chrF++, "
           "bits per char): p from a paired t-test over seeds. *p over seeds*, for every row: a paired t-test of the "
           "seeds' deltas, the test a claim about the method needs (1 for a single seed). *better* is the method the "
           "metric's direction favours.")
    lines = ["", f"### {cand} vs {base}", "", how, "",
             "| task | metric | delta | 95% CI | pairs (examples or seeds) | p | p over seeds (n) | better |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in sig.items():
        task, _, key = name.partition("/")
        lines.append(f"| {task} | {key} {arrow(s)} | {s['delta']:+.2f} | [{s['ci'][0]:+.2f}, {s['ci'][1]:+.2f}] | "
                     f"{s['pairs']} | {s['p']:.3f} | {s['p_seeds']:.3f} ({s['seeds']}) | {s['better'] or '–'} |")
    return lines


# ----------------------------------------------------------------------------- the report


def _costs(cells: list[dict]) -> tuple[dict, dict]:
    """params: variant -> stage -> trainable parameters; times: dataset -> variant -> [train seconds]."""
    params: dict = {}
    times: dict = {}
    for c in cells:
        if c["stages"]:
            v = c["_variant"]
            params[v] = {name: s["trainable_params"] for name, s in c["stages"].items()}
            times.setdefault(c["_dataset"], {}).setdefault(v, []).append(c.get("train_seconds", 0))
    return params, times


def _params_md(order: list[str], params: dict) -> list[str]:
    lines = ["", "## Trainable parameters (Table 6 shape)", "", "| method | stages | total |", "|---|---|---|"]
    for v in order:
        if v in params:
            lines.append(f"| {v} | " + ", ".join(f"{k}: {n:,}" for k, n in params[v].items()) + f" | {sum(params[v].values()):,} |")
    return lines


def _pct(v: float | None, ci) -> str:
    return "–" if v is None else f"{v:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")


def judge_md(judged: dict, order: list[str]) -> list[str]:
    """The win-rate table of one dataset (`compare.judge`), and every variant's target-language share."""
    j, against = judged["judge"], judged["against"]
    lines = ["", f"### Pairwise win rate against `{against}` and target-language share", "",
             f"Judge: {j['kind']}" + (f" (chrF++ against the reference, script check, tie margin {j['tie_margin']:g}"
                                      + (f", runs of {j['echo_run']}+ words echoed from the prompt not scored"
                                         if j.get("echo_run") else "") + ")"
                                      if j["kind"] == "reference" else "") +
             f"; {judged['prompts']} prompts, each pair judged in both orders (disagreeing orders count as a tie); "
             "n = prompts x seeds; 95% Wilson intervals. Share = answers with at least half of their letters in the "
             "target script.", "",
             "| variant | n | win % | tie % | loss % | inconsistent | target-language share % (n) |", "|---|---|---|---|---|---|---|"]
    for v in [v for v in order if v in judged["share"]]:
        sh = judged["share"][v]
        share = f"{_pct(sh['share'], sh['ci'])} ({sh['n']})"
        r = judged["variants"].get(v)
        if r is None:
            lines.append(f"| {v} (reference side) | | | | | | {share} |")
            continue
        lines.append(f"| {v} | {r['n']} | {_pct(r['win_rate'], r['ci']['win_rate'])} | {_pct(r['tie_rate'], r['ci']['tie_rate'])} "
                     f"| {_pct(r['loss_rate'], r['ci']['loss_rate'])} | {r['inconsistent']} | {share} |")
    return lines


def parts_md(parts: list[dict]) -> list[str]:
    """How the grid was run: one line per invocation (`compare._parts`)."""
    lines = ["", "## How this grid was run", "",
             "| part | started | cells run | wall time | commit | machine | command |", "|---|---|---|---|---|---|---|"]
    for i, p in enumerate(parts, 1):
        env = p.get("environment") or {}
        wall = f"{p['wall_seconds'] / 60:.1f} min" if p.get("wall_seconds") is not None else "–"
        machine = ", ".join(str(x) for x in (env.get("cpu"), env.get("gpu") and f"GPU {env['gpu']}",
                                              env.get("cpus") and f"{env['cpus']} CPUs") if x)
        cells = ", ".join(p.get("cells_run", [])) or ("–" if "cells_run" in p else p.get("note", "–"))
        lines.append(f"| {i} | {p.get('started', '–')} | {cell_text(cells)} | {wall} | {env.get('commit') or '–'} | "
                     f"{cell_text(machine) or '–'} | {cell_text('`' + env['command'] + '`') if env.get('command') else '–'} |")
    return lines


def summarize(out_dir: Path, recipe: Recipe, parts: list[dict] = ()) -> dict:
    """Write report.md, table_<dataset>.csv and the plots of a grid; return the summary (tables, significance).
    `parts`: the grid's invocations so far, listed at the end of the report."""
    cells = load_cells(out_dir)
    cmp = recipe.compare
    after = {}  # variant -> its evaluations after earlier stages (stage_cells), in stage order
    for c in cells:
        if "_parent" in c and c["_variant"] not in after.get(c["_parent"], []):
            after.setdefault(c["_parent"], []).append(c["_variant"])
    # every finished cell of the grid, not only this invocation's --methods/--seeds: its methods first
    found = list(dict.fromkeys(c["_variant"] for c in cells if "_parent" not in c))
    methods = list(cmp.methods) + [v for v in found if v not in cmp.methods and v not in (UNTOUCHED, INSTRUCT)]
    order = [UNTOUCHED, INSTRUCT] + [v for m in methods for v in after.get(m, []) + [m]]
    seeds = sorted({c["seed"] for c in cells if c["_variant"] not in (UNTOUCHED, INSTRUCT)})
    values, meta = collect(cells)
    params, times = _costs(cells)
    summary: dict = {"datasets": {}, "params": params, "significance": {}}
    lines = ["# lingotune compare", "",
             (f"Model `{recipe.model.source}`, language `{recipe.language}`, every finished cell of the grid (seeds "
              f"{seeds}; each method's own in the `seeds` column). Cells are mean over seeds ± half-width of the 95% "
              "t-interval over seeds; ↑ higher is better, ↓ lower is better.")]
    for d, by_variant in values.items():
        variants = [v for v in order if v in by_variant]
        rows = _rows(d, by_variant, meta[d], variants, times.get(d, {}), params)
        for r in rows:
            r["seeds"] = sorted({c["seed"] for c in cells if c["_dataset"] == d and c["_variant"] == r["method"]})
        cols = _columns(rows, meta[d])
        summary["datasets"][d] = rows
        write_csv(out_dir / f"table_{d}.csv", rows, cols)
        lines += ["", f"## Dataset `{d}`", ""] + md_table(rows, cols, meta[d]) + shared_md(cells, d) + skipped_md(cells, d)
        sig = summary["significance"][d] = significance(cells, d, cmp.candidate, cmp.baseline)
        if sig:
            lines += significance_md(sig, cmp.candidate, cmp.baseline)
        for cand, base in cmp.also:  # more pairs: the same tests, each its own table
            sig = significance(cells, d, cand, base)
            summary.setdefault("significance_also", {}).setdefault(f"{cand} vs {base}", {})[d] = sig
            if sig:
                lines += significance_md(sig, cand, base)
        judged = files.read_json(out_dir / d / "judge.json")
        if judged:
            summary.setdefault("judge", {})[d] = judged
            lines += judge_md(judged, variants)
        plots = plot(out_dir, d, by_variant, meta[d], variants, cells)
        lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    lines += _params_md(order, params)
    if parts:
        lines += parts_md(list(parts))
    atomic_write_text(out_dir / "report.md", "\n".join(lines) + "\n")
    return summary


# ----------------------------------------------------------------------------- plots


def _loss_plot(path: Path, dataset: str, variants: list[str], cells: list[dict]) -> None:
    """Training-loss curves per method and seed (stages concatenated)."""
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for v in variants:
        for c in cells:
            if c["_dataset"] != dataset or c["_variant"] != v or not c["stages"] or "_parent" in c:
                continue  # a stage row shares its cell's log: the cell draws it once
            xs, ys, offset = [], [], 0
            for steps, losses in plots.read_losses(Path(c["_dir"]) / "metrics.jsonl").values():
                xs += [offset + s for s in steps]
                ys += losses
                offset = xs[-1]
            if xs:
                ax.plot(xs, ys, label=f"{v} s{c['seed']}", alpha=0.7)
    ax.set_xlabel("step (stages concatenated)")
    ax.set_ylabel("training loss")
    if ax.lines:
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    plots.save(fig, path)


def _bar_plot(path: Path, panels: list, by_variant: dict, variants: list[str]) -> None:
    """Bars with 95% t-intervals per method, one panel per (task, result name, declaration)."""
    grid = []
    for t, key, info in panels:
        stats = [t_interval(list(vals.values())) if (vals := by_variant[v].get(t, {}).get(key)) else (0.0, 0.0)
                 for v in variants]
        grid.append((f"{t}: {key} {arrow(info)}", variants, [m for m, _ in stats], [(h, h) for _, h in stats]))
    plots.bar_grid(path, grid)


def plot(out_dir: Path, dataset: str, by_variant: dict, meta: dict, variants: list[str], cells: list[dict]) -> list[Path]:
    """loss_<dataset>.png, and bars_<dataset>.png of each task's primary metric (when any); the paths written."""
    paths = [out_dir / f"loss_{dataset}.png"]
    _loss_plot(paths[0], dataset, variants, cells)
    panels = [(t, key, info) for t in sorted(meta) for key, info in meta[t].items() if info["primary"]]
    if panels:
        paths.append(out_dir / f"bars_{dataset}.png")
        _bar_plot(paths[1], panels, by_variant, variants)
    return paths
