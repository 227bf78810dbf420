"""Issue 15's per-cell table for docs/results.md, read from a grid's folder or its record (no model, no torch):

    python benchmarks/grid_table.py docs/results/grid_ru2

One row per evaluated model (each cell's final model, and its evaluations after earlier stages), with each
task's score (Russian and Arabic grids alike: the FLORES and probe columns follow the grid's language; columns no
cell has are left out) and its 95 % bootstrap interval as the cell's results.json has them, the probe's transfer as k of
the known n, the training loss means per 20 steps of each stage, and the cell's seconds. The seed-level
comparison (t-intervals, paired tests) is the grid's own report.md; this prints what each cell measured.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = [  # (header, task, metric, digits); {lang}/{LANG}: the grid's language (columns no cell has are left out)
    ("DaNetQA ll", "danetqa", "accuracy_ll", 1), ("TERRa ll", "terra", "accuracy_ll", 1),
    ("IDAT ll", "idat_dev", "accuracy_ll", 1), ("MQ2Q ll", "mq2q_dev", "accuracy_ll", 1),
    ("chrF++ en→{lang}", "flores_{lang}_from_en", "chrf++", 2), ("bits/char", "flores_{lang}_bpc", "bits_per_char", 3),
    ("probe EN", "transfer_facts", "accuracy_en", 1), ("align Δcos", "align_facts", "cos_dist_change", 4),
    ("ll probe EN", "transfer_facts_ll", "accuracy_en", 1), ("ll probe {LANG}", "transfer_facts_ll", "accuracy", 1),
    ("ll transfer", "transfer_facts_ll", "transfer", 1), ("ll transfer_gain", "transfer_facts_ll", "transfer_gain", 1),
    ("ll gain_other", "transfer_facts_ll", "gain_other", 1), ("ll transfer_excess", "transfer_facts_ll", "transfer_excess", 1),
]


def _fmt(res: dict | None, metric: str, digits: int) -> str:
    if not res or res.get("skipped") or res.get(metric) is None:
        return "–"
    lo_hi = (res.get("ci") or {}).get(metric)
    text = f"{res[metric]:.{digits}f}"
    return text + (f" [{lo_hi[0]:.{digits}f}, {lo_hi[1]:.{digits}f}]" if lo_hi and lo_hi[0] != lo_hi[1] else "")


def _transfer(res: dict | None) -> str:
    if not res or res.get("skipped"):
        return "–"
    k = round(res["transfer"] * res["n_known"] / 100) if res.get("n_known") else 0
    return f"{k} of {res.get('n_known', 0)}"


def _loss_means(cell: Path, every: int = 20) -> str:
    path = cell / "metrics.jsonl"
    if not path.exists():
        return "–"
    by_stage: dict = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if "loss" in r and "step" in r:
            by_stage.setdefault(r.get("stage", "train"), {})[r["step"]] = r["loss"]  # a resumed step once
    out = []
    for stage, losses in by_stage.items():
        steps = sorted(losses)
        means = [sum(losses[s] for s in steps[i:i + every]) / len(steps[i:i + every]) for i in range(0, len(steps), every)]
        out.append(f"{stage}: " + ", ".join(f"{m:.2f}" for m in means))
    return "; ".join(out)


def rows(grid: Path) -> tuple[list[str], list[list[str]]]:
    """(header, rows); a column no cell of the grid has is left out."""
    out = []
    cells = [(path, json.loads(path.read_text())) for path in sorted(grid.glob("*/*/results.json"))]
    cells = [(path, res) for path, res in cells if res.get("complete")]
    langs = {res.get("language") for _, res in cells}
    if len(langs) > 1:
        raise SystemExit(f"{grid}: cells of more than one language ({', '.join(sorted(map(str, langs)))})")
    lang = langs.pop() if langs else "ru"
    columns = [(h.format(lang=lang, LANG=lang.upper()), task.format(lang=lang), m, d) for h, task, m, d in COLUMNS]
    for path, res in cells:
        for label, evals in res.get("evals", {}).items():
            final = label == res.get("variant", res.get("method"))
            out.append([f"{label}" + ("" if res.get("method") == "untouched" else f", seed {res.get('seed')}")]
                       + [_fmt(evals.get(task), metric, d) for _, task, metric, d in columns]
                       + [_transfer(evals.get("transfer_facts")),
                          _loss_means(path.parent) if final else "",
                          f"{res.get('cell_seconds', 0):,.0f}" if final and res.get("cell_seconds") else ""])
    head = ["model"] + [c[0] for c in columns] + ["transfer", "loss per 20 steps", "cell s"]
    if not out:
        return head, out
    keep = [0] + [i for i in range(1, len(head)) if any(r[i] not in ("–", "", "0 of 0") for r in out)]
    return [head[i] for i in keep], [[r[i] for i in keep] for r in out]


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python benchmarks/grid_table.py GRID_OR_RECORD_DIR", file=sys.stderr)
        return 2
    head, body = rows(Path(argv[0]))
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in body:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
