"""The one training loop, shared by every method and stage.

    prepare_stage   optimizer, loss, batches, guards, resume state, notes (what the stage needs)
    train_stage     the loop: batches -> loss -> backward -> guards -> clip -> step -> log -> checkpoint

A method decides what trains and what its stage needs (`methods.base.Stage`: parameter groups,
whether the embeddings may train row by row, which loss); the loop never looks at names.
Scaling out goes through accelerate: the same loop runs as N processes under torchrun or
`accelerate launch` (data parallel, fast path on; `lingotune.distributed` says how): each process
trains its share of the step's global batch, the loss is normalised over the whole step, DDP (or,
for row-sparse embeddings, `distributed.union_rows`) sums the gradients, and rank 0 alone writes.

Guards: a non-finite loss (before backward) or gradient norm (before the optimizer step) stops
the stage with its step number; so does a loss that climbs far above the stage's first one
(`train.max_loss_ratio`). Nothing non-finite is ever saved, the last good checkpoints are kept,
and Ctrl-C finishes the current step, checkpoints it and says how to resume.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from lingotune import distributed
from lingotune.checkpoint import Checkpoints
from lingotune.data.batches import BatchPlan, item_tokens, make_batch, plan_of
from lingotune.errors import TrainingError, TrainingInterrupted
from lingotune.losses import CausalLM, LabelOnly
from lingotune.models import bf16_supported, count_parameters
from lingotune.files import atomic_write_text

__all__ = ["StageResult", "TrainingError", "TrainingInterrupted", "train_stage", "prepare_stage", "lr_factor"]


@dataclass
class StageResult:
    stage: str
    steps: int
    seconds: float  # training time of the whole stage, over every resumed part
    tokens: int
    trainable_params: int
    total_params: int
    groups: dict[str, int]
    first_loss: float | None  # the stage's first step, also after a resume
    final_loss: float | None
    resumed_from: int = 0
    fast_path: list[str] = field(default_factory=list)
    grad_mb: float = 0.0  # largest gradient held at a step (trainable tensors' grads, or the touched rows')
    optimizer_state_mb: float = 0.0  # optimizer state at the end of the stage
    world_size: int = 1  # processes that trained the stage (data parallel; the global batch is the recipe's)

    def to_dict(self) -> dict:
        return asdict(self)


_ACCELERATOR = None


def accelerator_for(precision: str):
    """One accelerate.Accelerator per process (accelerate keeps global state).

    Without a GPU it is created with cpu=True: under torchrun or `accelerate launch` that gives gloo
    data parallelism over the launched processes (a plain Accelerator() would leave each process alone,
    training unsynchronised; `distributed.check_synchronised` refuses that). FSDP and DeepSpeed come from
    accelerate's config (its environment variables) and need GPUs (`distributed.check_backend`).
    """
    global _ACCELERATOR
    from datetime import timedelta

    from accelerate import Accelerator, InitProcessGroupKwargs

    cuda = torch.cuda.is_available()
    distributed.check_backend(cuda)
    device = "cuda" if cuda else "cpu"
    use_bf16 = precision == "bf16" or (precision == "auto" and bf16_supported(device))
    mp = "bf16" if use_bf16 else "no"
    if _ACCELERATOR is None or _ACCELERATOR.mixed_precision != mp:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=False)
        # the other processes wait at a barrier while rank 0 evaluates: a long timeout
        wait = InitProcessGroupKwargs(timeout=timedelta(seconds=distributed.TIMEOUT_S))
        _ACCELERATOR = Accelerator(mixed_precision=mp, cpu=device == "cpu", kwargs_handlers=[wait])
        distributed.check_synchronised(_ACCELERATOR.num_processes)
    return _ACCELERATOR


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0.1 at the last step."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- packing and checkpointing


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


# ----------------------------------------------------------------------------- optimizer


class MasterAdamW(torch.optim.AdamW):
    """AdamW that steps fp32 master copies of weights held in bf16/fp16, then copies them back.

    At the paper's 2e-5, most updates of a bf16 weight are below its rounding step (about 2**-8 of its
    size) and plain AdamW on it loses them; here they accumulate in the fp32 master, and the weight gets
    its rounding. `weights` (the model's, any dtype) are what the loop fills with gradients and clips;
    the param_groups hold the masters (fp32; a weight already in fp32 is its own master), so the LR
    schedule and the state (step, exp_avg, exp_avg_sq) are AdamW's own. One weight steps at a time, so
    the fp32 gradient costs one weight's size at most; the masters cost 4 bytes per low-precision
    parameter. `state_dict` carries them (key "master", None for fp32 weights), so a resumed run
    continues exactly.
    """

    def __init__(self, groups: list[dict], **kw):
        self.weights, masters = [], []
        for g in groups:
            for p in g["params"]:
                self.weights.append(p)
                masters.append(p if p.dtype == torch.float32 else p.detach().float().requires_grad_(True))
        it = iter(masters)
        super().__init__([{**g, "params": [next(it) for _ in g["params"]]} for g in groups], **kw)
        self.masters = masters

    @torch.no_grad()
    def step(self, closure=None):
        for i, (p, m) in enumerate(zip(self.weights, self.masters)):
            if m is not p and m.device != p.device:
                self._move(i, p.device)
        pairs = [(p, m) for p, m in zip(self.weights, self.masters) if p.grad is not None]
        fp32 = [(p, p.grad) for p, m in pairs if m is p]
        for p, _ in fp32:  # hidden while the low-precision weights step one by one
            p.grad = None
        for p, m in pairs:
            if m is not p:
                m.grad = p.grad.float()
                super().step()  # steps `m` alone: no other master holds a gradient now
                m.grad = None
                p.copy_(m)
        for p, g in fp32:
            p.grad = g
        if fp32:
            super().step()

    def _move(self, i: int, device) -> None:
        """Master `i` (and its Adam state) onto its weight's device: the masters are made before accelerate
        moves the model to a GPU, which moves the weights but not these separate fp32 tensors."""
        old = self.masters[i]
        new = old.detach().to(device).requires_grad_(True)
        for g in self.param_groups:
            g["params"] = [new if q is old else q for q in g["params"]]
        state = self.state.pop(old, {})
        self.state[new] = {k: v.to(device) if torch.is_tensor(v) and k != "step" else v for k, v in state.items()}
        self.masters[i] = new

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.weights:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def state_dict(self):
        return {**super().state_dict(), "master": [None if m is p else m.detach()
                                                   for p, m in zip(self.weights, self.masters)]}

    def load_state_dict(self, state_dict) -> None:
        state_dict = dict(state_dict)
        saved = state_dict.pop("master", None)
        super().load_state_dict(state_dict)
        with torch.no_grad():
            for p, m, s in zip(self.weights, self.masters, saved or [None] * len(self.masters)):
                if m is not p:  # a checkpoint without masters (before them): start from the restored weight
                    m.copy_(p.float() if s is None else s)


def make_optimizer(model, groups: list[dict], cfg, row_sparse: bool, combine=None):
    """(optimizer, gradients-to-clip callable, fast-path notes).

    row_sparse (the stage trains only the untied input embeddings, and the fast path applies): a
    SparseEmbedding that gathers the batch's rows, and LazyRowAdam with state for touched rows
    only (see lingotune.fast for its exact semantics); `combine` sums the rows over processes
    (`distributed.union_rows`). Everything else: AdamW over the groups, with fp32 master weights
    (`MasterAdamW`) where a trained weight is held in bf16/fp16.
    """
    from lingotune.fast import LazyRowAdam, install_sparse_embedding

    if row_sparse:
        if len(groups) != 1 or len(groups[0]["params"]) != 1:
            raise ValueError("a row-sparse stage trains the input embeddings alone (one group, one tensor)")
        sparse = install_sparse_embedding(model)
        opt = LazyRowAdam([sparse], lr=groups[0]["lr"], betas=(0.9, 0.999), weight_decay=cfg.weight_decay,
                          combine=combine)
        opt.param_groups[0]["name"] = groups[0]["name"]
        return opt, opt.gradients, ["row-sparse embeddings, lazy row Adam"]
    opt_groups = [{"params": g["params"], "lr": g["lr"], "name": g["name"]} for g in groups]
    params = [p for g in groups for p in g["params"]]
    low = sum(p.numel() for p in params if p.dtype != torch.float32)
    kind = MasterAdamW if low else torch.optim.AdamW
    opt = kind(opt_groups, lr=groups[0]["lr"], weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
    notes = [f"fp32 master weights for {low:,} bf16/fp16 parameters ({4 * low / 2**20:.1f} MB)"] if low else []
    return opt, lambda: [p.grad for p in params if p.grad is not None], notes


def _row_sparse_allowed(model, cfg, row_sparse: bool, data_parallel: bool) -> bool:
    from lingotune.models import is_tied

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return row_sparse and cfg.fast and data_parallel and not is_tied(base)


def _data_parallel(accelerator) -> bool:
    """One process or DDP (the fast path works across processes); not FSDP or DeepSpeed, which shard
    the weights and own the model's forward (there the loop runs without the fast path)."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED,
                                                DistributedType.MEGATRON_LM)


def grad_norm_and_clip(grads: list[torch.Tensor], max_norm: float | None) -> float:
    """The gradients' total L2 norm; scaled down in place to `max_norm` when above it (as torch clips)."""
    if not grads:
        return 0.0
    norm = torch.nn.utils.get_total_norm(grads, 2.0)
    if max_norm and torch.isfinite(norm):
        coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        torch._foreach_mul_(grads, coef.to(grads[0].device))
    return float(norm)


# ----------------------------------------------------------------------------- the metrics log


def trim_log(log: Path, stage_key: dict, upto: int) -> int:
    """Drop this stage's metric lines past step `upto`, and any torn line; returns lines dropped."""
    if not log.exists():
        return 0
    keep, dropped = [], 0
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if isinstance(rec, dict) and all(rec.get(k) == v for k, v in stage_key.items()) and rec.get("step", 0) > upto:
            dropped += 1
            continue
        keep.append(line)
    if dropped:
        atomic_write_text(log, "".join(x + "\n" for x in keep))
    return dropped


# ----------------------------------------------------------------------------- interrupts


@contextlib.contextmanager
def graceful_interrupt():
    """Yields a callable telling whether Ctrl-C was pressed; the first press only sets that flag
    (the loop finishes its step and checkpoints), a second one interrupts at once."""
    pressed = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield pressed.is_set
        return

    def handler(signum, frame):
        if pressed.is_set():
            raise KeyboardInterrupt
        pressed.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield pressed.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


# ----------------------------------------------------------------------------- setup


@dataclass
class StageRun:
    """Everything the loop needs for one stage, built by `prepare_stage`."""

    name: str
    model: torch.nn.Module
    items: list[dict]
    steps: int
    cfg: object
    accelerator: object
    averaged: bool  # the gradients are averaged over processes (DDP) rather than summed (row-sparse union)
    optimizer: object
    scheduler: object
    loss: object
    label_only: bool
    grads: Callable[[], list[torch.Tensor]]
    tracked: dict[str, torch.Tensor]
    plan: BatchPlan
    pack: bool
    pad_id: int
    checkpoints: Checkpoints
    log_path: Path
    log_key: dict
    fingerprint: dict | None
    notes: list[str]
    counts: tuple[int, int, dict]  # trainable, total, per group
    cleanup: Callable[[], None]
    start: int = 0
    stats: dict = field(default_factory=lambda: {"first_loss": None, "final_loss": None, "seconds": 0.0, "tokens": 0,
                                                  "grad_bytes": 0})
    saved: int = 0  # step of the newest checkpoint


def prepare_stage(model, groups: list[dict], items: list[dict], *, steps: int, cfg, seed: int, pad_id: int,
                  stage_dir: Path, log_path: Path, log_key: dict, resume: bool = False, row_sparse: bool = False,
                  loss=None, fingerprint: dict | None = None) -> StageRun:
    """Build the optimizer, loss, batch plan and guards of one stage, restoring a checkpoint on resume."""
    name = log_key.get("stage", "stage")
    if not items:
        raise TrainingError(f"{name}: no training examples (check the data section)")
    from accelerate.utils import DistributedType

    accelerator = accelerator_for(cfg.precision)
    world = accelerator.num_processes
    distributed.check_batch(cfg.batch_size, cfg.grad_accum, world)
    trainable, total = count_parameters(model)
    counts = (trainable, total, {g["name"]: sum(p.numel() for p in g["params"]) for g in groups})
    tracked = {n: p for n, p in model.named_parameters() if p.requires_grad}  # by name, before any module swap
    parallel = _data_parallel(accelerator)
    sparse = _row_sparse_allowed(model, cfg, row_sparse, parallel)
    if not parallel and any(p.dtype != torch.float32 for g in groups for p in g["params"]):
        raise TrainingError(f"{name}: FSDP/DeepSpeed shard the weights, so lingotune cannot keep fp32 master copies "
                            "of the bf16/fp16 weights this stage trains; load the model in float32 (model.dtype: "
                            "float32) and compute in bf16 with train.precision: bf16")
    optimizer, grads, notes = make_optimizer(model, groups, cfg, sparse,
                                             combine=distributed.union_rows if world > 1 else None)
    label_only = cfg.fast and parallel  # inside the wrapped forward (LabelOnly), so DDP's hooks run
    if label_only:
        notes.append("label-only logits")
    if accelerator.mixed_precision == "bf16":
        notes.append("bf16 autocast")
    loss = loss or CausalLM()
    own_batches = hasattr(loss, "collate")  # the loss builds its own (padded) batches: nothing to pack
    pack = cfg.pack and not own_batches and packing_respected(model)
    if cfg.pack and not own_batches:
        notes.append("packed rows" if pack else "padded rows: this model ignores packed position_ids")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    held, restore_frozen = 0, (lambda: None)
    if accelerator.mixed_precision == "bf16" and cfg.frozen_bf16 and parallel:
        from lingotune.fast import frozen_linears_to_bf16

        stage_dir.mkdir(parents=True, exist_ok=True)
        held, restore_frozen = frozen_linears_to_bf16(model, stage_dir)
        if held:
            notes.append(f"{held:,} frozen linear weights held in bf16")
    if cfg.gradient_checkpointing:
        _checkpointing(base, True)
        notes.append("gradient checkpointing")
    # the schedule counts optimizer steps: not prepared (accelerate would step it once per process)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, cfg.warmup_steps))
    trained = LabelOnly(model) if label_only else model
    if sparse and accelerator.distributed_type != DistributedType.NO:
        # launched (torchrun, even with one process): no dense trainable weight for DDP to wrap;
        # union_rows sums the rows over the processes instead
        wrapped, optimizer = trained.to(accelerator.device), accelerator.prepare(optimizer)
    else:
        wrapped, optimizer = accelerator.prepare(trained, optimizer)
    if world > 1:
        notes.append(f"{world} processes")
    original = model

    def cleanup():
        from lingotune.fast import remove_sparse_embedding

        # take back accelerate's mixed-precision forward: the trained model is evaluated as it was before
        accelerator.unwrap_model(wrapped, keep_fp32_wrapper=False)
        remove_sparse_embedding(original)
        restore_frozen()
        if cfg.gradient_checkpointing:
            _checkpointing(base, False)

    run = StageRun(name, wrapped, items, steps, cfg, accelerator, world > 1 and not sparse, optimizer, scheduler,
                   loss, label_only,
                   grads, tracked, plan_of(items, cfg.batch_size * cfg.grad_accum, seed), pack, pad_id,
                   Checkpoints(stage_dir / "checkpoint", cfg.keep_checkpoints), log_path, log_key, fingerprint,
                   notes, counts, cleanup)
    try:
        if resume:
            _restore(run)
        if distributed.is_main():
            trim_log(log_path, log_key, run.start)
    except BaseException:
        cleanup()
        raise
    return run


def fingerprint_hash(fields: dict | None) -> str | None:
    """sha256 of the recipe's training fields (sorted JSON): what a checkpoint was trained with."""
    import hashlib

    return None if fields is None else hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


# Training fields added later whose default changes what runs made before them did: the value those runs
# were trained with (a checkpoint or run recipe without the field has it).
EARLIER = {"data.pair_batching": "shuffled"}


def _fingerprint_diff(old: dict, new: dict) -> list[str]:
    """Training fields both recipes have, with different values. A field only one side has was added or
    removed by a newer lingotune; its default keeps the old behaviour (or `EARLIER` says what the old one
    was), so it does not block a resume."""
    old = {**{k: v for k, v in EARLIER.items() if k in new}, **old}
    return sorted(k for k in set(old) & set(new) if old[k] != new[k])


def _restore(run: StageRun) -> None:
    """Continue from the newest usable checkpoint (weights, optimizer, scheduler, RNG, statistics)."""
    loaded = run.checkpoints.load_latest(warn=_warn)
    if loaded is None:
        return
    state, meta = loaded
    changed = _fingerprint_diff(meta.get("recipe") or {}, run.fingerprint or {})
    if changed:
        raise TrainingError(f"{run.name}: the checkpoint was trained with a different recipe ({', '.join(changed)}); "
                            "resume with the same recipe, or start again with --overwrite")
    if set(state["params"]) != set(run.tracked) or any(
            state["params"][n].shape != run.tracked[n].shape for n in run.tracked):
        raise TrainingError(f"{run.name}: the checkpoint's weights do not fit this model; start again with --overwrite")
    with torch.no_grad():
        for n, t in state["params"].items():
            run.tracked[n].copy_(t)
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    run.start = run.saved = int(meta["step"])
    run.stats.update(meta.get("stats") or {})


# ----------------------------------------------------------------------------- one step


def _micro_batches(run: StageRun, step: int) -> tuple[list[dict], int]:
    """This process's micro-batches of the step and the step's number of real tokens (all processes').

    The step's global batch (batch_size x grad_accum examples) is split into equal contiguous shares,
    one per process (`distributed.shard`), each cut into micro-batches of batch_size. A loss with its own
    `collate` (preference pairs) builds its batches; otherwise `make_batch` (padded or packed rows)."""
    idx = run.plan.indices(step)
    tokens = sum(item_tokens(run.items[i]) for i in idx)
    acc = run.accelerator
    idx = distributed.shard(idx, acc.process_index, acc.num_processes)
    bs = run.cfg.batch_size
    own = getattr(run.loss, "collate", None)
    batches = []
    for j in range(0, len(idx), bs):
        items = [run.items[i] for i in idx[j:j + bs]]
        batches.append(own(items, run.pad_id, run.cfg.max_len, run.accelerator.device) if own else
                       make_batch(items, run.pad_id, run.cfg.max_len, run.pack, run.accelerator.device))
    return batches, tokens


def _stop(run: StageRun, step: int, what: str) -> TrainingError:
    kept = (f"the checkpoint at step {run.saved} ({run.checkpoints.root}) is kept" if run.saved
            else "no checkpoint was written yet")
    return TrainingError(f"{run.name} step {step}: {what}; stopped before the optimizer step; {kept}")


def accumulate(run: StageRun, step: int) -> tuple[float, int]:
    """Forward and backward over this process's micro-batches, each loss divided by the label units of
    the whole step (every process's); (loss = mean over the step's units, real tokens). Stops on a
    non-finite loss (on any process) before its backward. With DDP only the last micro-batch's backward
    all-reduces (the others run under no_sync)."""
    acc = run.accelerator
    batches, tokens = _micro_batches(run, step)
    units = torch.tensor(sum(run.loss.count(b) for b in batches), device=acc.device)
    if acc.num_processes > 1:
        units = acc.reduce(units, "sum")
    share = acc.num_processes if run.averaged else 1  # DDP averages gradients over processes; union_rows sums
    scale = share / max(int(units), 1)
    step_loss = 0.0
    for i, batch in enumerate(batches):
        sync = i == len(batches) - 1 or not run.averaged
        with contextlib.nullcontext() if sync else acc.no_sync(run.model):
            with acc.autocast():
                loss = run.loss(run.model, batch, run.label_only) * scale
            if distributed.any_true(not bool(torch.isfinite(loss)), acc.device):
                what = f"loss is {loss.item()}" if not torch.isfinite(loss) else "loss is not finite on another process"
                raise _stop(run, step + 1, what)
            acc.backward(loss)
        step_loss += loss.item() / share
    if acc.num_processes > 1:
        step_loss = float(acc.reduce(torch.tensor(step_loss, device=acc.device), "sum"))
    return step_loss, tokens


def train_step(run: StageRun, step: int) -> tuple[float, int, float]:
    """One optimizer step; (loss, tokens, gradient norm). A non-finite gradient norm stops it before the update."""
    loss, tokens = accumulate(run, step)
    grads = run.grads()
    run.stats["grad_bytes"] = max(run.stats["grad_bytes"], _nbytes(grads))
    norm = grad_norm_and_clip(grads, run.cfg.max_grad_norm)
    if not math.isfinite(norm):
        raise _stop(run, step + 1, f"gradient norm is {norm}")
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss, tokens, norm


# ----------------------------------------------------------------------------- the loop


def _save(run: StageRun, done: int) -> None:
    """Checkpoint step `done` (rank 0 writes; every process holds the same weights and optimizer state)."""
    if distributed.is_main():
        meta = {"stage": run.name, "recipe": run.fingerprint, "recipe_hash": fingerprint_hash(run.fingerprint),
                "stats": dict(run.stats)}
        run.checkpoints.save(done, run.tracked, run.optimizer, run.scheduler, meta)
    run.saved = done


def _diverged(run: StageRun, window: list[float]) -> str | None:
    """Why the loss counts as diverged (smoothed loss far above the stage's first), or None."""
    ratio, first = run.cfg.max_loss_ratio, run.stats["first_loss"]
    if not ratio or first is None or len(window) < 3:
        return None
    now = sum(window[-3:]) / 3
    if now > ratio * first and now - first > 1.0:
        return (f"loss {now:.3g} (mean of the last 3 steps) is {now / first:.1f}x the stage's first loss "
                f"{first:.3g}: training diverged (lower the learning rate, or set train.max_loss_ratio: null)")
    return None


def _log_line(run: StageRun, done: int, loss: float, tokens: int, norm: float, dt: float) -> str:
    rec = {**run.log_key, "step": done, "loss": round(loss, 6), "grad_norm": round(norm, 6),
           "lr": {g["name"]: g["lr"] for g in run.optimizer.param_groups},
           "tokens": tokens, "tokens_per_s": round(tokens / dt, 2), "seconds": round(dt, 4)}
    return json.dumps(rec) + "\n"


def _interrupted(run: StageRun, done: int, consistent: bool) -> TrainingInterrupted:
    """Checkpoint the last finished step (when the weights are consistent) and say how to resume."""
    if consistent and done > run.saved:
        _save(run, done)
    at = f"checkpoint at step {run.saved} in {run.checkpoints.root}" if run.saved else "no checkpoint yet"
    return TrainingInterrupted(f"{run.name}: interrupted; {at}; run the same command with --resume to continue")


def train_stage(model, groups: list[dict], items: list[dict], *, steps: int, cfg, seed: int, pad_id: int,
                stage_dir: Path, log_path: Path, log_key: dict, resume: bool = False, row_sparse: bool = False,
                loss=None, fingerprint: dict | None = None, on_step: Callable[[int, float], None] | None = None,
                progress=None) -> StageResult:
    """Train `groups` of `model` for `steps` optimizer steps on tokenized `items`.

    cfg: a TrainConfig. Writes metric lines to `log_path` (tagged with `log_key`) and checkpoints
    to `stage_dir/checkpoint`; with `resume`, continues from the newest usable checkpoint.
    `fingerprint`: the recipe's training fields, recorded in checkpoints and checked on resume.
    """
    run = prepare_stage(model, groups, items, steps=steps, cfg=cfg, seed=seed, pad_id=pad_id, stage_dir=stage_dir,
                        log_path=log_path, log_key=log_key, resume=resume, row_sparse=row_sparse, loss=loss,
                        fingerprint=fingerprint)
    label = f"{log_key.get('method', '')} {run.name}".strip()
    task = progress.add_task(label, total=steps, completed=run.start) if progress else None
    done, consistent, window = run.start, True, []
    run.model.train()
    main = distributed.is_main()  # rank 0 writes the metrics log and checkpoints, and shows progress
    if main:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with (log_path.open("a", encoding="utf-8") if main else contextlib.nullcontext()) as log, \
                graceful_interrupt() as pressed:
            for step in range(run.start, steps):
                t0 = time.perf_counter()
                consistent = False
                loss, tokens, norm = train_step(run, step)
                consistent, done = True, step + 1
                dt = time.perf_counter() - t0
                run.stats["seconds"] += dt
                run.stats["tokens"] += tokens
                run.stats["first_loss"] = loss if run.stats["first_loss"] is None else run.stats["first_loss"]
                run.stats["final_loss"] = loss
                window.append(loss)
                if main and (done % cfg.log_every == 0 or done == steps):
                    log.write(_log_line(run, done, loss, tokens, norm, dt))
                    log.flush()
                why = _diverged(run, window)
                if why:
                    raise TrainingError(f"{run.name} step {done}: {why}; the stage is not marked complete")
                if done % cfg.checkpoint_every == 0 or done == steps:
                    _save(run, done)
                if progress:
                    progress.update(task, completed=done, description=f"{label} loss {loss:.3f}")
                if on_step:
                    on_step(done, loss)
                if distributed.any_true(pressed(), run.accelerator.device):  # every process stops at this step
                    raise _interrupted(run, done, consistent)
    except KeyboardInterrupt:
        run.optimizer.zero_grad(set_to_none=True)
        raise _interrupted(run, done, consistent) from None
    finally:
        run.cleanup()
    return _result(run)


def _result(run: StageRun) -> StageResult:
    trainable, total, groups = run.counts
    state_bytes = _nbytes(v for st in run.optimizer.state.values() for v in st.values())
    inner = getattr(run.optimizer, "optimizer", run.optimizer)  # accelerate's wrapper, or the optimizer itself
    if isinstance(inner, MasterAdamW):  # its fp32 masters are state too, kept outside `state`
        state_bytes += _nbytes(m for p, m in zip(inner.weights, inner.masters) if m is not p)
    s = run.stats
    return StageResult(
        stage=run.name, steps=run.steps, seconds=round(s["seconds"], 2), tokens=s["tokens"],
        trainable_params=trainable, total_params=total, groups=groups, first_loss=s["first_loss"],
        final_loss=s["final_loss"], resumed_from=run.start, fast_path=run.notes,
        grad_mb=round(s["grad_bytes"] / 2**20, 3), optimizer_state_mb=round(state_bytes / 2**20, 3),
        world_size=run.accelerator.num_processes,
    )


def environment() -> dict:
    """Where a result was measured: software, CPU (and GPU), the source's commit, the command line."""
    cuda = torch.cuda.is_available()
    return {"torch": torch.__version__, "cuda": cuda, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "bf16": bf16_supported("cuda" if cuda else "cpu"), "cpu": cpu_name(),
            "gpu": torch.cuda.get_device_name(0) if cuda else None, "commit": source_commit(),
            "command": " ".join(Path(sys.argv[0]).name if i == 0 else a for i, a in enumerate(sys.argv))}


def cpu_name() -> str | None:
    """The CPU's model name (Linux /proc/cpuinfo), with ' (AVX512-BF16)' where the CPU has it; None elsewhere."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), None)
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    return name and name + (" (AVX512-BF16)" if "avx512_bf16" in flags else "")


@functools.cache
def source_commit() -> str | None:
    """The git commit of lingotune's source (+ '-dirty' when it has uncommitted changes), or None (an installed
    wheel, or no git). Read once per process, the first time a result asks (a run or a grid asks as it starts): a
    commit made in the same checkout while a long job runs does not relabel the results of the code it loaded."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "--", "."],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")
