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
