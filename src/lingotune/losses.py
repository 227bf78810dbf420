"""Training losses: pluggable pieces with one signature, so the loop never changes for a new one.

A loss has two methods:
    count(batch) -> int                       units the step's loss is averaged over (label tokens, pairs)
    __call__(model, batch, label_only) -> T   the *sum* of the per-unit losses of this micro-batch

and, optionally,
    collate(items, pad_id, max_len, device) -> batch   the loss's own batches (preference pairs); without
                                              it the loop uses `data.batches.make_batch`

The loop counts the units of every micro-batch of an optimizer step first and divides each
micro-batch's sum by that total, so a step's loss is the mean over all its units however they
fall into micro-batches (`batch_size 2, grad_accum 4` trains like `batch_size 8, grad_accum 1`).
`label_only` says the loop allows computing logits only where they are needed (`label_nll`;
the loop wraps the model in `LabelOnly`, so under DDP they run inside the wrapped forward).

Preference losses (DPO, ORPO) run here, in lingotune's own loop, not through TRL's trainers: a
preference method keeps the run directory, resume, guards, metrics and reports, sees the same batches
as every other method, and can follow DParT's row-sparse stage 1. TRL (`trl>=0.28`, test extra) is the
reference: tests/test_preference.py shows both losses and their gradients equal TRL's on the same model
and batch. A batch of n pairs is 2n padded rows (chosen rows, then rejected rows; `collate_pairs`),
`count` is n, and `__call__` returns the sum over the pairs of the per-pair loss, so a step's loss is the
mean over its pairs (TRL's batch mean):

    DPO   -log sigmoid(beta * [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))])
          log pi(y|x): the completion's token log-probabilities summed (answer after the chat prompt,
          end-of-turn included). The reference is the stage's starting weights: with LoRA the same model
          with its adapters disabled (PEFT's `disable_adapter`), with full weights a frozen copy taken when
          the stage starts (`DPO.reference`); its log-probabilities are computed per micro-batch under
          no_grad (TRL's default, `precompute_ref_log_probs=False`).
    ORPO  NLL(y_w) - lambda * log sigmoid(log odds),  log odds = log(p_w / (1 - p_w)) - log(p_l / (1 - p_l))
          log p: the completion's mean token log-probability (TRL's `average_log_prob=True`), 1 - p via
          log1mexp. No reference model. NLL(y_w): the mean token NLL of this pair's chosen conversation,
          over its answer tokens (`nll_on="answer"`) or over every token (`"all"`, TRL's ORPOTrainer, which
          takes it over prompt and answer).
          Normalisation: TRL pools the NLL tokens of its whole batch (one token mean), then adds the
          pairs' mean odds term; lingotune averages the NLL per pair first, so that a pair weighs the
          same in whatever micro-batch it falls (accumulation stays exact). The two agree exactly when the
          chosen conversations carry the same number of NLL tokens (a batch of one pair, always); in
          general lingotune's batch loss is the mean over its pairs of TRL's loss on each pair alone.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F

from lingotune.data.batches import IGNORE, collate_pairs


class Loss(Protocol):
    name: str

    def count(self, batch: dict) -> int: ...

    def __call__(self, model, batch: dict, label_only: bool) -> torch.Tensor: ...


class CausalLM:
    """Next-token cross-entropy summed over label tokens (labels != -100, shifted by one)."""

    name = "causal_lm"

    def count(self, batch: dict) -> int:
        return int((batch["labels"][:, 1:] != IGNORE).sum())

    def __call__(self, model, batch: dict, label_only: bool) -> torch.Tensor:
        if label_only:
            return label_nll(model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                             batch.get("position_ids")).sum()
        # no KV cache: transformers only applies the packed (block-diagonal) mask when there is none
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    position_ids=batch.get("position_ids"), use_cache=False)
        logits, target = out.logits[:, :-1], batch["labels"][:, 1:]
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                               ignore_index=IGNORE, reduction="sum")



def token_logps(model, batch: dict, labels: torch.Tensor, label_only: bool) -> torch.Tensor:
    """log p(token | the tokens before it) of every labelled token of `labels` (labels != IGNORE), 0 elsewhere;
    float32 of shape (rows, length - 1): column t scores token t + 1, as the model predicts it."""
    target = labels[:, 1:]
    keep = target != IGNORE
    if label_only:
        logps = -label_nll(model, batch["input_ids"], batch["attention_mask"], labels)
    else:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        logps = -F.cross_entropy(out.logits[:, :-1][keep].float(), target[keep], reduction="none")
    return torch.zeros(keep.shape, dtype=logps.dtype, device=logps.device).masked_scatter(keep, logps)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate everywhere: log(-expm1(x)) near 0, log1p(-exp(x)) below -log 2.
    x is kept below -1e-12 first, so a completion of probability 1 (in float) gives a finite value."""
    x = x.clamp(max=-1e-12)
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


class PairLoss:
    """What the preference losses share: a batch of n pairs is 2n padded rows, the chosen rows then the
    rejected ones (`data.batches.collate_pairs`, never packed), with `labels` on the completion tokens;
    the units are the n pairs."""

    def count(self, batch: dict) -> int:
        return int(batch["input_ids"].shape[0]) // 2

    def collate(self, items: list[dict], pad_id: int, max_len: int, device) -> dict:
        return {k: v.to(device) for k, v in collate_pairs(items, pad_id).items()}


class DPO(PairLoss):
    """Direct Preference Optimization, summed over the batch's pairs (see the module doc).

    reference: a frozen model giving pi_ref, or None for the trained model itself with its PEFT adapters
    disabled. The method's stage setup sets it when the stage starts."""

    name = "dpo"

    def __init__(self, beta: float, reference: torch.nn.Module | None = None):
        self.beta, self.reference = beta, reference

    def __call__(self, model, batch: dict, label_only: bool) -> torch.Tensor:
        with torch.no_grad():
            reference = self.reference_logps(model, batch, label_only)
        ratios = token_logps(model, batch, batch["labels"], label_only).sum(-1) - reference
        n = ratios.shape[0] // 2
        return -F.logsigmoid(self.beta * (ratios[:n] - ratios[n:])).sum()

    def reference_logps(self, model, batch: dict, label_only: bool) -> torch.Tensor:
        """Summed completion log-probabilities under the reference (call under no_grad)."""
        if self.reference is not None:
            device = batch["input_ids"].device
            if next(self.reference.parameters()).device != device:
                self.reference.to(device)
            return token_logps(self.reference, batch, batch["labels"], label_only).sum(-1)
        peft = inner(model)
        if not hasattr(peft, "disable_adapter"):
            raise ValueError("DPO: no reference model, and the trained model has no adapters to disable")
        with peft.disable_adapter():
            return token_logps(peft, batch, batch["labels"], label_only).sum(-1)


class ORPO(PairLoss):
    """Odds Ratio Preference Optimization, summed over the batch's pairs (see the module doc).

    lam: the weight of the odds-ratio term; nll_on: "answer" (the chosen answer's tokens) or "all" (every
    token of the chosen conversation, as TRL's ORPOTrainer)."""

    name = "orpo"

    def __init__(self, lam: float, nll_on: str = "answer"):
        if nll_on not in ("answer", "all"):
            raise ValueError(f"ORPO: nll_on must be 'answer' or 'all', not {nll_on!r}")
        self.lam, self.nll_on = lam, nll_on

    def __call__(self, model, batch: dict, label_only: bool) -> torch.Tensor:
        completion = batch["labels"]
        labels = completion
        if self.nll_on == "all":
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE)
        logps = token_logps(model, batch, labels, label_only)
        n = logps.shape[0] // 2
        answer = completion[:, 1:] != IGNORE
        mean = (logps * answer).sum(-1) / answer.sum(-1)  # log p of each completion, length-averaged
        scored = labels[:n, 1:] != IGNORE
        nll = -(logps[:n] * scored).sum(-1) / scored.sum(-1)
        log_odds = (mean[:n] - mean[n:]) - (log1mexp(mean[:n]) - log1mexp(mean[n:]))
        return (nll - self.lam * F.logsigmoid(log_odds)).sum()


LOSSES = {"causal_lm": CausalLM, "dpo": DPO, "orpo": ORPO}


class LabelOnly(torch.nn.Module):
    """The training loop's wrapper of the trained model (the loop wraps it before accelerate's `prepare`).

    Called with `label_positions` (the labels), its forward returns `label_nll` of the model; any other call
    goes to the model unchanged. Under DDP the label-only forward thus runs inside DDP's forward, and DDP's
    hooks all-reduce the gradients it produces.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.module = model

    def forward(self, *args, label_positions: torch.Tensor | None = None, **kwargs):
        if label_positions is None:
            return self.module(*args, **kwargs)
        return _label_nll(self.module, kwargs["input_ids"], kwargs.get("attention_mask"), label_positions,
                          kwargs.get("position_ids"))


def inner(model: torch.nn.Module) -> torch.nn.Module:
    """The model under the loop's wrappers (DDP's `module`, `LabelOnly`)."""
    while isinstance(model, (LabelOnly, torch.nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def label_nll(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor,
              position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The next-token NLL (float32) of every labelled position, in row-major order of `labels[:, 1:] != -100`:
    the output head is applied nowhere else, and never to all of them at once (`HeadNLL`).

    For packed rows from `collate_packed`, pass attention_mask=None and the position_ids. A model the
    loop wrapped in `LabelOnly` (perhaps inside DDP) computes them in its own forward.
    """
    if isinstance(model, LabelOnly) or isinstance(getattr(model, "module", None), LabelOnly):
        return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                     label_positions=labels)
    return _label_nll(model, input_ids, attention_mask, labels, position_ids)


def _label_nll(model, input_ids, attention_mask, labels, position_ids):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = base.get_decoder()
    # use_cache=False: with a KV cache transformers would not apply the packed (block-diagonal) mask
    hidden = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                  use_cache=False).last_hidden_state
    target = labels[:, 1:]
    keep = target != IGNORE
    head, picked = base.get_output_embeddings(), target[keep]
    cap = getattr(base.config, "final_logit_softcapping", None) or None
    if type(head) is torch.nn.Linear and head.bias is None:  # a plain head: in chunks, never all logits at once
        return HeadNLL.apply(hidden[:, :-1][keep], head.weight, picked, cap)
    logits = head(hidden[:, :-1][keep])  # e.g. a head with a LoRA adapter: its own forward
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits.float(), picked, reduction="none")


CHUNK_BYTES = 2**27  # float32 logits of one chunk of rows: 128 MiB (512 rows of a 64k vocabulary)


def _autocast_dtype(device_type: str):
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


class HeadNLL(torch.autograd.Function):
    """NLL of `target` under `cap * tanh((hidden @ weight.T) / cap)` (no cap: the plain logits), row by row,
    computed in chunks of rows so that only one chunk's logits exist at a time (the full label-position logits
    of a 128k vocabulary are gigabytes). The matmul runs in the autocast dtype when autocast is on, as
    `nn.Linear` would; softmax, log-sum-exp and the cap in float32.

    The forward also computes each row's gradient with respect to its hidden state (softmax - one-hot, through
    the cap, times the weight), so a frozen head costs no second pass; a trained head (LEP, full fine-tuning)
    recomputes each chunk's softmax in the backward for its own gradient.
    """

    @staticmethod
    def forward(ctx, hidden, weight, target, cap):
        dt = _autocast_dtype(hidden.device.type)
        n, vocab = hidden.shape[0], weight.shape[0]
        step = max(1, CHUNK_BYTES // (4 * vocab))
        nll = torch.empty(n, dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)
        w = weight if dt is None else weight.to(dt)
        with torch.autocast(hidden.device.type, enabled=False):
            for a in range(0, n, step):
                h = hidden[a:a + step] if dt is None else hidden[a:a + step].to(dt)
                dlogits, nll[a:a + step] = _chunk(h, w, target[a:a + step], cap)
                grad_h[a:a + step] = (dlogits.to(w.dtype) @ w).float()
        ctx.save_for_backward(hidden, weight, target, grad_h)
        ctx.cap, ctx.dt, ctx.step = cap, dt, step
        return nll

    @staticmethod
    def backward(ctx, grad_nll):
        hidden, weight, target, grad_h = ctx.saved_tensors
        g = grad_nll.float()[:, None]
        d_hidden = (grad_h * g).to(hidden.dtype) if ctx.needs_input_grad[0] else None
        d_weight = None
        if ctx.needs_input_grad[1]:
            dt = ctx.dt
            w = weight if dt is None else weight.to(dt)
            d_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            with torch.autocast(hidden.device.type, enabled=False):
                for a in range(0, hidden.shape[0], ctx.step):
                    h = hidden[a:a + ctx.step] if dt is None else hidden[a:a + ctx.step].to(dt)
                    dlogits, _ = _chunk(h, w, target[a:a + ctx.step], ctx.cap)
                    d_weight += ((dlogits * g[a:a + ctx.step]).to(w.dtype).T @ h).float()
            d_weight = d_weight.to(weight.dtype)
        return d_hidden, d_weight, None, None


def _chunk(h: torch.Tensor, w: torch.Tensor, target: torch.Tensor, cap: float | None):
    """(d nll / d logits before the cap, nll) of one chunk of rows, float32."""
    z = (h @ w.T).float()
    capped = torch.tanh(z / cap) * cap if cap else z
    logp = torch.log_softmax(capped, dim=-1)
    nll = -logp.gather(-1, target[:, None]).squeeze(-1)
    d = logp.exp_()
    d[torch.arange(len(target), device=d.device), target] -= 1.0
    if cap:
        d *= 1.0 - (capped / cap) ** 2
    return d, nll
