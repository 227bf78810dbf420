"""The knowledge-transfer probe and the alignment diagnostic (lingotune.eval.transfer)."""

from __future__ import annotations

from pathlib import Path

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
    monkeypatch.setattr(transfer, "target_budget", lambda tok, rows, budget: 2 * budget)
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
    # on the items the untouched model did not know in English (i0, i3), i0 gained: the known items' gain is
    # 50 points below theirs
    assert m["gain_other"] == 50.0 and m["transfer_excess"] == -50.0
    ref["correct_ids"] = []
    m = transfer.run_transfer(None, None, spec, rows, "ru", cfg, ref)[1]
    assert m["transfer_gain"] == 50.0 and m["gain_other"] == 50.0 and m["transfer_excess"] == 0.0
    assert "transfer_excess" not in transfer.run_transfer(None, None, spec, rows, "ru", cfg)[1]  # no reference


@pytest.mark.parametrize("lang", ["ru", "ar", "ko"])
def test_probe_options_are_the_answer_then_wrong_values_of_its_kind(lang):
    items = starter.transfer_items(lang)
    for r in items:
        assert len(r["options"]) == len(r["options_en"]) == starter.N_OPTIONS
        assert len(set(r["options"])) == len(set(r["options_en"])) == starter.N_OPTIONS
        # the first option is the answer; no wrong one names it in either language
        assert names_answer(r["options"][0], r["answers"]) and names_answer(r["options_en"][0], r["answers_en"])
        if r["kind"] != "sum":
            assert not any(o.casefold() in {a.casefold() for a in r["answers"]} for o in r["options"][1:])
    language = {r["id"]: r for r in items if r["kind"] == "language"}
    ch = language.get("probe:language:CH")
    if ch:  # Switzerland: German, French, Italian and Romansh are all official; none is a wrong option
        assert not {"German", "French", "Italian", "Romansh"} & set(ch["options_en"][1:])
    sums = [r for r in items if r["kind"] == "sum"]
    a, b = map(int, sums[0]["id"].removeprefix("probe:sum:").split("+"))
    assert names_answer(sums[0]["options_en"][0], [str(a + b), *sums[0]["answers_en"]])


def test_the_probe_by_loglik_picks_the_option_of_highest_logprob_per_character(monkeypatch):
    rows = [{"id": f"i{k}", "kind": "x", "question_en": f"q{k}", "question": f"в{k}",
             "options_en": ["Right", "Wrong answer"], "options": ["Верно", "Неверный ответ"]} for k in range(3)]
    # per item, per option: the summed log-probability. i0: English right by sum and per character; Russian
    # right by sum (-6 > -7) but wrong per character (-6/5 = -1.2 < -7/14 = -0.5); i1 right in both; i2 wrong in English
    scores = {"en": [[-2.0, -20.0], [-1.0, -30.0], [-10.0, -5.0]], "ru": [[-6.0, -7.0], [-1.0, -50.0], [-1.0, -50.0]]}
    monkeypatch.setattr(transfer, "_prompts", lambda tok, rows, lang, field: lang)
    monkeypatch.setattr(transfer.inference, "encode", lambda tok, text: list(text))
    seen = []

    def scored(model, tok, contexts, conts, *a, **k):
        seen.append(conts)
        return scores[contexts]

    monkeypatch.setattr(transfer.inference, "shared_continuation_logprobs", scored)
    spec = load_task("transfer_facts_ll")
    cfg = EvalConfig(n_bootstrap=0)
    recs, m, _ = transfer.run_transfer_loglik(None, None, spec, rows, "ru", cfg)
    assert seen[0][0] == [list("Right"), list("Wrong answer")] and seen[1][0] == [list("Верно"), list("Неверный ответ")]
    assert [(r["correct_en"], r["correct"]) for r in recs] == [(True, False), (True, True), (False, True)]
    assert m["known"] == ["i0", "i1"] and m["transfer"] == 50.0 and m["accuracy"] == pytest.approx(200 / 3)
    assert m["chance"] == 50.0 and "lang_share" not in m
    ref = {"known": ["i0", "i2"], "correct_ids": ["i0", "i2"]}  # scored on the untouched model's items, paired: i0 lost
    recs, m, _ = transfer.run_transfer_loglik(None, None, spec, rows, "ru", cfg, ref)
    assert m["transfer"] == 50.0 and m["transfer_gain"] == -50.0 and m["known_from"] == "reference"
    assert m["gain_other"] == 100.0 and m["transfer_excess"] == -150.0  # i1, not known: wrong before, right now
    assert set(spec.describe_metrics(m)) == {"transfer", "transfer_gain", "gain_other", "transfer_excess", "accuracy",
                                             "accuracy_en"}
    with pytest.raises(ValueError, match="item i9 has no options"):
        transfer.run_transfer_loglik(None, None, spec, [{"id": "i9", "question_en": "q", "question": "в"}], "ru", cfg)


def test_the_probe_by_loglik_scores_what_a_direct_forward_pass_gives(tiny_model_dir):
    from lingotune import inference
    from lingotune.models import load_model

    model, tok = load_model(str(tiny_model_dir))
    rows = starter.transfer_items("ru")[:3]
    spec = load_task("transfer_facts_ll")
    recs, m, _ = transfer.run_transfer_loglik(model, tok, spec, rows, "ru", EvalConfig(n_bootstrap=0, batch_size=2))
    for side, field, lang in (("_en", "question_en", "en"), ("", "question", "ru")):
        prompts = transfer._prompts(tok, rows, lang, field)
        for rec, prompt in zip(recs, prompts):
            opts = rec[f"options{side}"]
            ref = inference.continuation_logprobs(model, tok, [(prompt, inference.encode(tok, o)) for o in opts])
            assert rec[f"logprobs{side}"] == pytest.approx(ref, abs=2e-3)
            best = max(range(len(opts)), key=lambda j: ref[j] / len(opts[j]))
            assert rec[f"correct{side}"] == (best == 0)
    assert m["chance"] == 25.0


def test_score_loglik_is_only_for_the_probe_on_its_own_items():
    from lingotune.eval.tasks import TaskSpec

    base = load_task("transfer_facts").model_dump()
    assert TaskSpec(**{**base, "score": "loglik"}).score == "loglik"
    with pytest.raises(ValueError, match="score: loglik' is for kind 'transfer' on format 'starter_transfer'"):
        TaskSpec(**{**load_task("transfer_xquad").model_dump(), "score": "loglik"})
    with pytest.raises(ValueError, match="yes/no tasks take the evaluation's 'mode'"):
        TaskSpec(**{**load_task("danetqa").model_dump(), "score": "loglik"})


def test_the_target_budget_is_one_of_equal_content():
    class Tok:  # one token per character
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": list(range(len(text)))}

    rows = [{"question_en": "abcd", "question": "abcdefghij"}, {"question_en": "ab", "question": "abcde"}]
    assert transfer.target_budget(Tok(), rows, 24) == 24 * 15 // 6  # 15 target tokens for 6 English ones
    rows = [{"question_en": "abcd", "question": "ab"}]
    assert transfer.target_budget(Tok(), rows, 24) == 24  # never less than the English budget


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
    assert "(report_layers_align_facts.png)" in report and (tmp_path / "run" / "report_layers_align_facts.png").stat().st_size


def test_transfer_excess_interval_resamples_each_group_within_itself():
    rows = [{"id": f"i{k}", "correct_en": k < 4, "correct": k in (0, 1, 4, 5, 6)} for k in range(8)]
    ref = {"known": ["i0", "i1", "i2", "i3"], "correct_ids": ["i0", "i4"]}
    _, m, cis = transfer._scored([dict(r) for r in rows], ref, EvalConfig(n_bootstrap=2000, seed=0), {})
    # known i0..i3: gains 0, +100, 0, 0 -> 25; others i4..i7: 0, +100, +100, 0 -> 50
    assert m["transfer_gain"] == 25.0 and m["gain_other"] == 50.0 and m["transfer_excess"] == -25.0
    lo, hi = cis["transfer_excess"]
    assert lo < -25.0 < hi and lo >= -100.0 and hi <= 100.0
    # every resample keeps 4 items a group: the interval's ends are differences of quarter steps
    assert all((x / 25.0).is_integer() for x in (lo, hi))


def test_report_says_what_the_gain_beyond_the_other_items_is():
    from lingotune.report import transfer_lines
    evals = {"untouched": {"transfer_facts_ll": {"n_known": 4, "n": 8}},
             "dpart": {"transfer_facts_ll": {"n_known": 4, "transfer": 50.0, "transfer_gain": 25.0, "gain_other": 50.0,
                                             "transfer_excess": -25.0,
                                             "ci": {"transfer_gain": [0.0, 50.0], "transfer_excess": [-75.0, 25.0]}}}}
    text = "\n".join(transfer_lines(evals))
    assert "gain 25.00 points [0.00, 50.00]" in text
    assert ("did not know in English the gain is 50.00 points; transfer proper (the known items' gain beyond it) "
            "-25.00 [-75.00, 25.00], spans 0.") in text


def test_rescoring_an_old_grid_adds_transfer_proper_from_the_per_item_files(tmp_path):
    import importlib.util
    import json
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "rescore_transfer.py"
    spec = importlib.util.spec_from_file_location("rescore_transfer", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    grid = tmp_path / "grid" / "data"
    ref = {"known": ["i0", "i1"], "correct_ids": ["i0", "i3"], "transfer_gain": None}
    (grid / "untouched").mkdir(parents=True)
    (grid / "untouched" / "results.json").write_text(json.dumps({"complete": True, "evals": {"untouched": {"t": ref}}}))
    cell = grid / "lora-s0"
    (cell / "eval" / "lora").mkdir(parents=True)
    (cell / "recipe.yaml").write_text("eval:\n  n_bootstrap: 200\n  seed: 3\n")
    recs = [{"id": "i0", "correct_en": True, "correct": True, "transferred": True},
            {"id": "i1", "correct_en": True, "correct": True, "transferred": True},  # known: 0, +100 -> +50
            {"id": "i2", "correct_en": False, "correct": False},
            {"id": "i3", "correct_en": False, "correct": False}]  # others: 0, -100 -> -50
    (cell / "eval" / "lora" / "t.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    old = {"t": {"transfer": 100.0, "transfer_gain": 50.0, "n_known": 2, "ci": {"transfer_gain": [0.0, 100.0]}}}
    (cell / "eval" / "lora" / "scores.json").write_text(json.dumps(old))
    (cell / "results.json").write_text(json.dumps({"complete": True, "evals": {"lora": old}}))
    lines = mod.rescore(tmp_path / "grid", "abc123")
    assert len(lines) == 1
    for f in (cell / "results.json", cell / "eval" / "lora" / "scores.json"):
        data = json.loads(f.read_text())
        r = data["evals"]["lora"]["t"] if "evals" in data else data["t"]
        assert r["gain_other"] == -50.0 and r["transfer_excess"] == 100.0 and r["rescored"] == "abc123"
        assert r["ci"]["transfer_gain"] == [0.0, 100.0] and r["ci"]["transfer_excess"] is not None
    # a per-item file that does not give the recorded gain is not rescored
    old["t"]["transfer_gain"] = 0.0
    (cell / "results.json").write_text(json.dumps({"complete": True, "evals": {"lora": old}}))
    with pytest.raises(SystemExit, match="transfer_gain 50.0000 from the per-item file, 0.0 recorded"):
        mod.rescore(tmp_path / "grid", "abc123")
