"""The one training loop, shared by every method and stage.

batches (seeded plan) -> loss -> backward -> clip -> step -> log -> checkpoint -> (resume)

A method only decides what trains (its `setup` returns parameter groups). Scaling out goes
through accelerate: the same loop runs under `accelerate launch` (DDP, DeepSpeed, FSDP).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from lingotune.data.batches import BatchPlan, collate
from lingotune.models import bf16_supported, count_parameters


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, unwritable checkpoint); earlier checkpoints are intact."""


class TrainingInterrupted(TrainingError):
    """The run was interrupted; a checkpoint was written and `--resume` continues from it."""


@dataclass
class StageResult:
    stage: str
    steps: int
    seconds: float
    tokens: int
    trainable_params: int
    total_params: int
    groups: dict[str, int]
    first_loss: float | None
    final_loss: float | None
    resumed_from: int = 0
    fast_path: list[str] = field(default_factory=list)
    grad_mb: float = 0.0  # largest gradient held at a step (trainable tensors' grads, or the touched rows')
    optimizer_state_mb: float = 0.0  # optimizer state at the end of the stage

    def to_dict(self) -> dict:
        return asdict(self)


_ACCELERATOR = None


def accelerator_for(precision: str):
    """One accelerate.Accelerator per process (accelerate keeps global state)."""
    global _ACCELERATOR
    from accelerate import Accelerator

    device = "cuda" if torch.cuda.is_available() else "cpu"
    use_bf16 = precision == "bf16" or (precision == "auto" and bf16_supported(device))
    mp = "bf16" if use_bf16 else "no"
    if _ACCELERATOR is None or _ACCELERATOR.mixed_precision != mp:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=False)
        _ACCELERATOR = Accelerator(mixed_precision=mp, cpu=device == "cpu")
    return _ACCELERATOR


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0.1 at the last step."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _save_checkpoint(ckpt_dir: Path, tracked: dict[str, torch.Tensor], optimizer, scheduler, step: int, extra: dict) -> None:
    """Write atomically: a full new checkpoint replaces the old one only once it is complete."""
    tmp = ckpt_dir.with_name(ckpt_dir.name + ".tmp")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(
            {"params": {n: p.detach().cpu().clone() for n, p in tracked.items()}, "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()},
            tmp / "state.pt",
        )
        (tmp / "progress.json").write_text(json.dumps({"step": step, **extra}))
        old = ckpt_dir.with_name(ckpt_dir.name + ".old")
        if ckpt_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            ckpt_dir.rename(old)
        tmp.rename(ckpt_dir)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise TrainingError(f"cannot write checkpoint {ckpt_dir}: {e.strerror or e}; the previous checkpoint is intact") from None


def load_checkpoint(ckpt_dir: Path) -> tuple[dict, int] | None:
    if not (ckpt_dir / "progress.json").exists():
        return None
    step = json.loads((ckpt_dir / "progress.json").read_text())["step"]
    return torch.load(ckpt_dir / "state.pt", weights_only=False), step


def _trim_log(log: Path, stage_key: dict, upto: int) -> None:
    """Drop metric lines of this stage past the checkpoint we resume from."""
    if not log.exists():
        return
    keep = []
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        same = all(rec.get(k) == v for k, v in stage_key.items())
        if not (same and rec.get("step", 0) > upto):
            keep.append(line)
    log.write_text("".join(x + "\n" for x in keep))


def default_loss(model, batch) -> torch.Tensor:
    # no KV cache: transformers only applies the packed (block-diagonal) mask when there is none
    return model(**batch, use_cache=False).loss


def fast_loss(model, batch) -> torch.Tensor:
    """The same mean cross-entropy, with the output head applied only where labels exist."""
    from lingotune.fast import label_only_loss

    return label_only_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"], batch.get("position_ids"))[0]


def make_batch(items: list[dict], pad_id: int, max_len: int, pack: bool, device) -> dict:
    """Padded rows (one example each), or packed rows of at most max_len tokens.

    Packed rows carry position_ids that restart at every example and attention_mask=None, which
    transformers turns into a block-diagonal causal mask: no attention across examples, and the
    mean loss over the label tokens is the same as unpacked.
    """
    from lingotune.fast import collate_packed, pack_examples

    batch = collate_packed(pack_examples(items, max_len), pad_id) if pack else collate(items, pad_id)
    return {k: (v.to(device) if v is not None else None) for k, v in batch.items()}


@torch.no_grad()
def packing_respected(model) -> bool:
    """Whether `model` keeps attention inside each packed example.

    Transformers models built on its masking utilities do; a model with its own attention code
    (remote code, some architectures) may ignore restarting position_ids and let a packed example
    attend to the one before it. A two-example probe compares the second example's logits packed
    and alone (eval mode, a few tokens); leaking attention changes them far beyond rounding.
    """
    weight = model.get_input_embeddings().weight
    device, tol = weight.device, 1e-3 if weight.dtype == torch.float32 else 3e-2
    vocab = model.get_input_embeddings().num_embeddings
    a, b = [(vocab // 2 + i) % vocab for i in range(5)], [(vocab // 3 + i) % vocab for i in range(4)]
    was_training = model.training
    model.eval()
    try:
        ids = torch.tensor([a + b], device=device)
        pos = torch.tensor([list(range(len(a))) + list(range(len(b)))], device=device)
        packed = model(input_ids=ids, position_ids=pos, attention_mask=None, use_cache=False).logits[0, len(a):].float()
        alone = model(input_ids=torch.tensor([b], device=device), use_cache=False).logits[0].float()
    finally:
        model.train(was_training)
    return bool((packed - alone).abs().max() <= tol * alone.abs().max())


def _checkpointing(model, on: bool) -> None:
    """Activation (gradient) checkpointing on or off; transformers >= 5.2x renamed the methods."""
    if hasattr(model, "activation_checkpointing_enable"):
        if on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def _grad_bytes(tensors) -> int:
    """Bytes of the gradients: a parameter's .grad, or the tensor itself (row gradients)."""
    return _nbytes(t.grad if isinstance(t, torch.nn.Parameter) else t for t in tensors)


def make_optimizer(model, groups: list[dict], cfg, single_process: bool):
    """(optimizer, params to clip, fast-path notes).

    The fast path for a stage that trains only the (untied) input embeddings: a SparseEmbedding
    that gathers the batch's rows, and LazyRowAdam with state for touched rows only (see
    lingotune.fast for its exact semantics). Everything else: AdamW over the groups.
    """
    from lingotune.fast import LazyRowAdam, install_sparse_embedding
    from lingotune.models import is_tied

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if cfg.fast and single_process and [g["name"] for g in groups] == ["embeddings"] and not is_tied(base):
        sparse = install_sparse_embedding(model)
        opt = LazyRowAdam([sparse], lr=groups[0]["lr"], betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
        opt.param_groups[0]["name"] = "embeddings"
        return opt, opt.gradients, ["row-sparse embeddings, lazy row Adam"]
    opt_groups = [{"params": g["params"], "lr": g["lr"], "name": g["name"]} for g in groups]
    opt = torch.optim.AdamW(opt_groups, lr=groups[0]["lr"], weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
    return opt, lambda: [p for g in groups for p in g["params"]], []


def train_stage(
    model,
    groups: list[dict],
    items: list[dict],
    *,
    steps: int,
    cfg,
    seed: int,
    pad_id: int,
    stage_dir: Path,
    log_path: Path,
    log_key: dict,
    resume: bool = False,
    on_step: Callable[[int, float], None] | None = None,
    progress=None,
) -> StageResult:
    """Train `groups` of `model` for `steps` optimizer steps on tokenized `items`.

    cfg: a TrainConfig (batch_size, grad_accum, warmup_steps, weight_decay, max_grad_norm,
    precision, checkpoint_every, log_every). Writes metrics lines to `log_path` (tagged with
    `log_key`) and checkpoints to `stage_dir/checkpoint`; with `resume`, continues from it.
    """
    if not items:
        raise TrainingError(f"{log_key.get('stage', 'stage')}: no training examples (check the data section)")
    accelerator = accelerator_for(cfg.precision)
    trainable, total = count_parameters(model)
    group_counts = {g["name"]: sum(p.numel() for p in g["params"]) for g in groups}
    tracked = {n: p for n, p in model.named_parameters() if p.requires_grad}  # by name, before any module swap
    optimizer, clip_params, fast_notes = make_optimizer(model, groups, cfg, accelerator.num_processes == 1)
    # label-only logits call the decoder directly, which would bypass a DDP/FSDP wrapper's forward
    single = accelerator.num_processes == 1
    loss_fn = fast_loss if cfg.fast and single else default_loss
    if loss_fn is fast_loss:
        fast_notes.append("label-only logits")
    if accelerator.mixed_precision == "bf16":
        fast_notes.append("bf16 autocast")
    pack = cfg.pack and packing_respected(accelerator.unwrap_model(model))
    if pack:
        fast_notes.append("packed rows")
    elif cfg.pack:
        fast_notes.append("padded rows: this model ignores packed position_ids")
    base = accelerator.unwrap_model(model)
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    if cfg.gradient_checkpointing:
        _checkpointing(base, True)
        fast_notes.append("gradient checkpointing")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, cfg.warmup_steps))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    plan = BatchPlan(len(items), cfg.batch_size * cfg.grad_accum, seed)
    ckpt_dir = stage_dir / "checkpoint"
    start = 0
    if resume:
        loaded = load_checkpoint(ckpt_dir)
        if loaded:
            state, done = loaded
            with torch.no_grad():
                for n, t in state["params"].items():
                    tracked[n].copy_(t)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"])
            start = done
            _trim_log(log_path, log_key, done)
    model.train()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tokens_total = 0
    grad_bytes = 0
    first_loss = final_loss = None
    task = progress.add_task(f"{log_key.get('method', '')} {log_key.get('stage', '')}".strip(), total=steps, completed=start) if progress else None
    step = start
    try:
        with log_path.open("a") as log:
            for step, idx in plan.batches(start, steps):
                ts = time.perf_counter()
                step_loss, step_tokens = 0.0, 0
                micro = [idx[i : i + cfg.batch_size] for i in range(0, len(idx), cfg.batch_size)]
                for mb in micro:
                    batch = make_batch([items[i] for i in mb], pad_id, cfg.max_len, pack, accelerator.device)
                    with accelerator.autocast():
                        loss = loss_fn(model, batch) / len(micro)
                    if not torch.isfinite(loss):
                        raise TrainingError(
                            f"{log_key.get('stage', 'stage')} step {step + 1}: loss is {loss.item()}; "
                            f"stopped; the last checkpoint ({ckpt_dir}) is intact"
                        )
                    accelerator.backward(loss)
                    step_loss += loss.item()
                    step_tokens += sum(len(items[i]["input_ids"]) for i in mb)
                grad_bytes = max(grad_bytes, _grad_bytes(clip_params()))
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(clip_params(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                dt = time.perf_counter() - ts
                tokens_total += step_tokens
                first_loss = step_loss if first_loss is None else first_loss
                final_loss = step_loss
                done = step + 1
                if done % cfg.log_every == 0 or done == steps:
                    rec = {**log_key, "step": done, "loss": round(step_loss, 6),
                           "lr": {g["name"]: g["lr"] for g in optimizer.param_groups},
                           "tokens": step_tokens, "tokens_per_s": round(step_tokens / dt, 2), "seconds": round(dt, 4)}
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                if done % cfg.checkpoint_every == 0 or done == steps:
                    _save_checkpoint(ckpt_dir, tracked, optimizer, scheduler, done, log_key)
                if progress:
                    progress.update(task, completed=done, description=f"{log_key.get('method', '')} {log_key.get('stage', '')} loss {step_loss:.3f}")
                if on_step:
                    on_step(done, step_loss)
    except KeyboardInterrupt:
        last = load_checkpoint(ckpt_dir)
        at = last[1] if last else 0
        raise TrainingInterrupted(
            f"{log_key.get('stage', 'stage')}: interrupted; checkpoint at step {at} in {ckpt_dir}; run again with --resume"
        ) from None
    finally:
        from lingotune.fast import remove_sparse_embedding

        remove_sparse_embedding(accelerator.unwrap_model(model))
        if cfg.gradient_checkpointing:
            _checkpointing(base, False)
    state_bytes = _nbytes(v for st in optimizer.state.values() for v in st.values())
    return StageResult(
        stage=log_key.get("stage", ""), steps=steps, seconds=round(time.perf_counter() - t0, 2), tokens=tokens_total,
        trainable_params=trainable, total_params=total, groups=group_counts,
        first_loss=first_loss, final_loss=final_loss, resumed_from=start, fast_path=fast_notes,
        grad_mb=round(grad_bytes / 2**20, 3), optimizer_state_mb=round(state_bytes / 2**20, 3),
    )


def environment() -> dict:
    return {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "bf16": bf16_supported("cuda" if torch.cuda.is_available() else "cpu")}
