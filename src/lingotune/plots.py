"""The figures of the reports (report.py, compare_report.py): matplotlib on its Agg backend (no display),
each PNG written atomically (`files.atomic_write_bytes`).

- `read_losses`: a run directory's metrics.jsonl (train.py's per-step log) as stage -> (steps, losses).
- `loss_curve`: one stage's training loss, each step and a moving average.
- `bar_grid`: bars with error bars, one panel per (task, metric).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from lingotune.files import atomic_write_bytes


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    """The figure as a PNG at `path` (atomically), then closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    pyplot().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def read_losses(log: Path) -> dict[str, tuple[list[int], list[float]]]:
    """stage -> (steps, losses) from a metrics log, stages in the order they first appear; {} when the log is
    absent. A line that is not a JSON step record (a torn last line) is skipped."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    if not Path(log).exists():
        return out
    for line in Path(log).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("loss"), (int, float)) and "step" in rec:
            steps, losses = out.setdefault(str(rec.get("stage")), ([], []))
            steps.append(rec["step"])
            losses.append(float(rec["loss"]))
    return out


def moving_average(values: list[float], window: int) -> list[float]:
    """The mean of each value and up to `window - 1` before it."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def loss_curve(path: Path, steps: list[int], losses: list[float], title: str) -> Path:
    """One stage's training loss per step, with its moving average over a tenth of the steps (from 5 steps)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 2.9))
    window = max(1, len(steps) // 10)
    ax.plot(steps, losses, color="tab:blue", alpha=0.35 if window >= 2 else 1.0, marker="o" if len(steps) < 30 else None,
            markersize=3, label="loss per step")
    if window >= 2:
        ax.plot(steps, moving_average(losses, window), color="tab:blue", label=f"mean of {window} steps")
        ax.legend(fontsize=8)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save(fig, path)


def bar_grid(path: Path, panels: list[tuple[str, list[str], list[float | None], list[tuple[float, float]]]]) -> Path:
    """Bars with error bars, one panel per (title, bar labels, values, (below, above) error lengths); a None
    value leaves its bar out. The bar colours follow the label's position, the same in every panel."""
    plt = pyplot()
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.9 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, labels, values, errors) in zip(axes.flat, panels):
        xs = range(len(labels))
        ax.bar(xs, [v or 0.0 for v in values], yerr=[[e[0] for e in errors], [e[1] for e in errors]], capsize=3,
               color=[colours[i % len(colours)] if v is not None else "none" for i, v in enumerate(values)])
        known = [(v, e) for v, e in zip(values, errors) if v is not None]
        if all(v - e[0] >= 0 for v, e in known):  # a scale from 0, and a visible one when every value is 0
            ax.set_ylim(0, max([v + e[1] for v, e in known] + [0.0]) * 1.1 or 1.0)
        ticks = [f"{label}\n{'–' if v is None else f'{v:.2f}'}" for label, v in zip(labels, values)]  # the value under its bar
        ax.set_xticks(xs, ticks, rotation=30 if len(labels) > 2 else 0, ha="right" if len(labels) > 2 else "center",
                      fontsize=7)
        ax.set_title(title, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return save(fig, path)
