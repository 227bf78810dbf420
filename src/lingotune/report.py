"""results.json -> report.md: the tables a reader of the paper expects, and sample answers.

The evaluation table shows each task's declared metrics (`result["metrics"]`, lingotune.eval.declared).
"""

from __future__ import annotations

import json
from pathlib import Path

from lingotune.eval.declared import arrow, result_metrics


def _fmt(v, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _millions(n) -> str:
    return "–" if n is None else f"{n / 1e6:.3f}M"


def cell_text(text) -> str:
    """Text for one Markdown table cell, whole: newlines become spaces and '|' is escaped (never cut)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _metric_label(key: str, info: dict) -> str:
    """`accuracy_ll ↑`, the task's primary metric in bold."""
    return (f"**{key}**" if info.get("primary") else key) + f" {arrow(info)}"


def eval_table(evals: dict) -> list[str]:
    """One row per (task, declared metric), one column per evaluated model."""
    labels = list(evals)
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for label, tasks in evals.items():
        for task, res in (tasks or {}).items():
            if not isinstance(res, dict):
                continue
            if res.get("skipped"):
                rows.setdefault((task, "skipped"), {})[label] = cell_text(res["skipped"])
                continue
            ci = res.get("ci") or {}
            for metric, info in result_metrics(res).items():
                value = res.get(metric)
                if not isinstance(value, (int, float)):
                    continue
                cell = _fmt(value)
                if ci.get(metric):
                    lo, hi = ci[metric]
                    cell += f" [{_fmt(lo)}, {_fmt(hi)}]"
                rows.setdefault((task, _metric_label(metric, info)), {})[label] = cell
            rows.setdefault((task, "n / seconds"), {})[label] = f"{res.get('n', '–')} / {_fmt(res.get('seconds'), 1)}"
    lines = ["| task | metric | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for (task, metric), cells in rows.items():
        lines.append(f"| {task} | {metric} | " + " | ".join(cells.get(l, "–") for l in labels) + " |")
    return lines


def _spans_zero(ci) -> bool:
    return not ci or ci[0] <= 0 <= ci[1]


def transfer_lines(evals: dict) -> list[str]:
    """The probe and the alignment diagnostic in words: what each later model moved against the untouched one,
    and whether the geometry moved while transfer did not; an alignment table per layer."""
    out: list[str] = []
    first = evals.get("untouched") or {}
    for task, res in first.items():
        if isinstance(res, dict) and "n_known" in res:
            out.append(f"- `{task}`: the untouched model answers {res['n_known']} of {res.get('n')} items correctly in "
                       f"English; transfer is scored on those items (transfer_gain: paired, item by item, in points).")
    for label, tasks in evals.items():
        if label == "untouched" or not tasks:
            continue
        gains = {t: r for t, r in tasks.items() if isinstance(r, dict) and "transfer_gain" in r}
        moves = {t: r for t, r in tasks.items() if isinstance(r, dict) and "cos_dist_change" in r}
        for t, r in gains.items():
            ci = (r.get("ci") or {}).get("transfer_gain")
            if not r.get("n_known"):
                out.append(f"- *{label}*, `{t}`: no item known in English, so no transfer to measure.")
                continue
            verdict = ("no interval (too few items)" if not ci else "its interval spans 0: no measured change"
                       if _spans_zero(ci) else "its interval excludes 0")
            interval = f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else ""
            out.append(f"- *{label}*, `{t}`: transfer {_fmt(r.get('transfer'))} % of {r['n_known']} known items, gain "
                       f"{_fmt(r['transfer_gain'])} points{interval}: {verdict}.")
        for t, r in moves.items():
            ci = (r.get("ci") or {}).get("cos_dist_change")
            still = all(_spans_zero((g.get("ci") or {}).get("transfer_gain")) for g in gains.values())
            if not _spans_zero(ci) and gains and still:
                out.append(f"- *{label}*: the geometry moved (`{t}` cosine distance to the English twins changed by "
                           f"{r['cos_dist_change']:+.4f} [{_fmt(ci[0], 4)}, {_fmt(ci[1], 4)}]) while transfer did not.")
    for task, res in first.items():
        if not (isinstance(res, dict) and isinstance(res.get("layers"), dict)):
            continue
        labels = [lb for lb in evals if isinstance((evals[lb] or {}).get(task), dict) and "layers" in evals[lb][task]]
        out += ["", f"`{task}` per layer (layer 0 = embeddings): cosine distance to the English twin / margin over "
                "mismatched pairs.", "", "| layer | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        for i in range(len(res["layers"]["cos_dist"])):
            cells = [f"{evals[lb][task]['layers']['cos_dist'][i]:.4f} / {evals[lb][task]['layers']['cos_margin'][i]:+.4f}"
                     for lb in labels]
            out.append(f"| {i} | " + " | ".join(cells) + " |")
    return out


def stages_table(stages: dict) -> list[str]:
    """One row per trained stage: what trained, on which data, how long, the losses."""
    lines = ["| stage | trains | data | examples | steps | trainable params | total params | seconds | tokens | first loss "
             "| final loss |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in stages.items():
        lines.append(
            f"| {name} | {s.get('trains', '')} | {'+'.join(s.get('data', []))} | {s.get('examples')} | {s.get('steps')} | "
            f"{_millions(s.get('trainable_params'))} | {_millions(s.get('total_params'))} | {_fmt(s.get('seconds'), 1)} | "
            f"{s.get('tokens')} | {_fmt(s.get('first_loss'), 3)} | {_fmt(s.get('final_loss'), 3)} |"
        )
    return lines


EVAL_NOTE = ("Each task's declared metrics (↑ higher is better, ↓ lower is better; the primary one in bold). "
             "Accuracy, rate and F1 in %, with bootstrap 95% confidence intervals in brackets where computed.")


def render(results: dict) -> str:
    out = [f"# lingotune run: {results.get('recipe', '')}", ""]
    out.append(
        f"Model `{results.get('model')}`, target language `{results.get('language')}`, method `{results.get('method')}`, "
        f"seed {results.get('seed')}, loss on `{results.get('loss_on')}`, tied embeddings handled as `{results.get('tie')}`."
    )
    out += ["", "## Training", ""] + stages_table(results.get("stages", {}))
    if results.get("evals"):
        out += ["", "## Evaluation", "", EVAL_NOTE, ""]
        out += eval_table(results["evals"])
        probe = transfer_lines(results["evals"])
        if probe:
            out += ["", "## Knowledge transfer and alignment", ""] + probe
    samples = results.get("samples") or []
    if samples:
        labels = [k for k in samples[0] if k != "prompt"]
        out += ["", "## Sample answers", ""]
        for s in samples:
            out.append(f"**Prompt:** {s['prompt']}")
            out.append("")
            for label in labels:
                answer = (s.get(label) or "").replace("\n", " ")
                out.append(f"- *{label}*: {answer}")
            out.append("")
    out += ["", "## Run", "", f"Wall time {_fmt(results.get('wall_seconds'), 1)} s, of which training "
            f"{_fmt(results.get('train_seconds'), 1)} s; model load {_fmt(results.get('model_load_seconds'), 1)} s.",
            f"Environment: `{json.dumps(results.get('environment', {}))}`", ""]
    return "\n".join(out)


def write_report(run_dir: Path) -> Path:
    results = json.loads((run_dir / "results.json").read_text())
    from lingotune.files import atomic_write_text

    return atomic_write_text(run_dir / "report.md", render(results))
