"""Tokenize chat examples with a loss mask, and batch them in a seeded order.

The answer span is found the robust way: tokenize the prompt (every message but the last, plus
the generation prompt) and the whole conversation separately through the chat template; the
answer is what the whole conversation has beyond the prompt, end-of-turn token included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal

import torch

from lingotune.data.records import DataError, Example

IGNORE = -100


def _ids(tok, messages, add_generation_prompt: bool) -> list[int]:
    out = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def full_length(ex: Example, tok) -> int:
    """Tokens of the whole conversation through the chat template (what max_len must hold)."""
    return len(_ids(tok, ex.messages, add_generation_prompt=False))


def tokenize_example(ex: Example, tok, max_len: int, loss_on: Literal["answer", "all"] = "answer") -> dict | None:
    """{'input_ids', 'labels'} for one example, or None when truncation leaves no answer token.

    loss_on="answer": labels are the answer tokens only (the rest is IGNORE).
    loss_on="all": every token is a label.
    """
    full = _ids(tok, ex.messages, add_generation_prompt=False)
    prompt = _ids(tok, ex.messages[:-1], add_generation_prompt=True)
    if full[: len(prompt)] != prompt:
        where = ex.meta.get("source", "")
        raise DataError(
            f"{where}: the chat template renders the prompt differently inside the full conversation; "
            "cannot locate the answer span (use loss_on: all, or a template without this quirk)"
        )
    input_ids = full[:max_len]
    if loss_on == "all":
        labels = list(input_ids)
    else:
        labels = [IGNORE] * min(len(prompt), len(input_ids)) + input_ids[len(prompt):]
    if all(x == IGNORE for x in labels):
        return None
    return {"input_ids": input_ids, "labels": labels}


def tokenize_all(examples: list[Example], tok, max_len: int, loss_on: str) -> tuple[list[dict], int]:
    """(tokenized examples, number dropped because truncation left no label)."""
    out, dropped = [], 0
    for ex in examples:
        t = tokenize_example(ex, tok, max_len, loss_on)
        if t is None:
            dropped += 1
        else:
            out.append(t)
    return out, dropped


def collate(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest item on the right; padding has attention 0 and label IGNORE."""
    n = max(len(x["input_ids"]) for x in items)
    ids = torch.full((len(items), n), pad_id, dtype=torch.long)
    labels = torch.full((len(items), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), n), dtype=torch.long)
    for i, x in enumerate(items):
        k = len(x["input_ids"])
        ids[i, :k] = torch.tensor(x["input_ids"])
        labels[i, :k] = torch.tensor(x["labels"])
        mask[i, :k] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@dataclass
class BatchPlan:
    """The sequence of batches of one stage: a pure function of (n items, batch size, seed).

    Every method trained with the same seed and data sees the same batches in the same order,
    and a resumed run picks up exactly where it stopped.
    """

    n_items: int
    batch_size: int
    seed: int

    def indices(self, step: int) -> list[int]:
        """Item indices of batch `step` (0-based): epochs of seeded permutations, concatenated."""
        per_epoch = self.n_items
        start = step * self.batch_size
        out = []
        for pos in range(start, start + self.batch_size):
            epoch, k = divmod(pos, per_epoch)
            out.append(int(self._perm(epoch)[k]))
        return out

    def _perm(self, epoch: int) -> torch.Tensor:
        cache = self.__dict__.setdefault("_cache", {})
        if epoch not in cache:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            cache.clear()
            cache[epoch] = torch.randperm(self.n_items, generator=g)
        return cache[epoch]

    def batches(self, start: int, stop: int) -> Iterator[tuple[int, list[int]]]:
        for step in range(start, stop):
            yield step, self.indices(step)
