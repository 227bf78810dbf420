"""Target-language generation speed: characters per second of greedy generation, model against model.

A model with a vocabulary adapted to the language (LEP) spends fewer tokens per character, so the
same decoding loop produces more text per second. Each model is asked to copy FLORES-200 devtest
sentences (the language's copy instruction, so the reply is in the language), greedy, through
lingotune's one inference surface. Models alternate over `--repeats` rounds in one process;
reported are the medians of characters/s and tokens/s over rounds, and the ratio to the first model.

    python benchmarks/bench_generate.py --model bundled --model runs/lep-ru/propagated --lang ru
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def prompts_for(lang: str, n: int, root) -> list[list[dict]]:
    from lingotune.languages import get_language

    language = get_language(lang)
    lines = (root / "flores200" / "devtest" / f"{language.flores}.devtest").read_text(encoding="utf-8").splitlines()
    return [[{"role": "user", "content": f"{language.copy_instruction}\n\n{line}"}] for line in lines[:n]]


def one_round(model, tok, convs, new_tokens: int, batch: int) -> dict:
    from lingotune import inference

    t0 = time.perf_counter()
    outs = inference.generate_chat(model, tok, convs, new_tokens, batch_size=batch, desc="bench")
    dt = time.perf_counter() - t0
    tokens = sum(len(tok(o, add_special_tokens=False)["input_ids"]) for o in outs)
    chars = sum(len(o) for o in outs)
    return {"seconds": dt, "chars": chars, "tokens": tokens, "chars_per_s": chars / dt, "tokens_per_s": tokens / dt}


def main() -> None:
    import torch

    from lingotune.models import load_model
    from lingotune.paths import require_data_root

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="Model (repeat; the first is the reference).")
    ap.add_argument("--lang", default="ru")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    convs = prompts_for(args.lang, args.prompts, require_data_root())
    models = {m: load_model(m) for m in args.model}
    rounds: dict[str, list[dict]] = {m: [] for m in args.model}
    for _ in range(args.repeats):
        for name, (model, tok) in models.items():
            rounds[name].append(one_round(model, tok, convs, args.new_tokens, args.batch))
    ref = statistics.median(r["chars_per_s"] for r in rounds[args.model[0]])
    report = {"lang": args.lang, "prompts": args.prompts, "new_tokens": args.new_tokens, "batch": args.batch,
              "repeats": args.repeats, "threads": torch.get_num_threads(), "models": {}}
    for name, rs in rounds.items():
        cps = statistics.median(r["chars_per_s"] for r in rs)
        report["models"][name] = {"chars_per_s": round(cps, 1),
                                  "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in rs), 1),
                                  "chars_per_token": round(sum(r["chars"] for r in rs) / sum(r["tokens"] for r in rs), 2),
                                  "ratio_chars_per_s": round(cps / ref, 2)}
    print(json.dumps(report, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
