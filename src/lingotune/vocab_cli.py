"""`lingotune vocab ...`: adapt a tokenizer to a language and see what it costs per character.

    lingotune vocab extend --model bundled --lang ru --corpus ru.txt --add 5000 --out runs/vocab-ru [--init-model]
    lingotune vocab train --scenario bpe|unigram --size 49152 --model bundled --lang ru --corpus ru.txt --out DIR
    lingotune vocab train --scenario optimize --keep 44152 --add 5000 --english en.txt --lang ru --corpus ru.txt --out DIR
    lingotune vocab inspect --model bundled --tokenizer runs/vocab-ru
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from lingotune.errors import user_errors

app = typer.Typer(help="Vocabulary adaptation (LEP): train, cut or extend a tokenizer, initialise the rows, inspect.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()


def read_corpus(paths: list[Path]) -> list[str]:
    """Texts of corpus files: one text a line (.txt and anything else), or the `text` field of JSON/JSONL rows."""
    from lingotune.data.formats import read_texts

    return [t for p in paths for t in read_texts(p)]


def adapt_and_write(model: str, lang: str, corpus: list[Path], english: list[Path], cfg, out: Path, init_model: bool,
                    overwrite: bool) -> dict:
    """Adapt `model`'s tokenizer per `cfg` (a VocabConfig) and write `out`/model (and vocab_report.json).
    Every check runs before anything is written."""
    from lingotune import files, rundir, vocab
    from lingotune.languages import get_language
    from lingotune.models import load_model, load_tokenizer

    get_language(lang)
    action = rundir.check(out, kind="run", resume=False, overwrite=overwrite)
    texts, english_texts = read_corpus(corpus), read_corpus(english)
    tok = load_tokenizer(model)
    new, report = vocab.adapt(cfg, tok, lang, texts, english_texts)
    net = None
    if init_model:
        net, _ = load_model(model)
        report["init"] = vocab.init_new_rows(net, tok, new)
    report.update(source=model, corpus=[str(p) for p in corpus], english_corpus=[str(p) for p in english],
                  corpus_texts=len(texts))
    rundir.prepare(out, action, "run")
    with files.atomic_dir(out / "model") as tmp:
        new.save_pretrained(tmp)
        if net is not None:
            net.save_pretrained(tmp)
    files.save_json(out / "vocab_report.json", report)
    return report


CORPUS_HELP = ("Target-language text: .txt (one text a line), JSON/JSONL with a 'text' field, or TSV with a 'text' "
               "column. Repeatable.")
ENGLISH_HELP = ("Text the vocabulary must keep serving (English), same formats: optimize counts token use on it; bpe and "
                "unigram train on it too. Repeatable.")
INIT_HELP = ("Also write the model resized to the new vocabulary, each row the mean of the old rows that spell its token "
             "(a Hugging Face model directory).")


@app.command()
@user_errors
def train(
    model: str = typer.Option("bundled", help="Model whose tokenizer is adapted: 'bundled', a local directory or a hub id."),
    lang: str = typer.Option(..., "--lang", "-l", help="Target language: its corpus must be text in its script."),
    corpus: list[Path] = typer.Option(..., help=CORPUS_HELP),
    scenario: str = typer.Option(..., help="bpe | unigram: a new vocabulary trained on the corpus replaces the old one; "
                                 "optimize: the old one cut to --keep tokens, then extended by --add; extend: --add new "
                                 "tokens on top."),
    size: Optional[int] = typer.Option(None, min=1, help="bpe, unigram: the new vocabulary's size (default: the old one's)."),
    keep: Optional[int] = typer.Option(None, min=1, help="optimize: old tokens kept (default: the old size minus --add)."),
    add: int = typer.Option(5000, min=1, help="optimize, extend: new tokens to learn."),
    min_count: int = typer.Option(2, min=1, help="A pair must occur at least this often to be merged (not unigram)."),
    english: list[Path] = typer.Option([], help=ENGLISH_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory: the tokenizer, vocab_report.json (and the model)."),
    init_model: bool = typer.Option(False, help=INIT_HELP),
    overwrite: bool = typer.Option(False, help="Replace an output directory lingotune made earlier."),
):
    """Train a new vocabulary for a language (bpe, unigram), or cut and extend the old one (optimize)."""
    from lingotune.vocab import SCENARIOS, VocabConfig, VocabError

    if scenario not in SCENARIOS[1:]:
        raise VocabError(f"--scenario {scenario!r}: use one of {', '.join(SCENARIOS[1:])}")
    cfg = VocabConfig(scenario=scenario, size=size, keep=keep, add=add, min_count=min_count)
    report = adapt_and_write(model, lang, corpus, english, cfg, out, init_model, overwrite)
    console.print(f"{scenario}: vocabulary {report['vocab_before']} -> {report['vocab_after']} in {report['seconds']} s; "
                  f"written to {out / 'model'}")


@app.command()
@user_errors
def extend(
    model: str = typer.Option("bundled", help="Model whose tokenizer is extended: 'bundled', a local directory or a hub id."),
    lang: str = typer.Option(..., "--lang", "-l", help="Target language: new tokens are text in its script."),
    corpus: list[Path] = typer.Option(..., help=CORPUS_HELP),
    add: int = typer.Option(5000, min=1, help="New tokens to learn (fewer when the corpus runs out of pairs)."),
    min_count: int = typer.Option(2, min=1, help="A pair must occur at least this often in the corpus."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory: the tokenizer, vocab_report.json (and the model)."),
    init_model: bool = typer.Option(False, help=INIT_HELP),
    overwrite: bool = typer.Option(False, help="Replace an output directory lingotune made earlier."),
):
    """Learn new merges for a language on top of the tokenizer (scenario `extend`): English ids stay the same."""
    from lingotune.vocab import VocabConfig

    cfg = VocabConfig(scenario="extend", add=add, min_count=min_count)
    report = adapt_and_write(model, lang, corpus, [], cfg, out, init_model, overwrite)
    console.print(f"{report['new_tokens']} new tokens ({report['merges']} merges) in {report['seconds']} s: "
                  f"vocabulary {report['vocab_before']} -> {report['vocab_after']}; written to {out / 'model'}")


@app.command()
@user_errors
def inspect(
    model: str = typer.Option("bundled", help="The original tokenizer's model: 'bundled', a local directory or a hub id."),
    tokenizer: list[str] = typer.Option([], help="Adapted tokenizers (directories) to compare. Repeatable."),
    langs: str = typer.Option("en,ru,ar,ko", help="Languages (FLORES-200 devtest files under the data root)."),
    data_root: Optional[str] = typer.Option(None, help="Data root (default: ../shared/data or $LINGOTUNE_DATA)."),
):
    """Characters per token on FLORES-200 devtest, per language, for the original and adapted tokenizers."""
    from lingotune.data.inspect import flores_stats
    from lingotune.models import load_tokenizer
    from lingotune.paths import require_data_root

    root = require_data_root(data_root)
    names = [x.strip() for x in langs.split(",") if x.strip()]
    toks = [(model, load_tokenizer(model))] + [(t, load_tokenizer(t)) for t in tokenizer]
    table = Table(title="characters per token, FLORES-200 devtest")
    table.add_column("tokenizer")
    table.add_column("vocabulary", justify="right")
    for lang in names:
        table.add_column(lang, justify="right")
    for name, tok in toks:
        stats = flores_stats(root, names, tok)
        table.add_row(name, f"{len(tok):,}", *(f"{1 / s.tokens_per_char:.2f}" for s in stats))
    console.print(table)
