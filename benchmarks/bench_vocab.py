"""Characters per token on FLORES-200 devtest (en/ru/ar/ko) for each vocabulary scenario, per language.

    python benchmarks/bench_vocab.py --langs ru,ar,ko --scenarios extend,bpe,unigram,optimize [--out FILE.json]

The vocabulary corpora come from the shared data, never from FLORES (which is measured): Russian = GSM8K
train questions (ru) + DaNetQA train passages + TERRa train premises; Arabic = XQuAD ar contexts and
questions + Mintaka ar questions; Korean = KoBEST BoolQ/HellaSwag/SentiNeg/COPA train texts + MT-Bench ko
first turns; English (optimize's `english_corpus`) = GSM8K train questions (en) + the 2,000 Alpaca
records (instruction, input, output). Sizes: bpe/unigram --size (default
the original 49,152); optimize --keep (44,152) + --add (5,000); extend --add. It also counts the English
FLORES lines whose ids, and whose token strings, stay as the original tokenizer's.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from lingotune.data.formats import read_texts
from lingotune.models import load_tokenizer
from lingotune.paths import require_data_root
from lingotune.vocab import VocabConfig, adapt, chars_per_token, token_strings

FLORES = {"en": "eng_Latn", "ru": "rus_Cyrl", "ar": "arb_Arab", "ko": "kor_Hang"}


def _tsv(path: Path, column: str) -> list[str]:
    with path.open(encoding="utf-8", newline="") as f:
        return [row[column] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


def corpus(root: Path, lang: str) -> list[str]:
    if lang == "ru":
        texts = (read_texts(root / "gsm8k_questions_ru_en/train.ru")
                 + read_texts(root / "russian_superglue/DaNetQA/train.jsonl", "passage")
                 + read_texts(root / "russian_superglue/TERRa/train.jsonl", "premise"))
    elif lang == "ar":
        squad = json.loads((root / "xquad/xquad.ar.json").read_text(encoding="utf-8"))["data"]
        paragraphs = [p for d in squad for p in d["paragraphs"]]
        texts = [p["context"] for p in paragraphs] + [q["question"] for p in paragraphs for q in p["qas"]]
        import ast

        mintaka = json.loads((root / "mintaka_en_ar/mintaka_dev.json").read_text(encoding="utf-8"))
        texts += [ast.literal_eval(r["translations"])["ar"] if isinstance(r["translations"], str)
                  else r["translations"]["ar"] for r in mintaka]
    elif lang == "ko":
        k = root / "kobest"
        texts = (_tsv(k / "BoolQ/train.tsv", "Text") + _tsv(k / "HellaSwag/train.tsv", "context")
                 + _tsv(k / "SentiNeg/train.tsv", "Text") + _tsv(k / "COPA/train.tsv", "sentence"))
        texts += [json.loads(line)["turns"][0] for line in (root / "mt_bench_ko/question_ko.jsonl").read_text(
            encoding="utf-8").splitlines() if line.strip()]
    elif lang == "en":
        texts = read_texts(root / "gsm8k_questions_ru_en/train.en")
        alpaca = json.loads((root / "alpaca_cleaned_en_2000/alpaca_data_cleaned.first2000.json").read_text())
        texts += [" ".join(x for x in (r["instruction"], r["input"], r["output"]) if x) for r in alpaca]
    else:
        raise SystemExit(f"no corpus for {lang}")
    return [t.strip() for t in texts if t.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--langs", default="ru,ar,ko")
    ap.add_argument("--scenarios", default="extend,bpe,unigram,optimize")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--keep", type=int, default=None)
    ap.add_argument("--add", type=int, default=5000)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    root = require_data_root(args.data_root)
    tok = load_tokenizer(args.model)
    flores = {k: (root / f"flores200/devtest/{v}.devtest").read_text(encoding="utf-8").splitlines()
              for k, v in FLORES.items()}
    english = corpus(root, "en")
    en_ids = tok(flores["en"], add_special_tokens=False)["input_ids"]
    en_strings = token_strings(tok, flores["en"])
    rows = [{"lang": "-", "scenario": "original", "vocab": len(tok), "seconds": None,
             **{f"cpt_{k}": round(chars_per_token(tok, v), 3) for k, v in flores.items()}}]
    print(json.dumps(rows[0]), flush=True)
    for lang in args.langs.split(","):
        texts = corpus(root, lang)
        print(f"{lang}: {len(texts)} texts, {sum(map(len, texts))} chars; english {len(english)} texts", flush=True)
        for scenario in args.scenarios.split(","):
            cfg = VocabConfig(scenario=scenario, size=args.size, keep=args.keep, add=args.add)
            t0 = time.perf_counter()
            new, report = adapt(cfg, tok, lang, texts, english if scenario == "optimize" else [])
            seconds = time.perf_counter() - t0
            ids = new(flores["en"], add_special_tokens=False)["input_ids"]
            row = {"lang": lang, "scenario": scenario, "vocab": len(new), "seconds": round(seconds, 1),
                   **{f"cpt_{k}": round(chars_per_token(new, v), 3) for k, v in flores.items()},
                   "en_lines_same_ids": sum(a == b for a, b in zip(en_ids, ids)),
                   "en_lines_same_strings": sum(a == b for a, b in zip(en_strings, token_strings(new, flores["en"]))),
                   "corpus_texts": len(texts), "corpus_chars": sum(map(len, texts)),
                   "report": {k: v for k, v in report.items() if k not in ("refused",)}}
            rows.append(row)
            print(json.dumps(row, ensure_ascii=False), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
