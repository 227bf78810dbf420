"""`lingotune data ...`: build pairs, build preference pairs, translate, write starter data, inspect files.

Also runnable alone: `python -m lingotune.data.cli inspect --flores`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from lingotune.errors import UserError, pydantic_line, user_errors

app = typer.Typer(help="Data: build DParT pairs and preference pairs, translate English data, write starter data, inspect files.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()


def _load_data_section(recipe: Path) -> dict:
    from lingotune.files import FileFormatError, read_yaml

    doc = read_yaml(recipe, "recipe file") or {}
    if not isinstance(doc, dict):
        raise FileFormatError(f"{recipe}: expected a mapping")
    return doc.get("data", doc) or {}


@app.command("build-pairs")
@user_errors
def build_pairs(
    out: Path = typer.Option(..., "--out", "-o", help="Directory for stage1.jsonl, stage2.jsonl, data_report.json."),
    lang: str = typer.Option("ru", "--lang", "-l", help="Target language."),
    seed: int = typer.Option(0, help="Seed for shuffling."),
    recipe: Optional[Path] = typer.Option(None, help="A recipe YAML (its data: section is used) or a bare data section."),
    fmt: Optional[str] = typer.Option(None, "--format", help="One source's format (instead of --recipe)."),
    path: Optional[str] = typer.Option(None, help="The source's path."),
    en: Optional[str] = typer.Option(None, help="paired/parallel_text: the English file."),
    target: Optional[str] = typer.Option(None, help="paired/parallel_text: the target-language file."),
    align: str = typer.Option("index", help="paired: align by 'index' or 'id'."),
    limit: Optional[int] = typer.Option(None, help="Use at most this many records of the source."),
    root: Optional[str] = typer.Option(None, "--data-root", help="Data root for relative paths."),
    instruction: str = typer.Option("en", help="Stage-1 instruction: en, native or a custom string."),
):
    """Read sources, validate, and write the DParT stage-1 pairs and stage-2 instructions as JSONL."""
    from pydantic import ValidationError

    from lingotune.data.build import build_datasets
    from lingotune.data.config import DataConfig

    if recipe is not None:
        section = _load_data_section(recipe)
    elif fmt:
        src = {k: v for k, v in dict(format=fmt, path=path, en=en, target=target, align=align, limit=limit).items()
               if v is not None}
        section = {"sources": [src], "pairs": {"instruction": instruction}}
    else:
        section = {"pairs": {"instruction": instruction}}
    if root:
        section = {**section, "root": root}
    try:
        cfg = DataConfig.model_validate(section)
    except ValidationError as e:
        raise UserError(pydantic_line(e, prefix="data.")) from None
    with console.status("building datasets"):
        built = build_datasets(cfg, lang, seed)
    paths = built.write(out)
    _print_report(built.report)
    console.print(f"wrote {paths['stage1']} ({len(built.stage1)}), {paths['stage2']} ({len(built.stage2)}), {paths['report']}")


def _print_report(report: dict) -> None:
    t = Table(title=f"data for {report['lang']} (seed {report['seed']})")
    for col in ("source", "use", "read", "pairs", "stage2", "empty", "script", "dups", "leaked"):
        t.add_column(col, justify="left" if col in ("source", "use") else "right")
    for s in report["sources"]:
        v = s["validation"]
        t.add_row(f"{s['index']}: {s['format']} {s['path']}", s["use"], str(max(s["pairs_read"], s["stage2_read"])),
                  str(s.get("pairs", "-")), str(s.get("stage2", "-")), str(v["empty_answer"]), str(v["wrong_script"]),
                  str(v["duplicates"]), str(v["leakage_dropped"]))
    console.print(t)
    console.print(f"stage 1: {report['stage1']} examples {report['stage1_kinds']}; stage 2: {report['stage2']} examples")


@app.command()
@user_errors
def translate(
    input: Optional[Path] = typer.Argument(None, help="English records: alpaca/openorca/sharegpt/prompt_completion "
                                           "JSON or JSONL (or give --hub)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output JSONL (id, prompt, completion, system), pairs with the "
                             "input by id (format paired, align id) or by position."),
    to: str = typer.Option(..., "--to", help="Target language."),
    src: str = typer.Option("en", "--from", help="Source language."),
    backend: str = typer.Option("http", help="http (OpenAI-compatible server), seq2seq (Marian/NLLB) or causal (an LLM)."),
    model: str = typer.Option(..., help="Model name (http) or local dir / hub id (seq2seq, causal; causal also 'bundled')."),
    base_url: str = typer.Option("http://127.0.0.1:8000/v1", help="http: the server's base URL (…/v1)."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="http: environment variable holding the API key, if any."),
    cache_dir: Path = typer.Option(Path(".lingotune_cache/translate"), help="Finished translations are cached here."),
    fresh: bool = typer.Option(False, help="Forget the cache and translate everything again."),
    batch_size: int = typer.Option(8, min=1, help="Texts per backend call."),
    limit: Optional[int] = typer.Option(None, min=1, help="Translate at most this many records."),
    device: str = typer.Option("cpu", help="seq2seq/causal: torch device."),
    hub: Optional[str] = typer.Option(None, "--hub", help="Read a hub dataset instead of INPUT: its id, or a local "
                                      "folder in the hub's layout (needs `datasets`)."),
    hub_config: Optional[str] = typer.Option(None, "--hub-config", help="--hub: the config (subset) name."),
    hub_split: str = typer.Option("train", "--hub-split", help="--hub: the split."),
    hub_revision: Optional[str] = typer.Option(None, "--hub-revision", help="--hub: the git revision."),
    columns: list[str] = typer.Option([], "--column", help="--hub: rename a column, HUB_NAME=FIELD (e.g. "
                                      "question=instruction). Repeatable."),
):
    """Translate English records (resumable: an interrupted job does not redo finished items)."""
    from lingotune.data import formats
    from lingotune.data import translate as tr
    from lingotune.hub import HubSpec
    from lingotune.languages import get_language

    get_language(to), get_language(src)
    if (input is None) == (hub is None):
        raise UserError("give either INPUT (a file) or --hub (a hub dataset), not both or neither")
    if hub is not None:
        bad = [c for c in columns if "=" not in c]
        if bad:
            raise UserError(f"option '--column': {bad[0]!r} is not HUB_NAME=FIELD")
        spec = HubSpec(path=hub, name=hub_config, split=hub_split, revision=hub_revision,
                       columns=dict(c.split("=", 1) for c in columns))
        records = formats.read_hub(spec, "auto", src, limit=limit)
    else:
        records = formats.read_file(input, "auto", src, limit)
    for i, r in enumerate(records):
        if r.id is None:
            r.id = str(i)
    if backend == "http":
        t = tr.HTTPTranslator(base_url, model, os.environ.get(api_key_env))
    elif backend == "seq2seq":
        t = tr.Seq2SeqTranslator(model, device=device)
    elif backend == "causal":
        t = tr.CausalTranslator(model, device=device)
    else:
        raise ValueError(f"option '--backend' must be http, seq2seq or causal, got {backend!r}")
    cache = tr.TranslationCache(cache_dir)
    if fresh and cache.path.exists():
        cache.path.unlink()
    done = tr.translate_records(records, t, to, cache_dir, src=src, batch_size=batch_size)
    from lingotune.files import atomic_write_text

    rows = [{"id": r.id, "prompt": r.prompt, "completion": r.response, **({"system": r.system} if r.system else {})}
            for r in done]
    atomic_write_text(out, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    console.print(f"wrote {out} ({len(done)} records; cache {cache_dir})")



@app.command()
@user_errors
def starter(
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the JSONL files."),
    lang: str = typer.Option("ru", "--lang", "-l", help="Target language (a code in lingotune.languages.LANGUAGES)."),
    seed: int = typer.Option(0, help="Seed."),
    n_train: Optional[int] = typer.Option(None, min=1, help="Training pairs (default 400)."),
):
    """Write the project's own starter data (CLDR facts, numbers in words) for a language."""
    from lingotune.data import starter as st

    data = st.generate(lang, seed=seed, n_train=n_train)
    paths = st.write(data, out)
    for name, p in paths.items():
        console.print(f"{name}: {p}")
    console.print(f"{len(data.train_pairs)} pairs, {len(data.stage2)} stage-2, {len(data.heldout_yesno)} held-out yes/no, "
                  f"{len(data.parallel)} parallel")


@app.command()
@user_errors
def inspect(
    paths: list[Path] = typer.Argument(None, help="Example JSONL files (stage1.jsonl, ...) or text files (one a line)."),
    flores: bool = typer.Option(False, "--flores", help="Also the FLORES-200 devtest files of --langs."),
    langs: str = typer.Option("en,ru,ar,ko", help="Languages (comma-separated) for --flores; the first one is the "
                              "language of plain text files."),
    model: str = typer.Option("bundled", help="Tokenizer to count tokens with ('none' to skip)."),
    root: Optional[str] = typer.Option(None, "--data-root", help="Data root (for --flores)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """Counts, lengths and tokens per character per language."""
    from lingotune.data import inspect as ins
    from lingotune.paths import require_data_root

    lang_list = [x.strip() for x in langs.split(",") if x.strip()]
    if not paths and not flores:
        raise ValueError("give files to inspect or --flores")
    tok = None
    if model != "none":
        from lingotune.models import ModelLoadError, load_tokenizer

        try:
            tok = load_tokenizer(model)
        except ModelLoadError as e:
            raise ValueError(str(e)) from None
    stats = []
    if flores:
        stats += ins.flores_stats(require_data_root(root), lang_list, tok)
    for p in paths or []:
        if p.suffix in (".jsonl", ".json"):
            stats += ins.example_stats(p, tok)
        else:
            stats += ins.lines_stats(p, lang_list[0], tok)
    if as_json:
        print(json.dumps([s.to_dict() for s in stats], ensure_ascii=False, indent=1))
        return
    t = Table(title=f"tokens per character under {model}")
    for col in ("file", "lang", "count", "chars", "tokens", "tok/char", "prompt chars", "answer chars"):
        t.add_column(col, justify="left" if col in ("file", "lang") else "right")
    fmt = lambda x, f="{:.3f}": "-" if x is None else f.format(x)  # noqa: E731
    for s in stats:
        t.add_row(s.name, s.lang, str(s.count), str(s.chars), fmt(s.tokens, "{}"), fmt(s.tokens_per_char),
                  fmt(s.mean_prompt_chars, "{:.0f}"), fmt(s.mean_answer_chars, "{:.0f}"))
    console.print(t)


if __name__ == "__main__":
    app()
