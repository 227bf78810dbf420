"""Starter data: structure, determinism, yes/no balance and train/held-out disjointness."""

from __future__ import annotations

import re

import json
from collections import Counter

import pytest

from lingotune.data import starter
from lingotune.languages import get_language, parse_yes_no, script_share


@pytest.mark.parametrize("lang", ["ru", "ar", "ko"])
def test_generate_structure_and_scripts(lang):
    d = starter.generate(lang, seed=0)
    assert len(d.train_pairs) == starter.DEFAULT_N_TRAIN and len(d.stage2) == starter.DEFAULT_N_TRAIN
    script = get_language(lang).script
    for en, tgt in d.train_pairs:
        assert en.lang == "en" and tgt.lang == lang and en.id == tgt.id
        assert en.prompt and tgt.prompt and tgt.response
        assert script_share(tgt.prompt, script) > 0.5 and script_share(en.prompt, "Latin") > 0.5
    assert all(r.lang == lang for r in d.stage2)
    assert d.parallel and all(e and t for e, t in d.parallel)


@pytest.mark.parametrize("lang", ["ru", "ar", "ko"])
def test_heldout_yesno_balanced_and_disjoint(lang):
    d = starter.generate(lang, seed=1)
    answers = Counter(q["answer"] for q in d.heldout_yesno)
    assert set(answers) == {"yes", "no"} and abs(answers["yes"] - answers["no"]) <= 1
    assert len(d.heldout_yesno) >= 50
    held = {q["fact"] for q in d.heldout_yesno}
    assert not held & d.train_facts
    train_ids = {e.id.split("#")[0] for e, _ in d.train_pairs} | {r.id.split("#")[0] for r in d.stage2}
    assert not held & train_ids
    for q in d.heldout_yesno:
        assert set(q) == {"id", "question", "answer", "lang", "fact"} and q["lang"] == lang
        assert get_language(lang).answer_yes_no not in q["question"]
    assert len({q["id"] for q in d.heldout_yesno}) == len(d.heldout_yesno)


def test_no_questions_use_a_wrong_value():
    facts = {f.id: f for f in starter.all_facts()}
    d = starter.generate("ru", seed=0)
    def names(value, text):  # the whole name, not a prefix of a longer one ("Гвинея" in "Гвинея-Бисау")
        return re.search(rf"(?<![\w-]){re.escape(value)}(?![\w-])", text) is not None

    for q in d.heldout_yesno:
        f = facts[q["fact"]]
        has_true = names(f.value["ru"], q["question"])
        assert has_true == (q["answer"] == "yes") or f.kind == "city"  # city questions name the country as the value
        if f.kind == "city":
            assert names(f.value["ru"], q["question"]) == (q["answer"] == "yes")


def test_split_does_not_depend_on_seed():
    a, b = starter.generate("ru", seed=0), starter.generate("ru", seed=5)
    assert {q["fact"] for q in a.heldout_yesno} == {q["fact"] for q in b.heldout_yesno}
    assert not {q["fact"] for q in a.heldout_yesno} & b.train_facts


def test_deterministic_by_seed():
    a, b, c = starter.generate("ko", 7), starter.generate("ko", 7), starter.generate("ko", 8)
    dump = lambda d: [(e.to_dict(), t.to_dict()) for e, t in d.train_pairs]  # noqa: E731
    assert dump(a) == dump(b) and dump(a) != dump(c) and a.heldout_yesno == b.heldout_yesno


def test_n_train_and_errors():
    assert len(starter.generate("ar", n_train=50).train_pairs) == 50
    with pytest.raises(ValueError, match="unknown language"):
        starter.generate("xx")


def test_russian_templates_keep_names_in_nominative():
    d = starter.generate("ru", seed=0, n_train=1000)
    facts = {f.id: f for f in starter.all_facts()}
    for en, tgt in d.train_pairs:
        f = facts.get(en.id.split("#")[0])
        if f is not None and f.kind != "number":
            assert f.entity["ru"] in tgt.prompt  # inserted unchanged, never inflected


def test_korean_particles():
    assert starter._topic("서울") == "서울은" and starter._topic("파리") == "파리는"
    assert starter._subject("서울") == "서울이" and starter._subject("파리") == "파리가"


def test_parse_yes_no_on_answers_words():
    for lang in ("ru", "ar", "ko"):
        L = get_language(lang)
        assert parse_yes_no(L.yes[0], lang) == "yes" and parse_yes_no(L.no[0], lang) == "no"


def test_write(tmp_path):
    d = starter.generate("ru", seed=0, n_train=20)
    paths = starter.write(d, tmp_path)
    rows = [json.loads(x) for x in paths["train_pairs"].read_text().splitlines()]
    assert len(rows) == 20 and rows[0]["target"]["lang"] == "ru" and rows[0]["en"]["lang"] == "en"
    yn = [json.loads(x) for x in paths["heldout_yesno"].read_text().splitlines()]
    assert yn == d.heldout_yesno
    par = [json.loads(x) for x in paths["parallel"].read_text().splitlines()]
    assert set(par[0]) == {"en", "ru"}


def test_training_yes_no_questions_are_balanced_and_about_training_facts():
    d = starter.generate("ru", seed=3)
    yn = [(en, tgt) for en, tgt in d.train_pairs if "#yesno" in tgt.id]
    assert len(yn) == 400 // 5
    assert Counter(tgt.response for _, tgt in yn) == Counter({"Да.": 40, "Нет.": 40})
    for en, tgt in yn:
        assert en.prompt.endswith("Answer yes or no.") and tgt.prompt.endswith("Ответь да или нет.")
        assert en.response == tgt.response
    facts = {tgt.id.split("#")[0] for _, tgt in yn}
    assert facts <= d.train_facts
    assert not facts & {q["fact"] for q in d.heldout_yesno}
