"""Training losses: pluggable pieces with one signature, so the loop never changes for a new one.

A loss has two methods:
    count(batch) -> int                       units the step's loss is averaged over (label tokens, pairs)
    __call__(model, batch, label_only) -> T   the *sum* of the per-unit losses of this micro-batch

The loop counts the units of every micro-batch of an optimizer step first and divides each
micro-batch's sum by that total, so a step's loss is the mean over all its units however they
fall into micro-batches (`batch_size 2, grad_accum 4` trains like `batch_size 8, grad_accum 1`).
`label_only` says the loop allows computing logits only where they are needed (single process).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from lingotune.data.batches import IGNORE



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
            logits, target = label_only_logits(model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                               batch.get("position_ids"))
        else:
            # no KV cache: transformers only applies the packed (block-diagonal) mask when there is none
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        position_ids=batch.get("position_ids"), use_cache=False)
            logits, target = out.logits[:, :-1], batch["labels"][:, 1:]
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                               ignore_index=IGNORE, reduction="sum")



LOSSES = {"causal_lm": CausalLM}


def label_only_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor,
                      position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) at the labelled positions only: the output head is applied nowhere else.

    For packed rows from `collate_packed`, pass attention_mask=None and the position_ids.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = base.get_decoder()
    # use_cache=False: with a KV cache transformers would not apply the packed (block-diagonal) mask
    hidden = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                  use_cache=False).last_hidden_state
    target = labels[:, 1:]
    keep = target != IGNORE
    logits = base.get_output_embeddings()(hidden[:, :-1][keep])
    cap = getattr(base.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits, target[keep]
