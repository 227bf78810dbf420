"""Training throughput and memory: the plain HF Trainer + PEFT setup (the peer) vs lingotune's loop.

Both train the same model on the same batches, in the same order, at the same learning rate and
schedule. Stage 1 trains only the input embeddings (model untied first, for both); stage 2 trains
LoRA r=8 on every linear layer of the decoder (for both). Each run is a fresh subprocess (so
peak RSS means something); runs alternate peer, lingotune, peer, lingotune ...

(a) peer: `transformers.Trainer`, bf16 where `lingotune.models.bf16_supported()`, padding to the
    longest example of the batch (`DataCollatorForSeq2Seq`), default optimizer (fused AdamW),
    clipping at 1.0, cosine decay to 10% (`cosine_with_min_lr`), sequential sampling over the
    examples laid out in lingotune's batch order. Stage 1: `requires_grad` on `embed_tokens`
    only. Stage 2: PEFT LoRA.
(b) lingotune: `lingotune.train.train_stage`, the loop every method uses, with the recipe's
    defaults (fast path, packed rows, precision auto) and the stage setup of `lingotune.methods`.

Data (--data): `dpart` (default) builds lingotune's DParT sets from the recipe
src/lingotune/recipes/results_ru.yaml (starter data, GSM8K and XQuAD pairs from ../shared/data):
stage 1 trains on the bilingual pairs, stage 2 on the Russian instructions. `flores` uses FLORES
en->ru translation examples, which nearly fill --seq-len (little padding to remove).

    python benchmarks/bench_train.py --model bundled --stage both --steps 12 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

LR = {1: 1e-3, 2: 2e-4}
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RECIPE = Path(__file__).resolve().parents[1] / "src" / "lingotune" / "recipes" / "results_ru.yaml"


# --------------------------------------------------------------------------- data and model (the same for both)


def bench_recipe(spec: dict):
    """The lingotune recipe of this run: results_ru's data, the bench's sizes, LR and precision."""
    from lingotune.recipe import load_recipe

    precision = "fp32" if spec["fp32"] else "auto"
    sets = [f"train.batch_size={spec['batch_size']}", f"train.max_len={spec['seq_len']}", "train.warmup_steps=0",
            f"train.lr={LR[2]}", f"train.embedding_lr={LR[1]}", f"train.precision={precision}",
            f"train.pack={str(spec['pack']).lower()}", f"train.fast={str(spec['fast']).lower()}",
            f"train.gradient_checkpointing={str(spec['grad_ckpt']).lower()}",
            f"train.checkpoint_every={10**6}", "method.lora.dropout=0.0",
            f"method.lora.target_modules=[{','.join(LINEAR)}]", f"model.source={spec['model']}"]
    return load_recipe(str(RECIPE), sets)


def build_items(spec: dict, tok, recipe) -> tuple[list[dict], list[dict]]:
    """(tokenized examples {input_ids, labels} with answer-only labels, the examples of the first
    `steps` batches laid out in lingotune's batch order, for the peer's sequential sampler)."""
    from lingotune.data.batches import BatchPlan, tokenize_all
    from lingotune.data.records import Example

    if spec["data"] == "dpart":
        from lingotune.data.build import build_datasets

        built = build_datasets(recipe.data, recipe.language, recipe.seed)
        examples = built.stage1 if spec["stage"] == 1 else built.stage2
    else:
        from lingotune.paths import data_root

        flores = data_root() / "flores200" / "devtest"
        en = (flores / "eng_Latn.devtest").read_text(encoding="utf-8").splitlines()
        ru = (flores / "rus_Cyrl.devtest").read_text(encoding="utf-8").splitlines()
        examples = [Example(messages=[{"role": "user", "content": f"Translate to Russian: {a}"},
                                      {"role": "assistant", "content": b}]) for a, b in zip(en, ru)]
    items, _ = tokenize_all(examples, tok, spec["seq_len"], "answer")
    plan = BatchPlan(len(items), spec["batch_size"], recipe.seed)
    return items, [items[i] for step in range(spec["steps"]) for i in plan.indices(step)]


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


# --------------------------------------------------------------------------- (a) the peer: HF Trainer + PEFT


def run_peer(spec: dict, model, tok, items: list[dict]) -> dict:
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments, set_seed

    from lingotune.models import bf16_supported, untie

    untie(model)
    for p in model.parameters():
        p.requires_grad_(False)
    if spec["stage"] == 1:
        model.get_input_embeddings().weight.requires_grad_(True)
    else:
        from peft import LoraConfig, get_peft_model

        set_seed(spec["seed"])
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LINEAR,
                                                 task_type="CAUSAL_LM"))
    tokens: list[int] = []
    collator = DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100)

    def collate(features):
        batch = collator(features)
        tokens.append(int(batch["attention_mask"].sum()))
        return batch

    times, losses = [], []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if spec["device"].startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    bf16 = bf16_supported(spec["device"]) and not spec["fp32"]
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=spec["batch_size"], max_steps=spec["steps"],
            learning_rate=LR[spec["stage"]], lr_scheduler_type="cosine_with_min_lr",
            lr_scheduler_kwargs={"min_lr_rate": 0.1}, warmup_steps=0, bf16=bf16,
            use_cpu=not spec["device"].startswith("cuda"), report_to=[], save_strategy="no", eval_strategy="no",
            logging_steps=1, disable_tqdm=True, train_sampling_strategy="sequential", seed=spec["seed"],
            dataloader_num_workers=0, gradient_checkpointing=False,
        )
        trainer = Trainer(model=model, args=args, train_dataset=items, data_collator=collate, callbacks=[Clock()])
        trainer.train()
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return {"times": times, "tokens": tokens[: len(times)], "losses": losses, "bf16": bf16, "notes": [],
            "grad_mb": tensor_bytes(trainable) / 2**20,  # a dense grad per trainable tensor, the parameter's dtype
            "state_mb": tensor_bytes(v for st in opt.state.values() for v in st.values()) / 2**20}


# --------------------------------------------------------------------------- (b) lingotune's training loop


def run_lingotune(spec: dict, model, tok, items: list[dict], recipe) -> dict:
    from lingotune import methods
    from lingotune.train import accelerator_for, train_stage

    stage = methods.stages("dpart", recipe)[spec["stage"] - 1]
    torch.manual_seed(spec["seed"])
    model, groups = stage.setup(model)
    with tempfile.TemporaryDirectory() as out:
        log = Path(out) / "metrics.jsonl"
        res = train_stage(model, groups, items, steps=spec["steps"], cfg=recipe.train, seed=recipe.seed,
                          pad_id=tok.pad_token_id, stage_dir=Path(out) / stage.name, log_path=log,
                          log_key={"stage": stage.name}, row_sparse=stage.row_sparse, loss=stage.loss)
        recs = [json.loads(line) for line in log.read_text().splitlines()]
    return {"times": [r["seconds"] for r in recs], "tokens": [r["tokens"] for r in recs],
            "losses": [r["loss"] for r in recs], "bf16": accelerator_for(recipe.train.precision).mixed_precision == "bf16",
            "notes": res.fast_path, "grad_mb": res.grad_mb, "state_mb": res.optimizer_state_mb}


# --------------------------------------------------------------------------- one run = one subprocess


def worker(spec: dict) -> dict:
    torch.manual_seed(spec["seed"])
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    from lingotune.models import load_model

    model, tok = load_model(spec["model"], device=spec["device"], attn_implementation=spec["attn"])
    recipe = bench_recipe(spec)
    items, in_order = build_items(spec, tok, recipe)
    if spec["device"].startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    if spec["setup"] == "peer":
        result = run_peer(spec, model, tok, in_order)
    else:
        result = run_lingotune(spec, model, tok, items, recipe)
    w = spec["warmup"]
    rates = [n / t for n, t in zip(result["tokens"][w:], result["times"][w:])]
    result["tok_s"] = statistics.median(rates) if rates else float("nan")
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20 if spec["device"].startswith("cuda") else None
    result["tokens_per_step"] = statistics.mean(result["tokens"]) if result["tokens"] else 0
    return result


def launch(spec: dict) -> dict:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{spec['setup']} stage {spec['stage']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bundled", help="bundled | bundled:gemma3-270m | a model directory or hub id")
    ap.add_argument("--stage", default="both", choices=["1", "2", "both"])
    ap.add_argument("--data", default="dpart", choices=["dpart", "flores"])
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per timed run")
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the median")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256, help="examples are truncated to this many tokens")
    ap.add_argument("--repeats", type=int, default=2, help="peer/lingotune pairs per stage, alternating")
    ap.add_argument("--loss-steps", type=int, default=50, help="steps of the fp32 loss-curve comparison (0: skip)")
    ap.add_argument("--loss-batch-size", type=int, default=2)
    ap.add_argument("--no-pack", action="store_true", help="lingotune: train.pack=false (padded rows, like the peer)")
    ap.add_argument("--no-fast", action="store_true",
                    help="lingotune: train.fast=false (dense AdamW, full logits), to check the loop itself against the peer")
    ap.add_argument("--grad-ckpt", action="store_true", help="lingotune: train.gradient_checkpointing=true")
    ap.add_argument("--attn", default=None, help="attention kernel for both setups (e.g. eager; default: transformers')")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write all results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return

    base = dict(model=args.model, device=args.device, seq_len=args.seq_len, seed=args.seed, threads=args.threads,
                data=args.data, pack=not args.no_pack, fast=not args.no_fast, attn=args.attn,
                grad_ckpt=args.grad_ckpt, warmup=args.warmup)
    stages = [1, 2] if args.stage == "both" else [int(args.stage)]
    report = {"args": vars(args), "stages": {}}
    for stage in stages:
        runs = {"peer": [], "lingotune": []}
        for r in range(args.repeats):
            for setup in runs:
                t = time.perf_counter()
                res = launch(dict(base, setup=setup, stage=stage, steps=args.steps, batch_size=args.batch_size, fp32=False))
                runs[setup].append(res)
                print(f"stage {stage} {setup:9s} run {r}: {res['tok_s']:7.1f} tok/s  peak RSS {res['peak_rss_mb']:7.0f} MB"
                      f"  bf16={res['bf16']}  {', '.join(res['notes'])}  ({time.perf_counter() - t:.0f} s)", flush=True)
        summary = {s: {"tok_s": statistics.median(x["tok_s"] for x in v), "tok_s_runs": [x["tok_s"] for x in v],
                       "peak_rss_mb": statistics.median(x["peak_rss_mb"] for x in v),
                       "peak_gpu_mb": v[0]["peak_gpu_mb"], "bf16": v[0]["bf16"], "notes": v[0]["notes"],
                       "tokens_per_step": v[0]["tokens_per_step"], "grad_mb": v[0]["grad_mb"], "state_mb": v[0]["state_mb"]}
                   for s, v in runs.items()}
        p, f = summary["peer"], summary["lingotune"]
        summary["ratios"] = {"tok_s": f["tok_s"] / p["tok_s"], "peak_rss": f["peak_rss_mb"] / p["peak_rss_mb"],
                             "grad_plus_state": (f["grad_mb"] + f["state_mb"]) / (p["grad_mb"] + p["state_mb"])}
        if p["peak_gpu_mb"]:
            summary["ratios"]["peak_gpu"] = f["peak_gpu_mb"] / p["peak_gpu_mb"]
        if args.loss_steps:
            curves = {s: launch(dict(base, setup=s, stage=stage, steps=args.loss_steps, batch_size=args.loss_batch_size,
                                     fp32=True))["losses"] for s in ("peer", "lingotune")}
            rel = [abs(a - b) / max(abs(a), 1e-8) for a, b in zip(curves["peer"], curves["lingotune"])]
            summary["loss_curves"] = curves
            summary["loss_max_rel_diff"] = max(rel)
            summary["loss_first_last"] = {s: (c[0], c[-1]) for s, c in curves.items()}
        report["stages"][stage] = summary
        print(f"stage {stage}: peer {p['tok_s']:.1f} tok/s, lingotune {f['tok_s']:.1f} tok/s (x{summary['ratios']['tok_s']:.2f}); "
              f"peak RSS {p['peak_rss_mb']:.0f} vs {f['peak_rss_mb']:.0f} MB (x{summary['ratios']['peak_rss']:.2f}); "
              f"grad+state {p['grad_mb'] + p['state_mb']:.1f} vs {f['grad_mb'] + f['state_mb']:.1f} MiB "
              f"(x{summary['ratios']['grad_plus_state']:.4f})"
              + (f"; loss max rel diff over {args.loss_steps} steps {summary['loss_max_rel_diff']:.4f}" if args.loss_steps else ""),
              flush=True)
        if args.json:  # after every stage, so a cut-short run keeps what it measured
            Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
