"""results.json -> report.md (and, on request, report.html): the tables a reader of the paper expects, a
loss curve per stage, a before/after chart of the evaluation, and sample answers to held-out prompts.

The evaluation table shows each task's declared metrics (`result["metrics"]`, lingotune.eval.declared).
report.md is the one source of the content: the plots are PNGs next to it (`plots`), referenced by
relative path, and `to_html` renders the same markdown into one self-contained page (the PNGs inlined as
data URIs, its CSS inline, a content security policy that allows no request).
"""

from __future__ import annotations

import base64
import json
import re
from html import escape
from pathlib import Path
from urllib.parse import unquote

from lingotune import plots
from lingotune.errors import RunDirError
from lingotune.eval.declared import arrow, result_metrics
from lingotune.files import atomic_write_text, read_json


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
            n = f"{res.get('n', '–')}" + (f" ({res['n_generated']} generated)" if "n_generated" in res else "")
            rows.setdefault((task, "n / seconds"), {})[label] = f"{n} / {_fmt(res.get('seconds'), 1)}"
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
            if r.get("transfer_excess") is not None and r["transfer_excess"] == r["transfer_excess"]:  # not NaN
                ex = (r.get("ci") or {}).get("transfer_excess")
                ex_words = ("" if not ex else f" [{_fmt(ex[0])}, {_fmt(ex[1])}], "
                            + ("spans 0" if _spans_zero(ex) else "excludes 0"))
                out.append(f"  On the items it did not know in English the gain is {_fmt(r.get('gain_other'))} points; "
                           f"transfer proper (the known items' gain beyond it) {_fmt(r['transfer_excess'])}{ex_words}.")
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


def draw(run_dir: Path, results: dict) -> tuple[dict[str, str], dict[str, str]]:
    """Draw the report's plots next to report.md: (plot key -> file name, plot key -> why there is none).
    Keys: `loss/<stage>` (that stage's training loss, from metrics.jsonl) and `eval` (each task's primary
    metric per evaluated model, with its confidence interval)."""
    drawn, why = {}, {}
    log = run_dir / "metrics.jsonl"
    losses = plots.read_losses(log)
    for stage, s in (results.get("stages") or {}).items():
        if stage in losses:
            title = f"{stage}: trains {s.get('trains', '?')} on {'+'.join(s.get('data', [])) or '?'}"
            drawn[f"loss/{stage}"] = plots.loss_curve(run_dir / f"report_loss_{stage}.png", *losses[stage], title).name
        else:
            why[f"loss/{stage}"] = (f"metrics.jsonl has no step of {stage}" if log.exists() else
                                    "the run directory has no metrics.jsonl (the training loop's per-step log)")
    for task, series in alignment_series(results.get("evals") or {}).items():
        drawn[f"layers/{task}"] = plots.per_layer(run_dir / f"report_layers_{task}.png", f"{task}: each target question "
                                                  "against its English twin, per layer", series, ("cos_dist", "cos_margin")).name
    panels = eval_panels(results.get("evals") or {})
    if panels:
        drawn["eval"] = plots.bar_grid(run_dir / "report_eval.png", panels).name
    elif results.get("evals"):
        why["eval"] = "no task has a score (each was skipped)"
    return drawn, why


def alignment_series(evals: dict) -> dict[str, dict[str, dict[str, list[float]]]]:
    """task -> model label -> the alignment task's per-layer values (`layers`), for every alignment task."""
    out: dict[str, dict] = {}
    for label, tasks in evals.items():
        for task, res in (tasks or {}).items():
            if isinstance(res, dict) and isinstance(res.get("layers"), dict):
                out.setdefault(task, {})[label] = res["layers"]
    return out


def eval_panels(evals: dict) -> list[tuple]:
    """One bar panel per (task, primary metric): each model's value, with its interval as error bars."""
    labels = list(evals)
    per_task: dict[str, dict] = {}
    for label, tasks in evals.items():
        for task, res in (tasks or {}).items():
            if not isinstance(res, dict) or res.get("skipped"):
                continue
            for metric, info in result_metrics(res).items():
                if info.get("primary") and isinstance(res.get(metric), (int, float)):
                    per_task.setdefault(task, {"metric": metric, "info": info})[label] = (res[metric], (res.get("ci") or {}).get(metric))
    panels = []
    for task, got in per_task.items():
        values, errors = [], []
        for label in labels:
            value, ci = got.get(label, (None, None))
            values.append(value)
            errors.append((max(0.0, value - ci[0]), max(0.0, ci[1] - value)) if value is not None and ci else (0.0, 0.0))
        panels.append((f"{task}: {got['metric']} {arrow(got['info'])}", labels, values, errors))
    return panels


_MD_SPECIAL = re.compile(r"([\\`*\[\]<>#|!~&]|(?<![^\W_])_|_(?![^\W_]))")  # "_" between letters is no emphasis


def md_text(text: str) -> str:
    """Text of a model or a user, escaped so that markdown shows it as it is (no emphasis, links, headings,
    lists or tables made by accident)."""
    out = _MD_SPECIAL.sub(r"\\\1", text)
    return re.sub(r"^(\s*)(?:([-+=])|(\d+)([.)]))", lambda m: f"{m[1]}\\{m[2]}" if m[2] else f"{m[1]}{m[3]}\\{m[4]}", out)


def quote(text: str) -> list[str]:
    """A blockquote of the text's non-blank lines, each kept a line of its own (hard line breaks)."""
    lines = [md_text(line.strip()) for line in text.splitlines() if line.strip()] or [""]
    return ["> " + line + ("\\" if i < len(lines) - 1 else "") for i, line in enumerate(lines)]


def samples_md(samples: list[dict]) -> list[str]:
    labels = list(dict.fromkeys(k for s in samples for k in s if k not in ("prompt", "source")))
    out = ["", "## Sample answers", "", "Each model's greedy answer (48 new tokens at most) to each prompt. " + (
        "The prompts are held out: questions of the run's evaluation tasks (task and example named) that no training "
        "text contains, or the recipe's own `output.samples`." if all("source" in s for s in samples) else
        "A prompt without a source comes from a run made before samples were labelled: such runs took them from "
        "the stage-2 training prompts.")]
    for i, s in enumerate(samples, 1):
        out += ["", f"### {i}. {md_text(s.get('source', 'source not recorded'))}", ""] + quote(s["prompt"]) + [""]
        for label in labels:
            answer = " ".join((s.get(label) or "").split()).rstrip("\ufffd ")  # a character cut by the token budget
            out.append(f"- *{label}*: " + (md_text(answer) if answer else "(empty)"))
    return out


def render(results: dict, drawn: dict[str, str] | None = None, why: dict[str, str] | None = None) -> str:
    """report.md's text; `drawn` and `why` (from `draw`) place the plots, or say why there are none."""
    drawn, why = drawn or {}, why or {}
    out = [f"# lingotune run: {results.get('recipe', '')}", ""]
    out.append(
        f"Model `{results.get('model')}`, target language `{results.get('language')}`, method `{results.get('method')}`, "
        f"seed {results.get('seed')}, loss on `{results.get('loss_on')}`, tied embeddings handled as `{results.get('tie')}`."
    )
    stages = results.get("stages") or {}
    out += ["", "## Training", ""] + stages_table(stages)
    if not stages:
        out += ["", "No stage was trained in this run, so there is no loss curve."]
    curves = [f"![{name}: training loss per step]({drawn[f'loss/{name}']})" for name in stages if f"loss/{name}" in drawn]
    if curves:
        out += ["", " ".join(curves)]  # one paragraph: side by side where the page is wide enough
    out += [line for name in stages if f"loss/{name}" in why for line in ("", f"No loss curve for {name}: {why[f'loss/{name}']}.")]
    if results.get("evals"):
        out += ["", "## Evaluation", "", EVAL_NOTE, ""]
        out += eval_table(results["evals"])
        if "eval" in drawn:
            out += ["", "Each task's primary metric per model; the error bars are the 95% confidence intervals above "
                    "(none drawn where none was computed).", "", f"![Evaluation before and after]({drawn['eval']})"]
        elif "eval" in why:
            out += ["", f"No evaluation chart: {why['eval']}."]
        probe = transfer_lines(results["evals"])
        layers = [f"![{k.split('/', 1)[1]} per layer]({v})" for k, v in drawn.items() if k.startswith("layers/")]
        if probe or layers:
            out += ["", "## Knowledge transfer and alignment", ""] + probe + (["", " ".join(layers)] if layers else [])
    samples = results.get("samples") or []
    if samples and any(k not in ("prompt", "source") for k in samples[0]):
        out += samples_md(samples)
    out += ["", "## Run", "", f"Wall time {_fmt(results.get('wall_seconds'), 1)} s, of which training "
            f"{_fmt(results.get('train_seconds'), 1)} s; model load {_fmt(results.get('model_load_seconds'), 1)} s.",
            f"Environment: `{json.dumps(results.get('environment', {}))}`", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- HTML

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif;color:#1d1d1f;background:#fff;margin:0}
main{max-width:1120px;margin:0 auto;padding:24px 32px 48px}
h1{font-size:26px;margin:0 0 8px}h2{font-size:20px;margin:32px 0 8px;padding-bottom:4px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:20px 0 6px;color:#444}
table{border-collapse:collapse;font-size:13px;display:block;overflow-x:auto;max-width:100%;margin:8px 0}
th,td{border:1px solid #d8d8d8;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f4f6}tbody tr:nth-child(even){background:#fafafa}
img{max-width:100%;height:auto;display:inline-block;vertical-align:top;margin:8px 12px 8px 0;border:1px solid #eee}
blockquote{margin:6px 0;padding:6px 12px;border-left:4px solid #9db4d6;background:#f5f8fc;color:#222}
blockquote p{margin:0}
code{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#f3f4f6;padding:1px 4px;
white-space:pre-wrap;word-break:break-word}
ul{margin:6px 0;padding-left:22px}
"""
POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def to_html(markdown: str, run_dir: Path) -> str:
    """report.md as one self-contained page: the plots it references (PNG files in `run_dir`, any plain file
    name: plots are named after tasks and stages, e.g. `report_layers_align+ru=2.png`) inlined as data URIs; any
    other image (a path, a URL) left out, its alt text kept; no raw HTML, links or requests."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table").disable(["link", "autolink"])
    tokens = md.parse(markdown)
    for tok in tokens:
        for i, child in enumerate(tok.children or []):
            if child.type != "image":
                continue
            name = unquote(str(child.attrGet("src") or ""))  # markdown-it percent-encodes what a URL cannot hold
            path = run_dir / name  # only a plain file name: no separator, so no '..' step out of the run directory
            if name.endswith(".png") and "/" not in name and "\\" not in name and path.is_file():
                child.attrSet("src", "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii"))
            else:
                tok.children[i] = type(child)("text", "", 0, content=child.content)
    title = next((t.content for i, t in enumerate(tokens) if i and tokens[i - 1].type == "heading_open"), "lingotune report")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{POLICY}\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head>\n"
            f"<body><main>\n{md.renderer.render(tokens, md.options, {})}</main></body></html>\n")


def write_report(run_dir: Path, html: bool = False) -> Path:
    """report.md (and its plots) from the run's results.json; with `html`, report.html as well. The path of
    the last file written."""
    run_dir = Path(run_dir)
    results = read_json(run_dir / "results.json")
    if results is None:
        raise RunDirError(f"{run_dir}: no results.json (is it a lingotune run directory?)")
    text = render(results, *draw(run_dir, results))
    path = atomic_write_text(run_dir / "report.md", text)
    if html:
        path = atomic_write_text(run_dir / "report.html", to_html(text, run_dir))
    return path
