"""Multiple-choice log-likelihood scoring: one forward pass per (context, option), as lm-evaluation-harness's
Hugging Face backend does, against lingotune's shared context (each context once, its KV cache scoring every
option). Same examples, same tokens, alternating in one process; prints seconds, the ratio and the largest
difference between the two scorings.

    python benchmarks/bench_loglik.py --task kobest_hellaswag --shots 5 --n 8 [--model bundled] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lingotune import inference
from lingotune.eval.config import EvalConfig
from lingotune.eval.multiple_choice import context_ids, mc_example
from lingotune.eval.runner import task_examples, task_shots
from lingotune.eval.tasks import load_task
from lingotune.models import load_model
from lingotune.paths import data_root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--task", default="kobest_hellaswag")
    ap.add_argument("--lang", default="ko")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    cfg = EvalConfig(tasks=[args.task], limit=args.n, sample=True, shots=[args.shots], batch_size=args.batch_size)
    spec = load_task(args.task)
    root = data_root(None)
    rows = task_examples(spec, cfg, root, args.lang)
    _, train = task_shots(spec, cfg, root, args.lang)
    model, tok = load_model(args.model)
    contexts, options = [], []
    for row in rows:
        context, choices = mc_example(spec, row, args.lang, cfg.seed, train, args.shots)
        contexts.append(context_ids(tok, context))
        options.append([inference.encode(tok, c) for c in choices])
    pairs = [(c, o) for c, os in zip(contexts, options) for o in os]
    times = {"per_option": [], "shared": []}
    for _ in range(args.repeats):
        t = time.perf_counter()
        flat = inference.continuation_logprobs(model, tok, pairs, args.batch_size, desc="per option")
        times["per_option"].append(time.perf_counter() - t)
        t = time.perf_counter()
        shared = inference.shared_continuation_logprobs(model, tok, contexts, options, args.batch_size, desc="shared")
        times["shared"].append(time.perf_counter() - t)
    diff = max(abs(a - b) for a, b in zip(flat, [x for r in shared for x in r]))
    out = {"task": args.task, "shots": args.shots, "n": len(rows), "options": len(pairs),
           "context_tokens_mean": sum(map(len, contexts)) / len(contexts), "threads": torch.get_num_threads(),
           "seconds": times, "ratio": min(times["per_option"]) / min(times["shared"]), "max_abs_diff": diff}
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
