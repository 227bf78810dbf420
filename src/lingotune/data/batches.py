"""Tokenize chat examples with a loss mask, batch them (padded or packed rows), in a seeded order.

The answer span is found the robust way: tokenize the prompt (every message but the last, plus
the generation prompt) and the whole conversation separately through the chat template; the
answer is what the whole conversation has beyond the prompt, end-of-turn token included.

Preference pairs (`tokenize_pair`, `collate_pairs`): the chosen and the rejected conversation are two
such examples with the same prompt; a batch of pairs is padded rows, the chosen rows then the rejected
rows (never packed).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterator, Literal

import torch

from lingotune.data.records import DataError, Example, PrefRecord

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


def tokenize_all(examples: list[Example], tok, max_len: int, loss_on: str,
                 pairs: bool = False) -> tuple[list[dict], int]:
    """(tokenized examples, number dropped because truncation left no label).

    pairs (data.pair_batching: together): a DParT stage-1 example (meta stage 1) keeps its `pair_id` as the
    item's "pair"; `pair_units` groups the adjacent items of one pair, so `BatchPlan` keeps them in one step."""
    out, dropped = [], 0
    for ex in examples:
        t = tokenize_example(ex, tok, max_len, loss_on)
        if t is None:
            dropped += 1
            continue
        if pairs and ex.meta.get("stage") == 1 and ex.meta.get("pair_id") is not None:
            t["pair"] = ex.meta["pair_id"]
        out.append(t)
    return out, dropped


def pair_examples(rec: PrefRecord) -> tuple[Example, Example]:
    """The chosen and the rejected conversation of a preference pair: [system], user prompt, assistant answer."""
    system = [{"role": "system", "content": rec.system}] if rec.system else []
    head = system + [{"role": "user", "content": rec.prompt}]
    meta = {"source": rec.source}
    return (Example(head + [{"role": "assistant", "content": rec.chosen}], meta),
            Example(head + [{"role": "assistant", "content": rec.rejected}], meta))


def tokenize_pair(rec: PrefRecord, tok, max_len: int) -> dict | None:
    """{'chosen_ids', 'chosen_labels', 'rejected_ids', 'rejected_labels'} of one preference pair, or None when
    truncation leaves either answer without a token.

    Each side goes through `tokenize_example` with the loss on the answer: labels are the completion tokens
    (the answer after the chat prompt, end-of-turn included), IGNORE elsewhere. Truncation keeps the start:
    the prompt is never cut, each answer is cut at its end so that prompt + answer fit `max_len`, and a pair
    whose prompt leaves no room for an answer token on either side is dropped.
    """
    chosen, rejected = (tokenize_example(ex, tok, max_len, "answer") for ex in pair_examples(rec))
    if chosen is None or rejected is None:
        return None
    return {"chosen_ids": chosen["input_ids"], "chosen_labels": chosen["labels"],
            "rejected_ids": rejected["input_ids"], "rejected_labels": rejected["labels"]}


def tokenize_pairs(prefs: list[PrefRecord], tok, max_len: int) -> tuple[list[dict], int]:
    """(tokenized pairs, number dropped because truncation left an answer without a token)."""
    items = [tokenize_pair(rec, tok, max_len) for rec in prefs]
    return [x for x in items if x is not None], sum(x is None for x in items)


def collate_pairs(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Padded rows of a batch of n pairs: rows 0..n-1 the chosen conversations, rows n..2n-1 the rejected ones
    (same order); `labels` mark the completion tokens."""
    rows = [{"input_ids": x[f"{side}_ids"], "labels": x[f"{side}_labels"]}
            for side in ("chosen", "rejected") for x in items]
    return collate(rows, pad_id)


def item_tokens(item: dict) -> int:
    """Tokens of one training item: an example's, or both conversations' of a preference pair."""
    if "input_ids" in item:
        return len(item["input_ids"])
    return len(item["chosen_ids"]) + len(item["rejected_ids"])


def tokenize_texts(texts: list[str], tok, max_len: int) -> tuple[list[dict], int]:
    """Plain texts as training items with the loss on every token: each text (with the tokenizer's own
    special tokens, then end-of-sequence) cut into windows of `max_len` tokens; windows of one token
    (nothing to predict) are dropped and counted."""
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    items, dropped = [], 0
    for text in texts:
        ids = tok(text)["input_ids"] + eos
        for i in range(0, len(ids), max_len):
            window = ids[i:i + max_len]
            if len(window) < 2:
                dropped += 1
                continue
            items.append({"input_ids": window, "labels": list(window)})
    return items, dropped


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


# ----------------------------------------------------------------------------- packed rows


def pack_examples(examples: list[dict], max_len: int) -> list[dict]:
    """Pack tokenized examples ({input_ids, labels}) several to a row of at most max_len tokens.

    First-fit in the given order (deterministic); an example longer than max_len is cut to
    max_len. Each row: input_ids, labels, position_ids (restarting at 0 for each example) and
    seq_lens. The first label of every example is set to -100, so no token is trained to
    predict across a boundary (unpacked, that label is never used either). Transformers (>=4.56,
    SDPA/eager/flex) turns position_ids that restart into a block-diagonal causal mask when the
    model is called with attention_mask=None, so attention never crosses examples.
    """
    if max_len < 2:
        raise ValueError(f"pack_examples: max_len must be >= 2, got {max_len}")
    rows: list[dict] = []
    for i, ex in enumerate(examples):
        ids, labels = list(ex["input_ids"])[:max_len], list(ex["labels"])[:max_len]
        if len(ids) != len(labels):
            raise ValueError(f"pack_examples: example {i}: input_ids and labels differ in length")
        if not ids:
            continue
        labels[0] = IGNORE
        row = next((r for r in rows if len(r["input_ids"]) + len(ids) <= max_len), None)
        if row is None:
            row = {"input_ids": [], "labels": [], "position_ids": [], "seq_lens": []}
            rows.append(row)
        row["input_ids"] += ids
        row["labels"] += labels
        row["position_ids"] += list(range(len(ids)))
        row["seq_lens"].append(len(ids))
    return rows


def collate_packed(rows: list[dict], pad_id: int) -> dict:
    """Tensors for packed rows, padded to the longest row; attention_mask is None on purpose.

    The padding forms its own segment (positions restart at 0, labels -100), so it never
    attends into, or is attended by, real tokens.
    """
    width = max(len(r["input_ids"]) for r in rows)
    out = {"input_ids": [], "labels": [], "position_ids": []}
    for r in rows:
        pad = width - len(r["input_ids"])
        out["input_ids"].append(r["input_ids"] + [pad_id] * pad)
        out["labels"].append(r["labels"] + [IGNORE] * pad)
        out["position_ids"].append(r["position_ids"] + list(range(pad)))
    batch = {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}
    batch["attention_mask"] = None
    return batch


def make_batch(items: list[dict], pad_id: int, max_len: int, pack: bool, device) -> dict:
    """Padded rows (one example each), or packed rows of at most max_len tokens, on `device`.

    Packed rows carry position_ids that restart at every example and attention_mask=None, which
    transformers turns into a block-diagonal causal mask: no attention across examples, and the
    summed loss over the label tokens is the same as unpacked.
    """
    batch = collate_packed(pack_examples(items, max_len), pad_id) if pack else collate(items, pad_id)
    return {k: (v.to(device) if v is not None else None) for k, v in batch.items()}


# ----------------------------------------------------------------------------- the seeded plan


def pair_units(items: list[dict]) -> list[list[int]]:
    """Item indices in units: the adjacent items with the same "pair" (both questions of a DParT pair, as
    `data.pairs.build_stage1` lays them out), every other item alone."""
    units: list[list[int]] = []
    for i, item in enumerate(items):
        key = item.get("pair")
        if key is not None and units and items[units[-1][-1]].get("pair") == key:
            units[-1].append(i)
        else:
            units.append([i])
    return units


@dataclass
class BatchPlan:
    """The sequence of batches of one stage: a pure function of (items, batch size, seed).

    Every method trained with the same seed and data sees the same batches in the same order,
    and a resumed run picks up exactly where it stopped. `batch_size` is the step's global batch
    (train.batch_size x grad_accum). Each epoch is a seeded permutation; the epochs are concatenated
    and cut into steps of `batch_size` items (a step may span two epochs).

    units None (data.pair_batching: shuffled): a permutation of the items.
    units given (together; `pair_units`): a permutation of the units, each unit's items adjacent. A unit that
    does not fit in what is left of a step (a pair with one slot left) moves to the next step, and the next
    single item of the epoch's order fills the slot; with no single item left in the epoch, the unit is
    split, its halves in consecutive steps. So with an even global batch and pairs only, both halves of
    every pair are in the same step; with an odd one (no single items), one pair is split every second
    step (batch 1: every pair, its halves in consecutive steps). When every unit is one item, the plan is
    the shuffled one, bit for bit.
    """

    n_items: int
    batch_size: int
    seed: int
    units: list[list[int]] | None = None

    def indices(self, step: int) -> list[int]:
        """Item indices of batch `step` (0-based)."""
        start = step * self.batch_size
        out = []
        for pos in range(start, start + self.batch_size):
            epoch, k = divmod(pos, self.n_items)
            out.append(int(self._order(epoch)[k]))
        return out

    def _order(self, epoch: int):
        cache = self.__dict__.setdefault("_cache", {})
        if epoch not in cache:
            cache.clear()
            cache[epoch] = self._perm(epoch) if self.units is None else self._together(epoch)
        return cache[epoch]

    def _perm(self, epoch: int, n: int | None = None) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.n_items if n is None else n, generator=g)

    def _together(self, epoch: int) -> list[int]:
        units, size = self.units, self.batch_size
        order = self._perm(epoch, len(units)).tolist()
        singles = deque(j for j in order if len(units[j]) == 1)
        used, out = set(), []
        offset = epoch * self.n_items  # the epoch's first position in the whole stream

        def room() -> int:
            return size - (offset + len(out)) % size

        for j in order:
            if j in used:
                continue
            while len(units[j]) > room() and len(units[j]) <= size:  # fill the step with single items
                while singles and singles[0] in used:
                    singles.popleft()
                if not singles:
                    break  # none left in this epoch: the unit is split over two steps
                s = singles.popleft()
                used.add(s)
                out += units[s]
            used.add(j)
            out += units[j]
        return out

    def batches(self, start: int, stop: int) -> Iterator[tuple[int, list[int]]]:
        for step in range(start, stop):
            yield step, self.indices(step)


def plan_of(items: list[dict], global_batch: int, seed: int) -> BatchPlan:
    """The stage's batch plan: pairs kept in one step where the items carry them (data.pair_batching:
    together, `tokenize_all`), else every item shuffled on its own."""
    units = pair_units(items)
    return BatchPlan(len(items), global_batch, seed, units if len(units) < len(items) else None)
