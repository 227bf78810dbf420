"""Training throughput and memory: plain HF Trainer (the peer) vs lingotune's fast path.

Stage 1 trains only the input embeddings (model untied first, for both); stage 2 trains LoRA
(r=8, all linear layers, for both). Each run is a fresh subprocess (so peak RSS means
something); runs alternate peer, fast, peer, fast ... Data: FLORES-200 devtest en->ru
translation as chat examples, loss on the answer tokens only (generated text if the shared
data is absent), truncated to --seq-len.

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

import torch

LR = {1: 5e-4, 2: 2e-4}


# --------------------------------------------------------------------------- data


def build_examples(tok, n: int, seq_len: int) -> list[dict]:
    """n chat examples {input_ids, labels}, answer-only labels, deterministic."""
    from lingotune.paths import data_root

    root = data_root()
    flores = root / "flores200" / "devtest" if root else None
    if flores and (flores / "eng_Latn.devtest").exists():
        en = (flores / "eng_Latn.devtest").read_text(encoding="utf-8").splitlines()
        ru = (flores / "rus_Cyrl.devtest").read_text(encoding="utf-8").splitlines()
    else:
        words = "the river city light green old house walks under a small bridge near morning".split()
        en = [" ".join(words[(i * 7 + k) % len(words)] for k in range(12 + i % 9)) for i in range(1012)]
        ru = [s[::-1] for s in en]
    out = []
    for i in range(10 * n):
        if len(out) == n:
            break
        j = i % len(en)
        msgs = [{"role": "user", "content": f"Translate to Russian: {en[j]}"}, {"role": "assistant", "content": ru[j]}]
        prompt = tok(tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        full = tok(tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)["input_ids"][:seq_len]
        labels = [-100] * min(len(prompt), len(full)) + full[len(prompt):]
        if len(labels) > len(prompt) + 1:  # keep only examples with answer tokens left after truncation
            out.append({"input_ids": full, "labels": labels})
    if len(out) < n:
        raise SystemExit(f"--seq-len {seq_len}: too short, the prompts alone fill it")
    return out


def pad_batch(examples: list[dict], pad_id: int) -> dict:
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(e["input_ids"]), torch.tensor(e["labels"]), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "position_ids": None}


# --------------------------------------------------------------------------- model setup (same for both)


def prepare_model(spec: dict):
    from transformers import set_seed

    from lingotune.models import load_model, untie

    model, tok = load_model(spec["model"], device=spec["device"])
    untie(model)
    for p in model.parameters():
        p.requires_grad_(False)
    if spec["stage"] == 1:
        model.get_input_embeddings().weight.requires_grad_(True)
    else:
        from peft import LoraConfig, get_peft_model

        set_seed(spec["seed"])
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    return model, tok


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


# --------------------------------------------------------------------------- (a) the peer: HF Trainer


def run_peer(spec: dict, model, tok, examples: list[dict]) -> dict:
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from lingotune.models import bf16_supported

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
            learning_rate=LR[spec["stage"]], bf16=bf16, use_cpu=not spec["device"].startswith("cuda"),
            report_to=[], save_strategy="no", eval_strategy="no", logging_steps=1, disable_tqdm=True,
            train_sampling_strategy="sequential", seed=spec["seed"], dataloader_num_workers=0,
        )
        trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=collate, callbacks=[Clock()])
        trainer.train()
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return {"times": times, "tokens": tokens[: len(times)], "losses": losses, "bf16": bf16,
            "grad_bytes": tensor_bytes(trainable),  # a dense fp32 grad per trainable tensor
            "state_bytes": tensor_bytes(v for st in opt.state.values() for v in st.values())}


# --------------------------------------------------------------------------- (b) lingotune's fast path


def run_fast(spec: dict, model, tok, examples: list[dict]) -> dict:
    """Minimal loop on lingotune.fast; the lead will swap this for lingotune's training loop."""
    from lingotune.fast import LazyRowAdam, collate_packed, install_sparse_embedding, label_only_loss, pack_examples

    bsz, steps, lr = spec["batch_size"], spec["steps"], LR[spec["stage"]]
    if spec["stage"] == 1:
        sparse = install_sparse_embedding(model)
        opt = LazyRowAdam(sparse, lr=lr)
        params = None
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, fused=True)
        if spec["grad_ckpt"]:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))  # Trainer's default: linear
    from lingotune.models import bf16_supported

    want = spec["fast_bf16"]
    bf16 = not spec["fp32"] and (want == "on" or (want == "auto" and bf16_supported(spec["device"])))
    pad = tok.pad_token_id
    batches = []
    for i in range(steps):
        chunk = examples[i * bsz:(i + 1) * bsz]
        batch = collate_packed(pack_examples(chunk, spec["seq_len"]), pad) if spec["pack"] else pad_batch(chunk, pad)
        batches.append((batch, sum(len(e["input_ids"]) for e in chunk)))
    model.train()
    times, tokens, losses, grad_bytes = [], [], [], 0
    for batch, n_tok in batches:
        b = {k: (v.to(spec["device"]) if torch.is_tensor(v) else v) for k, v in batch.items()}
        t = time.perf_counter()
        with torch.autocast(spec["device"].split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            loss, _ = label_only_loss(model, b["input_ids"], b["attention_mask"], b["labels"], b["position_ids"])
        loss.backward()
        grads = opt.gradients() if params is None else [p.grad for p in params]
        grad_bytes = max(grad_bytes, tensor_bytes(grads))
        torch.nn.utils.clip_grad_norm_(grads if params is None else params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if spec["device"].startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        tokens.append(n_tok)
        losses.append(loss.item())
    return {"times": times, "tokens": tokens, "losses": losses, "bf16": bf16, "grad_bytes": grad_bytes,
            "state_bytes": tensor_bytes(v for st in opt.state.values() for v in st.values())}


# --------------------------------------------------------------------------- one run = one subprocess


def worker(spec: dict) -> dict:
    torch.manual_seed(spec["seed"])
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    model, tok = prepare_model(spec)
    examples = build_examples(tok, spec["steps"] * spec["batch_size"], spec["seq_len"])
    if spec["device"].startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    result = (run_peer if spec["setup"] == "peer" else run_fast)(spec, model, tok, examples)
    w = spec["warmup"]
    rates = [n / t for n, t in zip(result["tokens"][w:], result["times"][w:])]
    result["tok_s"] = statistics.median(rates) if rates else float("nan")
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20 if spec["device"].startswith("cuda") else None
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
    ap.add_argument("--model", default="bundled", help="bundled | bundled:gemma3-270m | a model directory")
    ap.add_argument("--stage", default="both", choices=["1", "2", "both"])
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per timed run")
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the median")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128, help="examples are truncated to this many tokens")
    ap.add_argument("--repeats", type=int, default=2, help="peer/fast pairs per stage, alternating")
    ap.add_argument("--loss-steps", type=int, default=50, help="steps of the fp32 loss-curve comparison (0: skip)")
    ap.add_argument("--loss-batch-size", type=int, default=2)
    ap.add_argument("--loss-seq-len", type=int, default=128)
    ap.add_argument("--fast-bf16", default="auto", choices=["auto", "on", "off"],
                    help="fast path: bf16 autocast (auto: where lingotune.models.bf16_supported(), like the peer)")
    ap.add_argument("--pack", action="store_true", help="fast path: pack examples into rows of --seq-len")
    ap.add_argument("--grad-ckpt", action="store_true", help="fast path, stage 2: gradient checkpointing")
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
                pack=args.pack, grad_ckpt=args.grad_ckpt, warmup=args.warmup, fast_bf16=args.fast_bf16)
    stages = [1, 2] if args.stage == "both" else [int(args.stage)]
    report = {"args": vars(args), "stages": {}}
    for stage in stages:
        runs = {"peer": [], "fast": []}
        for r in range(args.repeats):
            for setup in ("peer", "fast"):
                res = launch(dict(base, setup=setup, stage=stage, steps=args.steps, batch_size=args.batch_size, fp32=False))
                runs[setup].append(res)
                print(f"stage {stage} {setup:4s} run {r}: {res['tok_s']:7.1f} tok/s  peak RSS {res['peak_rss_mb']:7.0f} MB"
                      f"  bf16={res['bf16']}", flush=True)
        summary = {s: {"tok_s": statistics.median(x["tok_s"] for x in v),
                       "peak_rss_mb": statistics.median(x["peak_rss_mb"] for x in v),
                       "peak_gpu_mb": v[0]["peak_gpu_mb"], "bf16": v[0]["bf16"],
                       "grad_mb": v[0]["grad_bytes"] / 2**20, "state_mb": v[0]["state_bytes"] / 2**20}
                   for s, v in runs.items()}
        p, f = summary["peer"], summary["fast"]
        summary["ratios"] = {"tok_s": f["tok_s"] / p["tok_s"], "peak_rss": f["peak_rss_mb"] / p["peak_rss_mb"],
                             "grad_plus_state": (f["grad_mb"] + f["state_mb"]) / (p["grad_mb"] + p["state_mb"])}
        if args.loss_steps:
            curves = {s: launch(dict(base, setup=s, stage=stage, steps=args.loss_steps, batch_size=args.loss_batch_size,
                                     seq_len=args.loss_seq_len, fp32=True, pack=False))["losses"] for s in ("peer", "fast")}
            rel = [abs(a - b) / max(abs(a), 1e-8) for a, b in zip(curves["peer"], curves["fast"])]
            summary["loss_curves"] = curves
            summary["loss_max_rel_diff"] = max(rel)
            summary["loss_final"] = {s: c[-1] for s, c in curves.items()}
        report["stages"][stage] = summary
        print(f"stage {stage}: peer {p['tok_s']:.1f} tok/s, fast {f['tok_s']:.1f} tok/s (x{summary['ratios']['tok_s']:.2f}); "
              f"peak RSS {p['peak_rss_mb']:.0f} vs {f['peak_rss_mb']:.0f} MB; grad+state {p['grad_mb'] + p['state_mb']:.1f} vs "
              f"{f['grad_mb'] + f['state_mb']:.1f} MB (x{summary['ratios']['grad_plus_state']:.3f})"
              + (f"; loss max rel diff over {args.loss_steps} steps {summary['loss_max_rel_diff']:.4f}" if args.loss_steps else ""),
              flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
