"""lingotune's fast path: row-sparse embedding training, and frozen linear weights held in bf16 under autocast.

- `SparseEmbedding` + `LazyRowAdam`: train input-embedding rows with gradients and optimizer
  state only for the rows that occur in the batches (never a vocab x hidden gradient).
(The other fast-path pieces live where they belong: label-only logits in `lingotune.losses`,
packed rows in `lingotune.data.batches`.)

Lazy Adam semantics of `LazyRowAdam` (per-row step counts; see its docstring and
docs/benchmarks.md). Rows never touched keep their values bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------- sparse embedding


def _base(model):
    """The transformers model under a PeftModel (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class SparseEmbedding(torch.nn.Module):
    """An embedding whose full weight stays frozen; each forward trains only the rows it uses.

    With grad enabled, forward gathers the batch's unique ids into a small fp32 leaf tensor
    `self.rows` (requires_grad=True; `self.unique_ids` holds the ids), and looks the batch up in
    it (`F.embedding(inverse, rows)`: a gradient reproducible bit for bit). Backward thus yields an
    (n_unique x hidden) gradient. Every grad-enabled forward since the last `clear()` is kept in
    `self.pending` (ids, rows), so gradient accumulation over micro-batches works; `LazyRowAdam`
    sums them per id. With grad disabled (evaluation, generation) it is a plain embedding lookup.
    A scale the wrapped module applies (Gemma's `embed_scale`) is applied too.
    """

    def __init__(self, embedding: torch.nn.Embedding):
        super().__init__()
        if not isinstance(embedding, torch.nn.Embedding):
            raise TypeError(f"SparseEmbedding wraps an nn.Embedding, got {type(embedding).__name__}")
        embedding.weight.requires_grad_(False)
        self.weight = embedding.weight
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim
        self.padding_idx = embedding.padding_idx
        self.embed_scale = getattr(embedding, "embed_scale", None)
        self._original = [embedding]  # a list, so it is not registered as a submodule
        self.rows: torch.Tensor | None = None
        self.unique_ids: torch.Tensor | None = None
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.embed_scale is None else x * self.embed_scale.to(x.dtype)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self._scale(F.embedding(input_ids, self.weight, self.padding_idx))
        ids, inverse = torch.unique(input_ids, return_inverse=True)
        rows = self.weight.detach()[ids].clone().requires_grad_(True)
        self.rows, self.unique_ids = rows, ids
        self.pending.append((ids, rows))
        # F.embedding, not rows[inverse]: indexing's backward sums repeated ids with parallel float atomics on
        # CPU (order, and so the last bits, vary run to run); the embedding backward sums them in a fixed order
        return self._scale(F.embedding(inverse, rows))

    def clear(self) -> None:
        self.pending = []
        self.rows = self.unique_ids = None

    def gathered_grad(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(sorted unique ids, summed gradient rows) over all pending forwards, or None."""
        parts = [(ids, rows.grad) for ids, rows in self.pending if rows.grad is not None]
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        ids, inverse = torch.unique(torch.cat([p[0] for p in parts]), return_inverse=True)
        grad = torch.zeros(len(ids), self.embedding_dim, dtype=parts[0][1].dtype, device=ids.device)
        grad.index_add_(0, inverse, torch.cat([p[1] for p in parts]))
        return ids, grad

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, sparse rows"


def install_sparse_embedding(model) -> SparseEmbedding:
    """Replace the model's input embedding with a SparseEmbedding sharing its weight.

    Works on plain transformers models and PeftModels. Refuses a tied model (the output head
    would need a dense gradient of the same matrix): call `lingotune.models.untie` first.
    """
    base = _base(model)
    emb = base.get_input_embeddings()
    if isinstance(emb, SparseEmbedding):
        return emb
    head = base.get_output_embeddings()
    if head is not None and head.weight.data_ptr() == emb.weight.data_ptr():
        raise ValueError("install_sparse_embedding: the output head shares the input embedding weight (tied model); "
                         "call lingotune.models.untie(model) first")
    sparse = SparseEmbedding(emb)
    base.set_input_embeddings(sparse)
    return sparse


def remove_sparse_embedding(model) -> torch.nn.Embedding:
    """Put the original embedding module back; it shares the (updated) weight, still frozen."""
    base = _base(model)
    emb = base.get_input_embeddings()
    if not isinstance(emb, SparseEmbedding):
        return emb
    original = emb._original[0]
    original.weight = emb.weight
    base.set_input_embeddings(original)
    return original


# --------------------------------------------------------------------------- lazy row Adam


class LazyRowAdam(torch.optim.Optimizer):
    """Lazy AdamW over the rows of one or more SparseEmbedding modules.

    Semantics (per step, for each embedding): the touched rows are the ids that occurred in any
    grad-enabled forward since the last `zero_grad()`; their gradient is the sum over those
    forwards. For each touched row r only, with that row's own step count t_r:

        t_r += 1
        w_r *= 1 - lr * weight_decay                   (decoupled, touched rows only)
        m_r = b1 * m_r + (1 - b1) * g_r
        v_r = b2 * v_r + (1 - b2) * g_r**2
        w_r -= lr * (m_r / (1 - b1**t_r)) / (sqrt(v_r / (1 - b2**t_r)) + eps)

    Untouched rows keep weight, m, v and t unchanged (bit-identical weights). The bias correction
    uses the row's own count t_r, so a row first seen late gets a normal-sized first step
    (torch.optim.SparseAdam uses one count for the whole tensor instead). When every row is
    touched at every step this is exactly torch.optim.AdamW.

    State per embedding weight, only for rows ever touched, in first-touch order:
    `ids` (n,) int64, `step` (n,) int64, `exp_avg` and `exp_avg_sq` (n, hidden) fp32. For a weight
    held in bf16/fp16 (model.dtype: bfloat16) also `master` (n, hidden) fp32: the touched rows'
    exact values, updated in fp32; the weight gets their rounding, so updates smaller than the
    low-precision spacing accumulate instead of being lost.
    `param_groups` hold the frozen weights (so LR schedulers work); `lr` and `weight_decay`
    are read from the group at each step.
    Across processes, `combine` (`lingotune.distributed.union_rows`) sums every process's touched rows
    into their union before the step, so every process steps the same rows identically.
    """

    def __init__(self, modules, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, combine=None):
        modules = [modules] if isinstance(modules, SparseEmbedding) else list(modules)
        if not modules or not all(isinstance(m, SparseEmbedding) for m in modules):
            raise TypeError("LazyRowAdam: pass SparseEmbedding modules (see install_sparse_embedding)")
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"LazyRowAdam: invalid lr={lr}, betas={betas}, eps={eps} or weight_decay={weight_decay}")
        self.modules = modules
        super().__init__([m.weight for m in modules], dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self._module_of = {id(m.weight): m for m in modules}
        self.combine = combine
        self._summed: dict | None = None

    def summed(self) -> dict[int, tuple[torch.Tensor, torch.Tensor] | None]:
        """id(weight) -> (sorted touched ids, gradient rows) of this step, or None: the pending row gradients
        summed per id over the micro-batches and, with `combine` (`lingotune.distributed.union_rows`), over
        the processes. Computed once per step (until `step` or `zero_grad`)."""
        if self._summed is None:
            self._summed = {}
            for m in self.modules:
                got = m.gathered_grad()
                if self.combine is not None:  # every process takes part, touched rows or not
                    if got is None:
                        got = (torch.empty(0, dtype=torch.long, device=m.weight.device),
                               torch.empty(0, m.embedding_dim, dtype=m.weight.dtype, device=m.weight.device))
                    got = self.combine(*got)
                    got = got if len(got[0]) else None
                self._summed[id(m.weight)] = got
        return self._summed

    def gradients(self) -> list[torch.Tensor]:
        """The step's summed row gradients (for clipping: scaling them in place affects `step`)."""
        return [got[1] for got in self.summed().values() if got is not None]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for m in self.modules:
            m.clear()
        self._summed = None

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for weight in group["params"]:
                got = self.summed()[id(weight)]
                if got is None:
                    continue
                ids, grad = got
                grad = grad.float()  # bf16 row gradients: moments and bias corrections in fp32
                slots = self._slots(weight, ids)
                st = self.state[weight]
                st["step"][slots] += 1
                t = st["step"][slots].to(torch.float64)
                bc1 = (1 - b1 ** t).to(grad.dtype).unsqueeze(1)
                bc2_sqrt = (1 - b2 ** t).sqrt().to(grad.dtype).unsqueeze(1)
                m = st["exp_avg"][slots].mul_(b1).add_(grad, alpha=1 - b1)
                v = st["exp_avg_sq"][slots].mul_(b2).addcmul_(grad, grad, value=1 - b2)
                st["exp_avg"][slots], st["exp_avg_sq"][slots] = m, v
                w = st["master"][slots] if "master" in st else weight[ids].float()
                if wd:
                    w.mul_(1 - lr * wd)
                w.sub_(lr * (m / bc1) / (v.sqrt() / bc2_sqrt + eps))
                if "master" in st:
                    st["master"][slots] = w
                weight[ids] = w.to(weight.dtype)
        self._summed = None
        return loss

    def _slots(self, weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """State rows for `ids` (sorted, unique), adding zero state for ids seen the first time."""
        st = self.state[weight]
        if not st:
            st["ids"] = torch.empty(0, dtype=torch.long, device=ids.device)
            st["step"] = torch.empty(0, dtype=torch.long, device=ids.device)
            st["exp_avg"] = torch.empty(0, weight.shape[1], dtype=torch.float32, device=ids.device)
            st["exp_avg_sq"] = torch.empty(0, weight.shape[1], dtype=torch.float32, device=ids.device)
            if weight.dtype != torch.float32:
                st["master"] = torch.empty(0, weight.shape[1], dtype=torch.float32, device=ids.device)
        known, order = st["ids"].sort()
        pos = torch.searchsorted(known, ids).clamp(max=max(len(known) - 1, 0))
        found = known[pos] == ids if len(known) else torch.zeros_like(ids, dtype=torch.bool)
        new = ids[~found]
        if len(new):
            n = len(st["ids"])
            st["ids"] = torch.cat([st["ids"], new])
            st["step"] = torch.cat([st["step"], torch.zeros_like(new)])
            zeros = torch.zeros(len(new), weight.shape[1], dtype=torch.float32, device=ids.device)
            st["exp_avg"] = torch.cat([st["exp_avg"], zeros])
            st["exp_avg_sq"] = torch.cat([st["exp_avg_sq"], zeros])
            if "master" in st:
                st["master"] = torch.cat([st["master"], weight[new].float()])
        slots = torch.empty_like(ids)
        slots[found] = order[pos[found]]
        if len(new):
            slots[~found] = torch.arange(n, n + len(new), device=ids.device)
        return slots

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        for st in self.state.values():  # own copies: later in-place updates must not touch the source
            for key, value in st.items():
                st[key] = value.clone()
                if key == "ids" or key == "step":
                    st[key] = st[key].long()
                else:
                    st[key] = st[key].float()

    def state_numel(self) -> int:
        """Elements held in optimizer state (grows with touched rows, not with the vocabulary)."""
        return sum(v.numel() for st in self.state.values() for v in st.values())


# --------------------------------------------------------------------------- frozen weights held in bf16


def frozen_linears_to_bf16(model, spill_dir) -> tuple[int, "callable"]:
    """Hold every frozen fp32 `nn.Linear` weight of `model` in bf16 for a stage run under bf16 autocast, and
    return (parameters cast, restore). Autocast casts such a weight to bf16 at every call (it caches only the
    casts of weights that train); holding it in bf16 once gives the same bf16 values (round to nearest even,
    as autocast's cast), so losses and gradients are bit for bit the same, and the frozen weights take half
    their memory. A weight that shares storage with an embedding (a tied head) is left alone: the embedding
    lookup is not autocast.

    `restore()` puts the exact fp32 originals back (for the fp32 evaluation that follows a stage). Where
    they are kept: on a GPU, in CPU memory; on the CPU, in a safetensors file in `spill_dir` (removed after
    restoring, and a folder a killed process left there is removed when the stage starts again), so the
    process holds only the bf16 copies while it trains.
    """
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    shared = {m.weight.data_ptr() for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    todo = {}
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if (isinstance(mod, torch.nn.Linear) and isinstance(w, torch.nn.Parameter) and not w.requires_grad
                and w.dtype == torch.float32 and w.data_ptr() not in shared):
            todo[name] = mod
    if not todo:
        return 0, lambda: None
    on_cpu = all(m.weight.device.type == "cpu" for m in todo.values())
    prefix = f".frozen-fp32-rank{int(os.environ.get('RANK', 0))}-"
    for stale in Path(spill_dir).glob(prefix + "*"):  # left by a process killed mid-stage: a copy of the weights
        shutil.rmtree(stale, ignore_errors=True)
    folder = tempfile.mkdtemp(prefix=prefix, dir=spill_dir) if on_cpu else None
    if on_cpu:
        save_file({n: m.weight.data.contiguous() for n, m in todo.items()}, os.path.join(folder, "weights.safetensors"))
        kept = None
    else:
        kept = {n: m.weight.data.to("cpu", copy=True) for n, m in todo.items()}
    count = 0
    for mod in todo.values():
        count += mod.weight.numel()
        mod.weight.data = mod.weight.data.to(torch.bfloat16)

    def restore() -> None:
        originals = kept if kept is not None else load_file(os.path.join(folder, "weights.safetensors"))
        for n, mod in todo.items():
            mod.weight.data = originals[n].to(mod.weight.device)
        if folder:
            shutil.rmtree(folder, ignore_errors=True)

    return count, restore
