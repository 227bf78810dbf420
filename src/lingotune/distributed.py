"""Data-parallel training across processes: who this process is, its share of a step's batch, the
row-sparse union of gradients, barriers, and the launch checks.

How lingotune trains with N processes (torchrun or `accelerate launch`; README "Scale out"):

- One optimizer step trains on the recipe's global batch, `train.batch_size x train.grad_accum`
  examples, whatever N is: each process takes a contiguous 1/N of the step's examples (`shard`), in
  micro-batches of at most `train.batch_size`. A recipe therefore trains the same with 1 or N processes
  (within float rounding), and a checkpoint resumes under another N. The global batch must be a
  multiple of N (`check_batch`), so that every process runs the same number of micro-batches.
- The loss is normalised globally: each micro-batch's summed loss is divided by the label units (tokens,
  pairs) of the whole step on every process, so the gradient is the 1-process one.
- Dense trainable weights (LoRA, full, a non-row-sparse embedding) are all-reduced by DDP; label-only
  logits run inside the wrapped model's forward (`losses.LabelOnly`), so DDP's hooks see them.
- Row-sparse embeddings (DParT stage 1's fast path) are not wrapped in DDP: after backward every process
  gathers every process's touched row ids and row gradients and sums them into the union (`union_rows`),
  then steps the lazy row Adam on that union, so weights and optimizer state stay equal on every process.
- Rank 0 alone writes (run directory, metrics, checkpoints, artefacts, results.json, report.md) and
  evaluates; the other processes wait at barriers (`barrier`). FSDP and DeepSpeed (accelerate's config)
  need GPUs: on CPU `check_backend` refuses them with a one-line error.
"""

from __future__ import annotations

import contextlib
import os

import torch

from lingotune.errors import UserError

CPU_LAUNCH = "torchrun --nproc_per_node N -m lingotune.cli run recipe.yaml"
TIMEOUT_S = 3 * 3600  # a collective waits this long: the other processes wait while rank 0 evaluates


def launched_world() -> int:
    """Processes the launcher started (WORLD_SIZE, set by torchrun and accelerate launch), 1 without one."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    return torch.distributed.get_world_size() if _initialized() else 1


def rank() -> int:
    return torch.distributed.get_rank() if _initialized() else 0


def is_main() -> bool:
    """Whether this process writes and evaluates (rank 0, or the only process)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process (nothing with one)."""
    if world_size() > 1:
        torch.distributed.barrier()


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (it may fill a cache), then the others."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def any_true(flag: bool, device) -> bool:
    """Whether `flag` holds on any process (every process gets the same answer)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def check_backend(cuda: bool) -> None:
    """FSDP and DeepSpeed (from `accelerate config` / launch) need GPUs: refuse them on CPU in one line."""
    for what, env in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED")):
        if not cuda and os.environ.get(env, "false").lower() == "true":
            raise UserError(f"{what} ({env}=true, from accelerate's config) needs GPUs and this machine has none; "
                            f"on CPU use data parallelism: {CPU_LAUNCH} (or accelerate config with distributed_type "
                            f"MULTI_CPU)")


def check_synchronised(num_processes: int) -> None:
    """The launcher started several processes but accelerate sees one: each would train alone."""
    if launched_world() > 1 and num_processes != launched_world():
        raise UserError(f"launched as {launched_world()} processes (WORLD_SIZE) but accelerate sees {num_processes}: "
                        "they would train unsynchronised; launch with torchrun or accelerate launch, without a GPU "
                        "with accelerate's cpu=True (lingotune sets it when torch sees no GPU)")


def check_batch(batch_size: int, grad_accum: int, world: int) -> None:
    """The step's global batch must split evenly over the processes."""
    total = batch_size * grad_accum
    if world > 1 and total % world:
        raise UserError(f"train.batch_size x train.grad_accum = {total} examples per step must be a multiple of the "
                        f"{world} processes (each process trains an equal share of the step's batch)")


def shard(indices: list[int], rank: int, world: int) -> list[int]:
    """Process `rank`'s contiguous share of a step's examples (len(indices) is a multiple of `world`)."""
    n = len(indices) // world
    return indices[rank * n:(rank + 1) * n]


def union_rows(ids: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every process's (touched row ids, row gradients) summed into the union of the ids (sorted).

    Every process gets bit-identical rows: the parts are gathered (padded to the longest) and added in
    rank order; within one part the ids are unique, so each add is a plain indexed add.
    """
    from accelerate.utils import gather, pad_across_processes

    sizes = gather(torch.tensor([len(ids)], device=ids.device)).tolist()
    all_ids = gather(pad_across_processes(ids, dim=0))
    all_grad = gather(pad_across_processes(grad.contiguous(), dim=0))
    width = max(sizes)
    parts = [(all_ids[r * width:r * width + k], all_grad[r * width:r * width + k]) for r, k in enumerate(sizes)]
    union = torch.unique(torch.cat([p[0] for p in parts]))
    out = torch.zeros(len(union), grad.shape[1], dtype=grad.dtype, device=grad.device)
    for part_ids, part_grad in parts:
        pos = torch.searchsorted(union, part_ids)
        out[pos] += part_grad
    return union, out
