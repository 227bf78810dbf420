"""The loss mask covers exactly the answer (end-of-turn included); 'all' covers every non-pad token."""

from __future__ import annotations

import pytest

from helpers import require_bundled

from lingotune.data.batches import IGNORE, BatchPlan, collate, tokenize_example
from lingotune.data.records import Example


@pytest.fixture(scope="module")
def tok():
    require_bundled()
    from lingotune.models import load_tokenizer

    return load_tokenizer("bundled")


@pytest.fixture(scope="module")
def base_tok(tok):
    """The same vocabulary without a chat template: lingotune's documented fallback applies."""
    import copy

    from lingotune.models import FALLBACK_CHAT_TEMPLATE, prepare_tokenizer

    t = copy.deepcopy(tok)
    t.chat_template = None
    t = prepare_tokenizer(t)
    assert t.chat_template == FALLBACK_CHAT_TEMPLATE
    return t


EX = Example(
    messages=[
        {"role": "system", "content": "Ты полезный помощник."},
        {"role": "user", "content": "Какая валюта в Японии?"},
        {"role": "assistant", "content": "Японская иена."},
    ]
)


@pytest.mark.bundled
@pytest.mark.parametrize("which", ["tok", "base_tok"])
def test_answer_mask_is_exactly_the_answer(which, request):
    tok = request.getfixturevalue(which)
    t = tokenize_example(EX, tok, max_len=512, loss_on="answer")
    labelled = [i for i, x in zip(t["input_ids"], t["labels"]) if x != IGNORE]
    # labels, where present, equal the inputs (the model shifts them itself)
    assert all(x == IGNORE or x == i for i, x in zip(t["input_ids"], t["labels"]))
    end = "<|im_end|>\n" if which == "tok" else tok.eos_token + "\n\n"
    expected = tok("Японская иена." + end, add_special_tokens=False)["input_ids"]
    assert labelled == expected
    # the labelled span is one contiguous tail of the sequence
    first = next(k for k, x in enumerate(t["labels"]) if x != IGNORE)
    assert all(x != IGNORE for x in t["labels"][first:])
    assert tok.decode(t["input_ids"][:first]).endswith(("assistant\n", "### Response:\n"))


@pytest.mark.bundled
def test_all_mode_covers_every_token_but_padding(tok):
    t = tokenize_example(EX, tok, max_len=512, loss_on="all")
    assert t["labels"] == t["input_ids"]
    short = Example(messages=[{"role": "user", "content": "Да?"}, {"role": "assistant", "content": "Да."}])
    s = tokenize_example(short, tok, max_len=512, loss_on="all")
    batch = collate([t, s], pad_id=tok.pad_token_id)
    mask = batch["attention_mask"].bool()
    assert (batch["labels"][mask] == batch["input_ids"][mask]).all()
    assert (batch["labels"][~mask] == IGNORE).all()
    assert int(mask[1].sum()) == len(s["input_ids"])


@pytest.mark.bundled
def test_truncation_that_leaves_no_answer_drops_the_example(tok):
    assert tokenize_example(EX, tok, max_len=8, loss_on="answer") is None
    assert tokenize_example(EX, tok, max_len=8, loss_on="all") is not None


def test_batch_plan_is_a_pure_function_of_seed():
    a, b, c = BatchPlan(10, 4, seed=1), BatchPlan(10, 4, seed=1), BatchPlan(10, 4, seed=2)
    assert [a.indices(s) for s in range(6)] == [b.indices(s) for s in range(6)]
    assert [a.indices(s) for s in range(6)] != [c.indices(s) for s in range(6)]
    # each epoch is a permutation: the first 10 items drawn cover every index once
    drawn = [i for s in range(3) for i in a.indices(s)][:10]
    assert sorted(drawn) == list(range(10))


# ----------------------------------------------------------------------------- pairs in one step (data.pair_batching)


def _plan_before_pair_batching(n: int, batch: int, seed: int, steps: int) -> list[list[int]]:
    """The plan as lingotune built it before data.pair_batching (the reference `shuffled` must reproduce):
    per epoch torch.randperm(n) seeded with seed * 100003 + epoch, concatenated, cut into batches."""
    import torch

    stream = []
    for epoch in range(steps * batch // n + 1):
        stream += torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    return [stream[s * batch:(s + 1) * batch] for s in range(steps)]


def _pair_items(n_pairs: int, singles: int = 0) -> list[dict]:
    """Items as tokenize_all(pairs=True) leaves them: each pair's two halves adjacent, then single items."""
    items = [{"input_ids": [3, 4, 5], "labels": [-100, 4, 5], "pair": f"p{k}"} for k in range(n_pairs) for _ in "ab"]
    return items + [{"input_ids": [6, 7], "labels": [-100, 7]} for _ in range(singles)]


@pytest.mark.parametrize("n, batch, seed", [(10, 4, 1), (23, 8, 0), (7, 3, 5)])
def test_shuffled_plan_is_the_plan_from_before_pair_batching(n, batch, seed):
    """data.pair_batching: shuffled (and together on data without pairs: stage 2, text) gives today's plan
    bit for bit, so runs started before the setting resume on the same batches."""
    from lingotune.data.batches import plan_of

    want = _plan_before_pair_batching(n, batch, seed, 12)
    items = [{"input_ids": [3, 4], "labels": [-100, 4]} for _ in range(n)]
    for plan in (BatchPlan(n, batch, seed), plan_of(items, batch, seed), BatchPlan(n, batch, seed, [[i] for i in range(n)])):
        assert [plan.indices(s) for s in range(12)] == want
    assert plan_of(items, batch, seed).units is None


@pytest.mark.parametrize("n_pairs, batch", [(13, 4), (12, 6), (9, 2)])
def test_together_puts_both_halves_of_every_pair_in_the_same_step(n_pairs, batch):
    from lingotune.data.batches import plan_of

    items = _pair_items(n_pairs)
    plan = plan_of(items, batch, seed=3)
    steps = [plan.indices(s) for s in range(5 * len(items) // batch)]  # five epochs
    assert all(len(s) == batch for s in steps)
    for s in steps:  # every pair the step touches, whole: items 2k and 2k+1 together
        assert {i ^ 1 for i in s} == set(s)
    stream = [i for s in steps for i in s]
    for e in range(4):  # each epoch is every item once
        assert sorted(stream[e * len(items):(e + 1) * len(items)]) == list(range(len(items)))
    shuffled = [BatchPlan(len(items), batch, 3).indices(s) for s in range(len(steps))]
    assert sum({i ^ 1 for i in s} != set(s) for s in shuffled) > len(steps) // 2  # shuffled splits them


def test_together_fills_a_step_with_a_single_item_before_splitting_a_pair(monkeypatch):
    """The exact rule, with the permutation made the identity: units [0,1] [2] [3,4] [5,6] [7]; a pair that
    does not fit moves to the next step and the epoch's next single item fills the slot; with none left the
    pair is split over two consecutive steps; each epoch starts where the last one stopped."""
    import torch

    monkeypatch.setattr(BatchPlan, "_perm", lambda self, epoch, n=None: torch.arange(self.n_items if n is None else n))
    units = [[0, 1], [2], [3, 4], [5, 6], [7]]
    assert [BatchPlan(8, 2, 0, units).indices(s) for s in range(4)] == [[0, 1], [2, 7], [3, 4], [5, 6]]
    assert [BatchPlan(8, 3, 0, units).indices(s) for s in range(6)] == [
        [0, 1, 2], [3, 4, 7], [5, 6, 2], [0, 1, 7], [3, 4, 5], [6, 0, 1]]


@pytest.mark.parametrize("batch", [5, 1])
def test_together_with_an_odd_batch_splits_one_pair_every_second_step(batch):
    """Pairs only and an odd step batch: a step cannot hold whole pairs alone, so one pair in two steps is
    split, its halves in consecutive steps (batch 1: every pair, as adjacent examples)."""
    from lingotune.data.batches import plan_of

    items = _pair_items(10)
    plan = plan_of(items, batch, seed=0)
    steps = [plan.indices(s) for s in range(len(items) // batch)]  # one epoch
    assert sorted(i for s in steps for i in s) == list(range(20))
    step_of = {i: k for k, s in enumerate(steps) for i in s}
    split = [k for k in range(10) if step_of[2 * k] != step_of[2 * k + 1]]
    assert all(abs(step_of[2 * k] - step_of[2 * k + 1]) == 1 for k in split)
    assert len(split) == (10 if batch == 1 else len(steps) // 2)


def test_tokenize_all_marks_stage1_pairs_only_when_asked(tok):
    """pairs=True keeps a stage-1 example's pair id; stage-2 examples and a pair that lost a half to
    truncation are single units."""
    from lingotune.data.batches import full_length, pair_units, tokenize_all

    def ex(pid, stage, question="Столица России?"):
        return Example([{"role": "user", "content": question}, {"role": "assistant", "content": "Москва."}],
                       {"pair_id": pid, "stage": stage})

    examples = [ex("a", 1), ex("a", 1), ex("b", 1), ex("b", 1, "Столица России? " * 30), ex("c", 2), ex("d", 2)]
    short = full_length(examples[0], tok)
    items, dropped = tokenize_all(examples, tok, 2000, "answer", pairs=True)
    assert dropped == 0 and [it.get("pair") for it in items] == ["a", "a", "b", "b", None, None]
    assert pair_units(items) == [[0, 1], [2, 3], [4], [5]]
    cut, dropped = tokenize_all(examples, tok, short, "answer", pairs=True)  # b's long question leaves no answer
    assert dropped == 1 and pair_units(cut) == [[0, 1], [2], [3], [4]]
    plain, _ = tokenize_all(examples, tok, 2000, "answer")
    assert all("pair" not in it for it in plain)
