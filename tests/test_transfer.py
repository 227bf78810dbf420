"""The knowledge-transfer probe and the alignment diagnostic (lingotune.eval.transfer)."""

from __future__ import annotations

import pytest
import torch

from lingotune.data import starter
from lingotune.eval import transfer
from lingotune.eval.config import EvalConfig
from lingotune.eval.tasks import kept, load_examples, load_task
from lingotune.eval.transfer import copies, distances, names_answer


@pytest.mark.parametrize("output, answers, ok", [
    ("Японская иена.", ["японская иена", "иена"], True),
    ("Валюта Японии — иены", ["иена"], True),          # another case form of the same word
    ("Иерусалим", ["иена"], False),
    ("Ёлка", ["елка"], True),                           # ё read as е
    ("The yen.", ["yen"], True),
    ("Yemen", ["yen"], False),                          # short words match whole
    ("브라질에 있습니다.", ["브라질"], True),            # a Korean particle attached
    ("بالبرازيل", ["البرازيل"], True),                   # Arabic article and preposition
    ("٢٣", ["23"], True),                               # Arabic-Indic digits
    ("123", ["23"], False),
    ("двадцать три", ["двадцать три"], True),
    ("три двадцать", ["двадцать три"], False),          # the words of an answer in order
])
def test_names_answer(output, answers, ok):
    assert names_answer(output, answers) is ok


def test_an_echo_of_the_question_is_not_an_answer():
    q = "What is the official language of Russia?"
    assert names_answer("Russian.", ["russian"], q, echo_free=True)
    assert names_answer("The official language of Russia is Russian.", ["russian"], q, echo_free=True)
    # "russia" starts with "russi", the stem of "russian": only the question's own words
    assert names_answer("The official language of Russia", ["russian"], q, echo_free=False)
    assert not names_answer("The official language of Russia", ["russian"], q, echo_free=True)


def test_copies_a_passage():
    passage = "In 1900 Tesla was granted patents for a system of transmitting electrical energy and an electrical transmitter."
    assert copies("Tesla was granted patents for a system of transmitting", passage)
    assert not copies("In 1900.", passage)
    assert not copies("anything", None)


def test_accepted_answers_leave_out_shared_and_asked_words():
    others = [{"en": n} for n in ("US Dollar", "Canadian Dollar", "Australian Dollar", "Fijian Dollar", "Japanese Yen")]
    us = {"en": "US Dollar"}
    assert starter.accepted_answers(us, others + [us], {"en": "United States"}, "en") == ["us dollar"]  # "us": 2 letters
    yen = {"en": "Japanese Yen"}
    assert starter.accepted_answers(yen, others, {"en": "Japan"}, "en") == ["japanese yen", "japanese", "yen"]
    uae = {"en": "United Arab Emirates Dirham"}
    got = starter.accepted_answers(uae, [uae], {"en": "United Arab Emirates"}, "en")
    assert got == ["united arab emirates dirham", "dirham"]


@pytest.mark.parametrize("lang", ["ru", "ar", "ko"])
def test_probe_items_are_held_out_facts_and_sums(lang):
    items = starter.transfer_items(lang)
    facts = [r for r in items if r["kind"] != "sum"]
    trained = starter.generate(lang, seed=0).train_facts
    assert facts and not {r["id"].removeprefix("probe:") for r in facts} & trained
    assert sum(r["kind"] == "sum" for r in items) == starter.N_SUMS
    assert {r["kind"] for r in items[:40]} == {"currency", "language", "city", "sum"}  # mixed order
    assert all(r["question"] != r["question_en"] and r["answers"] and r["answers_en"] for r in items)
    assert items == starter.transfer_items(lang)  # deterministic


def test_transfer_is_conditioned_on_what_the_untouched_model_knew(monkeypatch):
    rows = [{"id": f"i{k}", "question_en": f"q{k}", "question": f"в{k}", "answers_en": ["right"],
             "answers": ["верно"], "kind": "x"} for k in range(4)]
    outs = {"en": ["right", "right", "wrong", "right"], "ru": ["верно", "нет", "верно", "right"]}
    monkeypatch.setattr(transfer, "_prompts", lambda tok, rows, lang, field: lang)
    monkeypatch.setattr(transfer.inference, "generate", lambda model, tok, prompts, *a, **k: outs[prompts])
    spec = load_task("transfer_facts")
    cfg = EvalConfig(n_bootstrap=0)
    recs, m, _ = transfer.run_transfer(None, None, spec, rows, "ru", cfg)
    assert m["known"] == ["i0", "i1", "i3"] and m["known_from"] == "self"
    assert m["transfer"] == pytest.approx(100 / 3)  # of i0, i1, i3 only i0 is right in Russian
    assert m["accuracy"] == 50.0 and m["accuracy_en"] == 75.0 and m["n_known"] == 3
    assert m["lang_share"] == pytest.approx(75.0)  # "right" has no Cyrillic letter
    # a later model is scored on the untouched model's items, whatever it knows itself
    ref = {"known": ["i1", "i2"], "correct_ids": ["i1"]}
    recs, m, _ = transfer.run_transfer(None, None, spec, rows, "ru", cfg, ref)
    assert m["transfer"] == 50.0 and m["n_known"] == 2 and m["known_from"] == "reference"
    assert [r.get("transferred") for r in recs] == [None, False, True, None]
    assert m["transfer_gain"] == 0.0  # i1 lost (-100), i2 gained (+100)
    ref["correct_ids"] = []
    assert transfer.run_transfer(None, None, spec, rows, "ru", cfg, ref)[1]["transfer_gain"] == 50.0


def test_distances_and_margins():
    e = torch.randn(5, 3, 8)
    cos, l2 = distances(e, e)
    assert torch.allclose(cos, torch.zeros(3, dtype=torch.float64), atol=1e-12) and torch.all(l2 == 0)
    cos, l2 = distances(e, -e)
    assert torch.allclose(cos, torch.full((3,), 2.0, dtype=torch.float64)) and torch.allclose(l2, torch.full((3,), 2.0, dtype=torch.float64))
    cos, l2 = distances(e, 3 * e)  # same direction, three times as long: |e - 3e| / 2|e|
    assert torch.allclose(cos, torch.zeros(3, dtype=torch.float64), atol=1e-9) and torch.allclose(l2, torch.ones(3, dtype=torch.float64))


def test_hidden_means_ignore_padding(tiny_llama):
    from lingotune import inference

    class Tok:
        pad_token_id = 0

    seqs = [[5, 6, 7, 8, 9], [10, 11]]
    both = inference.hidden_means(tiny_llama, Tok(), seqs, batch_size=2)
    alone = inference.hidden_means(tiny_llama, Tok(), seqs[1:], batch_size=1)
    assert both.shape == (2, tiny_llama.config.num_hidden_layers + 1, tiny_llama.config.hidden_size)
    torch.testing.assert_close(both[1], alone[0], rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        hs = tiny_llama(input_ids=torch.tensor([seqs[0]]), output_hidden_states=True).hidden_states
    torch.testing.assert_close(both[0], torch.stack([h[0].mean(0) for h in hs]), rtol=1e-5, atol=1e-5)


def test_keep_fraction_is_a_stable_share():
    rows = [{"context_en": f"passage {i}"} for i in range(2000)]
    share = sum(kept(r, ["context_en"], 0.15) for r in rows) / len(rows)
    assert 0.12 < share < 0.18
    assert [kept(r, ["context_en"], 0.15) for r in rows] == [kept(r, ["context_en"], 0.15) for r in rows]


@pytest.mark.shared_data
def test_xquad_probe_holds_out_whole_paragraphs(shared_data):
    spec = load_task("transfer_xquad")
    rows = load_examples(spec, shared_data, "ru")
    assert 50 < len(rows) < 400
    contexts = {r["context_en"] for r in rows}
    from lingotune.data.sources import xquad_transfer_rows

    every = xquad_transfer_rows(shared_data / "xquad", "ru")
    # every question of a kept paragraph is kept: the held-out set is made of whole paragraphs
    assert sum(r["context_en"] in contexts for r in every) == len(rows)
    assert all(r["answers"][0] in r["context"] for r in rows)


def test_every_stage_evaluates_after_stage_one(tiny_model_dir, tmp_path):
    from helpers import make_recipe

    from lingotune.run import run

    recipe = make_recipe(**{
        "model.source": str(tiny_model_dir), "data.max_stage1": 8, "data.max_stage2": 4,
        "method.stage1.steps": 1, "method.stage2.steps": 1, "train.max_len": 64,
        "eval.tasks": ["transfer_facts", "align_facts"], "eval.every_stage": ["transfer_facts", "align_facts"],
        "eval.limit": 4, "eval.n_bootstrap": 0, "eval.max_new_tokens": 2, "output.sample_prompts": 1,
        "output.dir": str(tmp_path / "run"),
    })
    res = run(recipe)
    assert set(res["evals"]) == {"untouched", "dpart-stage1", "dpart"}
    known = res["evals"]["untouched"]["transfer_facts"]["known"]
    for label in ("dpart-stage1", "dpart"):
        t = res["evals"][label]["transfer_facts"]
        assert t["known_from"] == "reference" and t["n_known"] == len(known)
        layers = res["evals"][label]["align_facts"]["layers"]
        assert len(layers["cos_dist"]) == 3  # embeddings + the tiny model's 2 layers
    # stage 1 trains the embeddings only: the layer-0 distances moved, and the report shows the probe
    assert res["evals"]["dpart-stage1"]["align_facts"]["layers"]["cos_dist"][0] != \
        res["evals"]["untouched"]["align_facts"]["layers"]["cos_dist"][0]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Knowledge transfer and alignment" in report and "| layer | untouched | dpart-stage1 | dpart |" in report
