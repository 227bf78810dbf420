"""`lingotune data build-prefs`: build preference pairs (prompt, chosen, rejected) offline.

Stands above `data/` and `eval/` because a request may need both: cross-lingual and on-policy pairs and the
file layouts come from `lingotune.data.prefs`, label pairs from `lingotune.eval.labels` (evaluation task files
on a split they do not evaluate), and the leakage check reads the evaluation texts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from lingotune.data.prefs import (CROSS_SETS, COUNTERS, NEAR_DUP_CHRF, SOURCES, Generator, cross_lingual_pairs,
                                  load_pref_file, on_policy_pairs, report_dict, screen, set_available, set_pairs)
from lingotune.data.records import PrefRecord, Record
from lingotune.data.formats import read_file
from lingotune.data.validate import LeakageIndex
from lingotune.errors import UserError
from lingotune.eval.labels import label_pairs, label_spec, label_tasks
from lingotune.languages import get_language

console = Console()


def _names(value: Optional[str]) -> list[str]:
    return [x.strip() for x in (value or "").split(",") if x.strip()]


@dataclass
class PrefRequest:
    """What `lingotune data build-prefs` asks for."""

    source: str  # one of SOURCES
    lang: str
    sets: list[str] = field(default_factory=list)  # cross-lingual / on-policy: shared sets; labels: tasks
    input: Path | None = None  # file: a preference file; on-policy: reference records (instead of sets)
    root: Path | None = None  # the shared data root
    limit: int | None = None  # per set, task or file
    seed: int = 0
    near_dup: float = NEAR_DUP_CHRF


def check_request(req: PrefRequest) -> list[str]:
    """The sets or tasks the request reads (defaults filled in); UserError on anything wrong, before any work."""
    get_language(req.lang)
    if req.source not in SOURCES:
        raise UserError(f"option '--from' must be one of {', '.join(SOURCES)}, got {req.source!r}")
    if req.source == "file" or (req.source == "on-policy" and req.input is not None):
        if req.input is None:
            raise UserError("option '--input' is required with --from file (the preference file)")
        if req.sets:
            raise UserError(f"option '--sets' does not go with --input (--from {req.source})")
        if not Path(req.input).is_file():
            raise UserError(f"{req.input}: file not found (option '--input')")
        return [str(req.input)]
    if req.input is not None:
        raise UserError(f"option '--input' goes with --from file or on-policy, not {req.source}")
    if req.source == "labels":
        tasks = list(req.sets) or label_tasks(req.lang)
        if not tasks:
            raise UserError(f"no built-in label tasks in {req.lang!r}; name task files with option '--sets'")
        for t in tasks:
            label_spec(t, req.lang)
        return tasks
    if req.root is None or not Path(req.root).is_dir():
        raise UserError("no shared data root found; set LINGOTUNE_DATA or --data-root")
    unknown = [s for s in req.sets if s not in CROSS_SETS]
    if unknown:
        raise UserError(f"option '--sets': unknown set {unknown[0]!r}; known: {', '.join(CROSS_SETS)}")
    missing = [s for s in req.sets if not set_available(s, Path(req.root), req.lang)]
    if missing:
        raise UserError(f"option '--sets': set {missing[0]!r} has no {req.lang!r} data under {req.root}")
    names = list(req.sets) or [s for s in CROSS_SETS if s != "starter" and set_available(s, Path(req.root), req.lang)]
    if not names:
        raise UserError(f"none of the shared sets ({', '.join(CROSS_SETS)}) has {req.lang!r} data under {req.root}")
    return names


def _references(req: PrefRequest, name: str) -> list[Record]:
    """On-policy references: the records of the input file, or the target side of a shared set."""
    if req.input is not None:
        recs = read_file(req.input, "auto", req.lang, req.limit)
        return [Record(r.prompt, r.response, r.system, r.id or str(i), r.lang, r.source) for i, r in enumerate(recs, 1)]
    return [Record(t.prompt, t.response, t.system, f"{name}/{t.id}", req.lang, t.source)
            for _, t in set_pairs(name, Path(req.root), req.lang, req.limit)]


def build(req: PrefRequest, leak: LeakageIndex | None = None, generator: Generator | None = None,
          cache_dir: str | Path = ".lingotune_cache/prefs") -> tuple[list[PrefRecord], dict]:
    """(pairs kept, report) of one request: every set read and built, then screened (see the module doc)."""
    names = check_request(req)
    if req.source == "on-policy" and generator is None:
        raise UserError("on-policy pairs need a model (option '--model')")
    if req.source == "on-policy":
        refs = {n: _references(req, n) for n in names}  # every reference read before anything is generated
        built = {n: on_policy_pairs(refs[n], generator, cache_dir, req.near_dup, leak) for n in names}
    elif req.source == "file":
        built = {n: load_pref_file(n, req.lang, req.limit) for n in names}
    elif req.source == "labels":
        built = {n: label_pairs(n, req.root, req.lang, req.seed, req.limit) for n in names}
    else:
        built = {n: cross_lingual_pairs(n, Path(req.root), req.lang, req.limit) for n in names}
    seen: set = set()
    kept, per_set = [], {}
    for n, (records, counts) in built.items():
        kept += screen(records, counts, leak, seen)
        per_set[Path(n).name] = counts
    return kept, report_dict(req.lang, req.source, per_set)


def eval_leakage_index(lang: str, root: Path | None, tasks: list[str] | None = None, n: int = 8) -> LeakageIndex:
    """Word n-grams of every text of the evaluation tasks (`tasks`, or the language's default suite)."""
    from lingotune.eval.config import EvalConfig
    from lingotune.eval.runner import leakage_texts

    return LeakageIndex(leakage_texts(EvalConfig(tasks=list(tasks or [])), lang, root), n=n)


def build_prefs_command(
    lang: str = typer.Option(..., "--lang", "-l", help="Target language."),
    source: str = typer.Option(..., "--from", help="cross-lingual (target vs English answer of the shared parallel "
                               "sets), labels (right vs wrong answer on evaluation tasks' training splits), on-policy "
                               "(reference vs the model's own answer) or file (a preference file: standard, HH or "
                               "messages layout)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output JSONL (prompt, chosen, rejected, ...); the report goes "
                             "beside it as <name>.report.json."),
    sets: Optional[str] = typer.Option(None, help="Comma-separated: cross-lingual/on-policy: shared sets (mt_bench, "
                                       "xquad, gsm8k, msvamp, mintaka; default: those with --lang data) or starter "
                                       "(the project's own bilingual facts; only when named); labels: task "
                                       "names or YAML paths (default: the language's KoBEST/DaNetQA/TERRa/IDAT/MQ2Q)."),
    input: Optional[Path] = typer.Option(None, "--input", "-i", help="file: the preference file; on-policy: reference "
                                         "records (alpaca/openorca/sharegpt/prompt_completion) instead of --sets."),
    model: Optional[str] = typer.Option(None, help="on-policy: the model answering (bundled, a local dir or hub id)."),
    limit: Optional[int] = typer.Option(None, min=1, help="At most this many items per set, task or file."),
    root: Optional[str] = typer.Option(None, "--data-root", help="Shared data root."),
    seed: int = typer.Option(0, help="labels: the prompt drawn for multi-prompt tasks (as evaluation's seed) and the "
                             "wrong option drawn for multiple choice."),
    eval_tasks: Optional[str] = typer.Option(None, help="Comma-separated evaluation tasks whose texts the leakage "
                                             "check uses (default: the language's evaluation suite)."),
    leakage_check: bool = typer.Option(True, help="Drop pairs sharing a word 8-gram with an evaluation text."),
    cache_dir: Path = typer.Option(Path(".lingotune_cache/prefs"), help="on-policy: finished generations are cached here."),
    fresh: bool = typer.Option(False, help="on-policy: forget the cache and generate everything again."),
    batch_size: int = typer.Option(8, min=1, help="on-policy: prompts per generation batch."),
    max_new_tokens: int = typer.Option(256, min=1, help="on-policy: new tokens per answer."),
    device: str = typer.Option("cpu", help="on-policy: torch device."),
    near_dup: float = typer.Option(85.0, min=0.0, max=100.0, help="on-policy: drop a generation whose chrF++ against "
                                   "the reference (both normalized) is at least this."),
):
    """Build preference pairs (prompt, chosen, rejected) offline and write them as standard JSONL with a report."""
    from lingotune.data import prefs
    from lingotune.files import save_json
    from lingotune.paths import data_root

    req = PrefRequest(source, lang, _names(sets), input, data_root(root), limit, seed, near_dup)
    check_request(req)
    if out.is_dir():
        raise UserError(f"option '--out': {out} is a directory; give a .jsonl file")
    if source == "on-policy" and not model:
        raise UserError("option '--model' is required with --from on-policy")
    leak = eval_leakage_index(lang, req.root, _names(eval_tasks)) if leakage_check else None
    generator = None
    if source == "on-policy":
        from lingotune.models import load_model

        net, tok = load_model(model, device=device)
        generator = prefs.Generator(net, tok, model, max_new_tokens, batch_size)
        if fresh:
            (cache_dir / "generations.jsonl").unlink(missing_ok=True)
    with console.status("building preference pairs"):
        records, report = build(req, leak, generator, cache_dir)
    _print_pref_report(report)
    if not records:
        raise UserError("no preference pairs left after the checks above; nothing written")
    prefs.write_prefs(records, out)
    report_path = save_json(out.with_name(f"{out.stem}.report.json"), report)
    console.print(f"wrote {out} ({len(records)} pairs), {report_path}")


def _print_pref_report(report: dict) -> None:

    short = {"missing_answer": "no answer", "identical": "same", "near_duplicates": "near dup", "duplicates": "dups"}
    t = Table(title=f"preference pairs for {report['lang']} (from {report['from']})")
    t.add_column("set", no_wrap=True)
    t.add_column("kind", no_wrap=True)
    for col in COUNTERS:
        t.add_column(short.get(col, col), justify="right")
    for name, c in report["sets"].items():
        t.add_row(name, c["kind"], *(str(c[k]) for k in COUNTERS))
    for kind, c in report["kinds"].items():
        t.add_row("[b]all[/b]", kind, *(str(c[k]) for k in COUNTERS))
    console.print(t)
