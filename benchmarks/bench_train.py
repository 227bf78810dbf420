"""Training throughput and memory: lingotune's loop vs two peers, HF Trainer + PEFT and TRL's SFTTrainer.

All three train the same model on the same batches, in the same order, at the same learning rate,
schedule and clipping. Stage 1 trains only the input embeddings (model untied first, for all);
stage 2 trains LoRA r=8 on every linear layer of the decoder (for all). Each run is a fresh
subprocess (so peak RSS means something); runs alternate hf, trl, lingotune, hf, trl, lingotune ...

(a) hf: `transformers.Trainer`, bf16 where `lingotune.models.bf16_supported()`, padding to the
    longest example of the batch (`DataCollatorForSeq2Seq`), default optimizer (fused AdamW),
    clipping at 1.0, cosine decay to 10% (`cosine_with_min_lr`), sequential sampling over the
    examples laid out in lingotune's batch order. Stage 1: `requires_grad` on `embed_tokens`
    only. Stage 2: PEFT LoRA.
(b) trl: `trl.SFTTrainer` with the same settings, on the same tokenized prompt-completion examples
    (`input_ids` + `completion_mask`, loss on the completion only), packed: `--trl-packing padding_free`
    (default: each step's examples flattened into one row with restarting position_ids, the same
    examples per step as the others) or `bfd` (`packing=True`, best-fit decreasing over the whole
    set, about as many packed rows per step as hold the others' tokens per step) or `none` (padded rows).
(c) lingotune: `lingotune.train.train_stage`, the loop every method uses, with the recipe's
    defaults (fast path, packed rows, precision auto) and the stage setup of `lingotune.methods`.

Data (--data): `dpart` (default) builds lingotune's DParT sets from the recipe
src/lingotune/recipes/results_ru.yaml (starter data, GSM8K and XQuAD pairs from ../shared/data):
stage 1 trains on the bilingual pairs, stage 2 on the Russian instructions. `flores` uses FLORES
en->ru translation examples, which nearly fill --seq-len (little padding to remove). `synthetic`:
seeded random token examples with a prompt/answer split and lengths from --seq-len/8 to --seq-len
(needs no file; for random-weight models, `--model random:llama-1b` or `random:gemma3-270m`).

MFU: each run's useful FLOPs per step (`step_flops`, the same count for all three setups, from the
step's examples) per second, over the bf16 (or fp32) matmul peak measured by bench_matmul.py at the
start of the invocation (or read from --peak-json).

    python benchmarks/bench_train.py --model bundled --stage both --steps 12 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

LR = {1: 1e-3, 2: 2e-4}
LORA_R = 8
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SETUPS = ("hf", "trl", "lingotune")
RECIPE = Path(__file__).resolve().parents[1] / "src" / "lingotune" / "recipes" / "results_ru.yaml"
HERE = Path(__file__).resolve().parent

# Random-weight models of published shapes (for the GPU comparison; nothing to download). --tiny shrinks them
# to a few layers of width 64 so the same code paths run on a CPU in seconds.
RANDOM_MODELS = {
    # Llama-3.2-1B: tied embeddings like the real one
    "llama-1b": {"model_type": "llama", "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
                 "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
                 "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 131072,
                 "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 1, "pad_token_id": 0},
    # Gemma-3-270M, as in the bundled GGUF's config (tests/test_bench.py checks it when the GGUF is installed)
    "gemma3-270m": {"model_type": "gemma3_text", "vocab_size": 262144, "hidden_size": 640, "intermediate_size": 2048,
                    "num_hidden_layers": 18, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
                    "sliding_window": 512, "rms_norm_eps": 1e-6, "hidden_activation": "gelu_pytorch_tanh",
                    "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                                        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
                    "query_pre_attn_scalar": 256, "max_position_embeddings": 32768,
                    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
                    "tie_word_embeddings": True, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0},
}
TINY = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}


# --------------------------------------------------------------------------- useful FLOPs per step


def model_shape(config) -> dict:
    """The sizes that set a decoder's matmul FLOPs, from a transformers config (or a dict of its fields)."""
    c = config if isinstance(config, dict) else config.to_dict()
    c = c.get("text_config") or c
    heads, hidden = c["num_attention_heads"], c["hidden_size"]
    layers = c["num_hidden_layers"]
    window = c.get("sliding_window")
    types = c.get("layer_types") or ["full_attention"] * layers
    return {"hidden": hidden, "layers": layers, "heads": heads, "kv_heads": c.get("num_key_value_heads") or heads,
            "head_dim": c.get("head_dim") or hidden // heads, "intermediate": c["intermediate_size"],
            "vocab": c["vocab_size"],
            "windows": [window if t == "sliding_attention" and window else None for t in types]}


def linear_shapes(shape: dict) -> list[tuple[int, int]]:
    """(in, out) of the seven linear layers of one decoder layer (q, k, v, o, gate, up, down)."""
    h, q, kv, i = shape["hidden"], shape["heads"] * shape["head_dim"], shape["kv_heads"] * shape["head_dim"], shape["intermediate"]
    return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]


def attended(length: int, window: int | None) -> int:
    """Query-key pairs a causal example of `length` tokens needs: sum over positions of min(pos + 1, window)."""
    if window is None or window >= length:
        return length * (length + 1) // 2
    return window * (window + 1) // 2 + (length - window) * window


def step_flops(shape: dict, lengths: list[int], label_positions: int, stage: int, lora_r: int = LORA_R) -> dict:
    """Useful FLOPs of one training step on examples of `lengths` tokens, `label_positions` of which predict a label.

    forward:   2 x (decoder linear weights) per token + attention (QK^T and AV: 4 x heads x head_dim per
               attended query-key pair, causal, inside each example, sliding windows honoured)
               + the head (2 x hidden x vocab) at label positions only (the loss needs no other logits)
    backward:  activation gradients through everything (stage 1 needs them down to the embeddings):
               as many FLOPs as the forward for the linears and the head, twice for attention (dQ, dK, dV, dP)
    weights:   gradients only for what trains: stage 1 none (the embedding gradient is a row scatter, no
               matmul); stage 2 the LoRA matrices (their forward, activation and weight gradients: 3 x 2 x r x
               (in + out) per token and linear layer)
    Norms, activations, softmax, the optimizer: not counted (not matmuls).
    """
    tokens = sum(lengths)
    body = shape["layers"] * sum(a * b for a, b in linear_shapes(shape))
    pairs = sum(attended(n, w) for n in lengths for w in shape["windows"])
    attn = 4 * shape["heads"] * shape["head_dim"] * pairs
    head = 2 * shape["hidden"] * shape["vocab"] * label_positions
    fwd = 2 * body * tokens + attn + head
    act_bwd = 2 * body * tokens + 2 * attn + head
    lora = shape["layers"] * sum(lora_r * (a + b) for a, b in linear_shapes(shape)) if stage == 2 else 0
    weights = 3 * 2 * lora * tokens
    return {"forward": fwd, "activation_backward": act_bwd, "weight_grads": weights, "total": fwd + act_bwd + weights}


def label_positions(labels) -> int:
    """Positions whose next token carries a label (the logits the loss needs)."""
    return sum(1 for x in list(labels)[1:] if x != -100)


def batch_stats(batch: dict) -> tuple[int, list[int], int]:
    """(real tokens, example lengths, label positions) of a collated batch: padded rows (attention_mask, one
    example per row, right padding) or packed/flattened rows (position_ids restarting at every example)."""
    labels = batch["labels"]
    labelled = int((labels[:, 1:] != -100).sum())
    if batch.get("attention_mask") is not None:
        lengths = [int(n) for n in batch["attention_mask"].sum(dim=1)]
    else:
        lengths = []
        for row in batch["position_ids"]:
            starts = (row == 0).nonzero().flatten().tolist() + [row.numel()]
            lengths += [b - a for a, b in zip(starts, starts[1:]) if b > a]
    return sum(lengths), lengths, labelled


# --------------------------------------------------------------------------- data and model (the same for all)


def synthetic_items(n: int, seq_len: int, vocab: int, seed: int) -> list[dict]:
    """`n` random-token examples {input_ids, labels}: lengths uniform in [max(4, seq_len // 8), seq_len], the first
    30-80 % of each a prompt (label -100), the rest the answer; ids from 3 up (0-2 left to pad/eos/unk). Seeded."""
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        length = rng.randint(max(4, seq_len // 8), seq_len)
        prompt = min(length - 1, max(1, round(length * rng.uniform(0.3, 0.8))))
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        items.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return items


def bench_recipe(spec: dict):
    """The lingotune recipe of this run: results_ru's data, the bench's sizes, LR and precision."""
    from lingotune.recipe import load_recipe

    precision = "fp32" if spec["fp32"] else "auto"
    sets = [f"train.batch_size={spec['batch_size']}", f"train.max_len={spec['seq_len']}", "train.warmup_steps=0",
            f"train.lr={LR[2]}", f"train.embedding_lr={LR[1]}", f"train.precision={precision}",
            f"train.pack={str(spec['pack']).lower()}", f"train.fast={str(spec['fast']).lower()}",
            f"train.gradient_checkpointing={str(spec['grad_ckpt']).lower()}",
            f"train.checkpoint_every={10**6}", "method.lora.dropout=0.0", f"method.lora.r={LORA_R}",
            f"method.lora.target_modules=[{','.join(LINEAR)}]", f"model.source={spec['model']}"]
    return load_recipe(str(RECIPE), sets + variant_sets(spec.get("setup", "lingotune")))


def variant_sets(setup: str) -> list[str]:
    """A lingotune variant's recipe overrides: 'lingotune[train.frozen_bf16=false]' -> ['train.frozen_bf16=false']."""
    inner = setup[len("lingotune["):-1] if setup.startswith("lingotune[") else ""
    return [x for x in inner.split(";") if x]


def build_items(spec: dict, tok, recipe, vocab: int) -> tuple[list[dict], list[dict]]:
    """(tokenized examples {input_ids, labels} with answer-only labels, the examples of the first
    `steps` batches laid out in lingotune's batch order, for the peers' sequential samplers)."""
    from lingotune.data.batches import tokenize_all
    from lingotune.data.records import Example
    from lingotune.train import plan_of

    if spec["data"] == "synthetic":
        items = synthetic_items(max(256, spec["steps"] * spec["batch_size"]), spec["seq_len"], vocab,
                                spec["seed"] + spec["stage"])
    else:
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
        items, _ = tokenize_all(examples, tok, spec["seq_len"], "answer",
                                pairs=recipe.data.pair_batching == "together")
    plan = plan_of(items, spec["batch_size"], recipe.seed)
    return items, [items[i] for step in range(spec["steps"]) for i in plan.indices(step)]


def bench_tokenizer():
    """A stand-in tokenizer for random-weight models on synthetic ids: only its pad/eos/unk ids are used."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    inner = Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1, "<unk>": 2}, unk_token="<unk>"))
    tok = PreTrainedTokenizerFast(tokenizer_object=inner, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tok.padding_side = "right"
    return tok


def random_config(name: str, tiny: bool = False) -> dict:
    """The config fields of a random-weight model of a published shape (`RANDOM_MODELS`); tiny: a few layers
    of width 64 (Gemma's sliding window shrinks to 16)."""
    fields = dict(RANDOM_MODELS[name])
    if tiny:
        fields.update(TINY)
        if "layer_types" in fields:
            fields.update(layer_types=["sliding_attention", "full_attention"], sliding_window=16,
                          query_pre_attn_scalar=16)
    return fields


def load_bench_model(spec: dict):
    """(model, tokenizer): `random:NAME` builds a random-weight model of a published shape (seeded, fp32, on the
    device), anything else goes through lingotune.models.load_model."""
    if spec["model"].startswith("random:"):
        from transformers import AutoConfig, AutoModelForCausalLM

        fields = random_config(spec["model"].split(":", 1)[1], spec.get("tiny", False))
        config = AutoConfig.for_model(**fields)
        kw = {"attn_implementation": spec["attn"]} if spec["attn"] else {}
        torch.manual_seed(spec["seed"])
        with torch.device(spec["device"]):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, **kw)
        model.config.use_cache = False
        return model, bench_tokenizer()
    from lingotune.models import load_model

    return load_model(spec["model"], device=spec["device"], attn_implementation=spec["attn"])


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


# --------------------------------------------------------------------------- (a), (b) the peers: HF Trainer and TRL


def peer_model(spec: dict, model):
    """Untie; stage 1: only the input embeddings train; stage 2: PEFT LoRA on every linear layer."""
    from transformers import set_seed

    from lingotune.models import untie

    untie(model)
    for p in model.parameters():
        p.requires_grad_(False)
    if spec["stage"] == 1:
        model.get_input_embeddings().weight.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    set_seed(spec["seed"])
    return get_peft_model(model, LoraConfig(r=LORA_R, lora_alpha=16, lora_dropout=0.0, target_modules=LINEAR,
                                            task_type="CAUSAL_LM"))


def peer_args(spec: dict, out: str) -> dict:
    """TrainingArguments fields both peers share: sizes, LR, schedule (cosine to 10 %), precision, sampling."""
    from lingotune.models import bf16_supported

    bf16 = bf16_supported(spec["device"]) and not spec["fp32"]
    from transformers import TrainingArguments

    fields = dict(output_dir=out, per_device_train_batch_size=spec["batch_size"], max_steps=spec["steps"],
                learning_rate=LR[spec["stage"]], lr_scheduler_type="cosine_with_min_lr",
                lr_scheduler_kwargs={"min_lr_rate": 0.1}, warmup_steps=0, bf16=bf16, max_grad_norm=1.0,
                weight_decay=0.0, use_cpu=not spec["device"].startswith("cuda"), report_to=[], save_strategy="no",
                eval_strategy="no", logging_steps=1, disable_tqdm=True, train_sampling_strategy="sequential",
                seed=spec["seed"], dataloader_num_workers=0, gradient_checkpointing=False)
    known = TrainingArguments.__dataclass_fields__  # an older transformers lacks e.g. train_sampling_strategy
    if "train_sampling_strategy" not in known:
        print("warning: this transformers has no train_sampling_strategy: the peers sample at random", file=sys.stderr)
    return {k: v for k, v in fields.items() if k in known}


def clock(spec: dict, times: list, losses: list):
    from transformers import TrainerCallback

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

    return Clock()


def counting(collate, seen: list):
    """Wrap a collator: record each batch's (real tokens, example lengths, label positions)."""
    def wrapped(features):
        batch = collate(features)
        seen.append(batch_stats(batch))
        return batch

    return wrapped


def peer_result(trainer, model, times, losses, seen, bf16: bool, notes: list[str]) -> dict:
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    seen = seen[: len(times)]
    return {"times": times, "tokens": [s[0] for s in seen], "lengths": [s[1] for s in seen],
            "labelled": [s[2] for s in seen], "losses": losses, "bf16": bf16, "notes": notes,
            "grad_mb": tensor_bytes(trainable) / 2**20,  # a dense grad per trainable tensor, the parameter's dtype
            "state_mb": tensor_bytes(v for st in opt.state.values() for v in st.values()) / 2**20}


def run_hf(spec: dict, model, tok, items: list[dict]) -> dict:
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    model = peer_model(spec, model)
    times, losses, seen = [], [], []
    collate = counting(DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100), seen)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(**peer_args(spec, out))
        trainer = Trainer(model=model, args=args, train_dataset=items, data_collator=collate,
                          callbacks=[clock(spec, times, losses)])
        trainer.train()
    return peer_result(trainer, model, times, losses, seen, args.bf16, ["padded rows"])


def trl_dataset(items: list[dict]):
    """The examples as TRL's tokenized prompt-completion rows: input_ids + completion_mask (1 on the answer)."""
    from datasets import Dataset

    return Dataset.from_list([{"input_ids": it["input_ids"], "completion_mask": [int(x != -100) for x in it["labels"]]}
                              for it in items])


@torch.no_grad()
def packed_attention_separate(model, collate, items: list[dict], bf16: bool) -> bool:
    """Whether the model, fed a collated packed batch of two examples as TRL feeds it (use_cache off, bf16 autocast
    as in training), gives the second example the logits it has alone: attention stays inside each example."""
    a, b = items[0], items[1]
    batch = collate([{"input_ids": a["input_ids"][:6], "labels": a["input_ids"][:6]},
                     {"input_ids": b["input_ids"][:5], "labels": b["input_ids"][:5]}])
    dev = model.get_input_embeddings().weight.device
    kw = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in batch.items() if k != "labels"}
    was = model.training
    model.eval()
    try:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            packed = model(**kw, use_cache=False).logits[0, -5:].float()
            alone = model(input_ids=torch.tensor([b["input_ids"][:5]], device=dev), use_cache=False).logits[0].float()
    finally:
        model.train(was)
    return bool((packed - alone).abs().max() <= 3e-2 * alone.abs().max())


def run_trl(spec: dict, model, tok, items: list[dict]) -> dict:
    from trl import SFTConfig, SFTTrainer

    model = peer_model(spec, model)
    times, losses, seen = [], [], []
    bfd = spec["trl_packing"] == "bfd"
    batch_size = spec["batch_size"]
    if bfd:  # about as many packed rows of seq_len per step as hold the others' tokens per step
        mean_tokens = sum(len(it["input_ids"]) for it in items) / max(1, spec["steps"])
        batch_size = max(1, round(mean_tokens / spec["seq_len"]))
    with tempfile.TemporaryDirectory() as out:
        fields = dict(peer_args(spec, out), per_device_train_batch_size=batch_size)
        # padding-free: the examples are already cut to seq_len, and TRL refuses a max_length it would not enforce
        args = SFTConfig(**fields, max_length=spec["seq_len"] if bfd else None, packing=bfd, packing_strategy="bfd",
                         padding_free=spec["trl_packing"] == "padding_free", completion_only_loss=True,
                         dataset_num_proc=None, shuffle_dataset=False)
        trainer = SFTTrainer(model=model, args=args, train_dataset=trl_dataset(items), processing_class=tok,
                             callbacks=[clock(spec, times, losses)])
        separate = (packed_attention_separate(trainer.model, trainer.data_collator, items, args.bf16)
                    if trainer.padding_free else None)  # padded rows: one example per row, nothing to probe
        trainer.data_collator = counting(trainer.data_collator, seen)
        assert not args.gradient_checkpointing  # TRL's default is on; the others run without it
        trainer.train()
    notes = [f"{spec['trl_packing']}: {'one flattened row per step' if trainer.padding_free else 'padded rows'}",
             f"attn {trainer.model.config._attn_implementation}"]
    if separate is not None:
        notes.insert(1, f"attention {'inside each example' if separate else 'CROSSES example boundaries'}")
    return peer_result(trainer, model, times, losses, seen, args.bf16, notes)


# --------------------------------------------------------------------------- (c) lingotune's training loop


def run_lingotune(spec: dict, model, tok, items: list[dict], recipe, in_order: list[dict]) -> dict:
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
    bs = spec["batch_size"]
    steps = [in_order[s * bs:(s + 1) * bs] for s in range(len(recs))]  # the same examples the loop's plan drew
    return {"times": [r["seconds"] for r in recs], "tokens": [r["tokens"] for r in recs],
            "lengths": [[len(it["input_ids"]) for it in step] for step in steps],
            "labelled": [sum(label_positions(it["labels"]) for it in step) for step in steps],
            "losses": [r["loss"] for r in recs], "bf16": accelerator_for(recipe.train.precision).mixed_precision == "bf16",
            "notes": res.fast_path + [f"attn {getattr(model.config, '_attn_implementation', None)}"], "grad_mb": res.grad_mb, "state_mb": res.optimizer_state_mb}


# --------------------------------------------------------------------------- one run = one subprocess


def worker(spec: dict) -> dict:
    torch.manual_seed(spec["seed"])
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    recipe = bench_recipe(spec)
    if recipe.model.attn_implementation:  # a variant's kernel (--lingotune-also model.attn_implementation=eager)
        spec = dict(spec, attn=recipe.model.attn_implementation)
    model, tok = load_bench_model(spec)
    shape = model_shape(model.config)
    items, in_order = build_items(spec, tok, recipe, shape["vocab"])
    if spec["device"].startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    if spec["setup"] == "hf":
        result = run_hf(spec, model, tok, in_order)
    elif spec["setup"] == "trl":
        result = run_trl(spec, model, tok, in_order)
    else:  # lingotune, or a variant of it (--lingotune-also)
        result = run_lingotune(spec, model, tok, items, recipe, in_order)
    w = spec["warmup"]
    flops = [step_flops(shape, n, lab, spec["stage"])["total"] for n, lab in zip(result["lengths"], result["labelled"])]
    rates = [n / t for n, t in zip(result["tokens"][w:], result["times"][w:])]
    result["tok_s"] = statistics.median(rates) if rates else float("nan")
    flop_rates = [f / t for f, t in zip(flops[w:], result["times"][w:])]
    result["flop_s"] = statistics.median(flop_rates) if flop_rates else float("nan")
    result["flops_per_token"] = sum(flops) / max(1, sum(result["tokens"][: len(flops)]))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20 if spec["device"].startswith("cuda") else None
    result["tokens_per_step"] = statistics.mean(result["tokens"]) if result["tokens"] else 0
    result["shape"] = shape
    del result["lengths"]
    return result


def launch(spec: dict, keep_going: bool = False) -> dict | None:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        msg = f"{spec['setup']} stage {spec['stage']} failed:\n{proc.stderr[-3000:]}"
        if keep_going:
            print(msg, file=sys.stderr, flush=True)
            return None
        raise SystemExit(msg)
    return json.loads(lines[-1][len("RESULT "):])


def matmul_peak(args) -> dict | None:
    """{bf16, fp32: FLOP/s} of this device: from --peak-json, else measured now by bench_matmul.py (or None)."""
    if args.peak_json:
        data = json.loads(Path(args.peak_json).read_text())
    elif args.no_peak:
        return None
    else:
        cmd = [sys.executable, str(HERE / "bench_matmul.py"), "--device", args.device.split(":")[0]]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(cmd + ["--json", f"{tmp}/peak.json"], check=True)
            data = json.loads(Path(f"{tmp}/peak.json").read_text())
    return data.get(args.device.split(":")[0], next(iter(data.values())))


def summarize(runs: dict, peak: dict | None) -> dict:
    summary = {}
    for s, v in runs.items():
        if not v:
            continue
        mfu_key = "bf16" if v[0]["bf16"] else "fp32"
        flop_s = statistics.median(x["flop_s"] for x in v)
        summary[s] = {"tok_s": statistics.median(x["tok_s"] for x in v), "tok_s_runs": [x["tok_s"] for x in v],
                      "useful_flop_s": flop_s, "flops_per_token": v[0]["flops_per_token"],
                      "mfu": flop_s / peak["peak"][mfu_key] if peak else None, "mfu_vs": mfu_key,
                      "peak_rss_mb": statistics.median(x["peak_rss_mb"] for x in v),
                      "peak_gpu_mb": v[0]["peak_gpu_mb"], "bf16": v[0]["bf16"], "notes": v[0]["notes"],
                      "tokens_per_step": v[0]["tokens_per_step"], "grad_mb": v[0]["grad_mb"], "state_mb": v[0]["state_mb"]}
    f = summary.get("lingotune")
    for s, p in list(summary.items()):
        if s == "lingotune" or not f:
            continue
        r = {"tok_s": f["tok_s"] / p["tok_s"], "peak_rss": f["peak_rss_mb"] / p["peak_rss_mb"],
             "grad_plus_state": (f["grad_mb"] + f["state_mb"]) / (p["grad_mb"] + p["state_mb"])}
        if p["peak_gpu_mb"] and f["peak_gpu_mb"]:
            r["peak_gpu"] = f["peak_gpu_mb"] / p["peak_gpu_mb"]
        summary.setdefault("ratios", {})[f"lingotune_vs_{s}"] = r
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bundled",
                    help="bundled | bundled:gemma3-270m | random:llama-1b | random:gemma3-270m | a model directory or hub id")
    ap.add_argument("--tiny", action="store_true", help="random:NAME models shrunk to a few layers of width 64")
    ap.add_argument("--peers", default="hf,trl", help="peers to run beside lingotune, comma-separated (hf, trl)")
    ap.add_argument("--trl-packing", default="padding_free", choices=["padding_free", "bfd", "none"],
                    help="TRL's packing: padding-free rows of each step's examples, bfd over the whole set, or none "
                         "(padded rows, TRL's own collator)")
    ap.add_argument("--stage", default="both", choices=["1", "2", "both"])
    ap.add_argument("--data", default="dpart", choices=["dpart", "flores", "synthetic"])
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per timed run")
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the median")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256, help="examples are truncated to this many tokens")
    ap.add_argument("--repeats", type=int, default=2, help="rounds per stage, each running every setup in turn")
    ap.add_argument("--loss-steps", type=int, default=50, help="steps of the fp32 loss-curve comparison (0: skip)")
    ap.add_argument("--loss-batch-size", type=int, default=2)
    ap.add_argument("--no-pack", action="store_true", help="lingotune: train.pack=false (padded rows, like the peer)")
    ap.add_argument("--no-fast", action="store_true",
                    help="lingotune: train.fast=false (dense AdamW, full logits), to check the loop itself against the peer")
    ap.add_argument("--grad-ckpt", action="store_true", help="lingotune: train.gradient_checkpointing=true")
    ap.add_argument("--lingotune-also", action="append", default=[], metavar="KEY=VALUE[;KEY=VALUE]",
                    help="also run lingotune with these recipe overrides as a setup of its own, alternating with the "
                         "others (e.g. 'train.frozen_bf16=false'); its ratio is lingotune's over it; repeatable")
    ap.add_argument("--attn", default=None, help="attention kernel for all setups (e.g. eager; default: transformers')")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    ap.add_argument("--peak-json", help="matmul peak from bench_matmul.py --json (default: measure it first)")
    ap.add_argument("--no-peak", action="store_true", help="no matmul peak, no MFU")
    ap.add_argument("--keep-going", action="store_true", help="a failed run (e.g. out of memory) is reported and skipped")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write all results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return

    peers = [p for p in args.peers.split(",") if p]
    if set(peers) - set(SETUPS[:2]):
        ap.error(f"--peers: unknown {sorted(set(peers) - set(SETUPS[:2]))}")
    setups = [s for s in SETUPS if s in peers or s == "lingotune"] + [f"lingotune[{v}]" for v in args.lingotune_also]
    base = dict(model=args.model, tiny=args.tiny, device=args.device, seq_len=args.seq_len, seed=args.seed,
                threads=args.threads, data=args.data, pack=not args.no_pack, fast=not args.no_fast, attn=args.attn,
                grad_ckpt=args.grad_ckpt, warmup=args.warmup, trl_packing=args.trl_packing)
    stages = [1, 2] if args.stage == "both" else [int(args.stage)]
    peak = matmul_peak(args)
    report = {"args": vars(args), "environment": environment(args.device), "matmul_peak": peak, "stages": {}}
    if peak:
        print(f"matmul peak ({peak['name']}): bf16 {peak['peak']['bf16'] / 1e12:.3f}, "
              f"fp32 {peak['peak']['fp32'] / 1e12:.3f} TFLOP/s", flush=True)
    for stage in stages:
        runs = {s: [] for s in setups}
        for r in range(args.repeats):
            for setup in setups:
                t = time.perf_counter()
                res = launch(dict(base, setup=setup, stage=stage, steps=args.steps, batch_size=args.batch_size,
                                  fp32=False), args.keep_going)
                if res is None:
                    continue
                runs[setup].append(res)
                mfu = f"  MFU {res['flop_s'] / peak['peak']['bf16' if res['bf16'] else 'fp32']:.1%}" if peak else ""
                print(f"stage {stage} {setup:9s} run {r}: {res['tok_s']:7.1f} tok/s{mfu}  peak RSS {res['peak_rss_mb']:7.0f} MB"
                      + (f"  GPU {res['peak_gpu_mb']:.0f} MB" if res["peak_gpu_mb"] else "")
                      + f"  bf16={res['bf16']}  {', '.join(res['notes'])}  ({time.perf_counter() - t:.0f} s)", flush=True)
                if args.json:  # after every run, so a cut-short invocation keeps what it measured
                    report["stages"][stage] = summarize(runs, peak)
                    Path(args.json).write_text(json.dumps(report, indent=1))
        summary = summarize(runs, peak)
        if args.loss_steps:
            curves = {}
            for s in setups:
                res = launch(dict(base, setup=s, stage=stage, steps=args.loss_steps, batch_size=args.loss_batch_size,
                                  fp32=True), args.keep_going)
                if res:
                    curves[s] = res["losses"]
            summary["loss_curves"] = curves
            summary["loss_first_last"] = {s: (c[0], c[-1]) for s, c in curves.items() if c}
            for s in peers:
                if s in curves and "lingotune" in curves:
                    rel = [abs(a - b) / max(abs(a), 1e-8) for a, b in zip(curves[s], curves["lingotune"])]
                    summary.setdefault("loss_max_rel_diff", {})[s] = max(rel)
            if args.trl_packing == "bfd":
                summary["loss_note"] = "trl with bfd packing trains on other batches: its curve is not step-comparable"
        report["stages"][stage] = summary
        for name, ratio in summary.get("ratios", {}).items():
            p = summary[name.split("_vs_")[1]]
            f = summary["lingotune"]
            print(f"stage {stage} {name}: {p['tok_s']:.1f} -> {f['tok_s']:.1f} tok/s (x{ratio['tok_s']:.2f}); "
                  f"peak RSS {p['peak_rss_mb']:.0f} -> {f['peak_rss_mb']:.0f} MB (x{ratio['peak_rss']:.2f}); "
                  + (f"peak GPU x{ratio['peak_gpu']:.2f}; " if "peak_gpu" in ratio else "")
                  + f"grad+state {p['grad_mb'] + p['state_mb']:.1f} -> {f['grad_mb'] + f['state_mb']:.1f} MiB "
                  f"(x{ratio['grad_plus_state']:.4f})"
                  + (f"; loss max rel diff {summary['loss_max_rel_diff'][name.split('_vs_')[1]]:.4f}"
                     if name.split("_vs_")[1] in summary.get("loss_max_rel_diff", {}) else ""), flush=True)
        if args.json:  # after every stage, so a cut-short run keeps what it measured
            Path(args.json).write_text(json.dumps(report, indent=1))


def environment(device: str) -> dict:
    import transformers

    env = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
           "threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    for name in ("peft", "accelerate", "trl", "datasets", "flash_attn"):
        try:
            env[name] = __import__(name).__version__
        except Exception:  # absent or broken: say so, don't fail
            env[name] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    return env


if __name__ == "__main__":
    main()
