"""Preference data (issue 13, part 2): the three file layouts, their one-line errors, the cross-lingual, label and
on-policy builders, the leakage check, and `lingotune data build-prefs` end to end."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lingotune import inference
from lingotune.data import prefs
from lingotune.eval import labels
from lingotune import prefs_cli
from lingotune.cli import app
from lingotune.data.records import DataError, PrefRecord, Record
from lingotune.data.validate import LeakageIndex
from lingotune.errors import UserError

runner = CliRunner()


def _jsonl(path: Path, *rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path


def _hh(*turns: str) -> str:
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


# --------------------------------------------------------------------------------------------- readers

def test_standard_layout_read_exactly(tmp_path):
    f = _jsonl(tmp_path / "p.jsonl",
               {"prompt": "Столица Франции?", "chosen": "Париж.", "rejected": "Paris."},
               {"prompt": " 2+2? ", "chosen": "4", "rejected": "5", "system": "Be brief.", "id": 7, "lang": "en",
                "kind": "label"})
    assert prefs.read_pref_file(f, "ru") == [
        PrefRecord("Столица Франции?", "Париж.", "Paris.", None, None, "ru", f"{f}:1", "file"),
        PrefRecord("2+2?", "4", "5", "Be brief.", "7", "en", f"{f}:2", "label"),
    ]


def test_hh_layout_prompt_is_the_shared_prefix(tmp_path):
    f = _jsonl(tmp_path / "hh.jsonl",
               {"chosen": _hh("Hi?", "Hello!"), "rejected": _hh("Hi?", "Go away.")},
               {"chosen": _hh("2+2?", "4", "And 3+3?", "6"), "rejected": _hh("2+2?", "4", "And 3+3?", "7")})
    assert prefs.read_pref_file(f) == [
        PrefRecord("Hi?", "Hello!", "Go away.", None, None, None, f"{f}:1", "file"),
        PrefRecord("Human: 2+2?\n\nAssistant: 4\n\nHuman: And 3+3?", "6", "7", None, None, None, f"{f}:2", "file"),
    ]


def _msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


def test_messages_layouts(tmp_path):
    sys_user = (("system", "Be kind."), ("user", "Hi?"))
    f = _jsonl(tmp_path / "m.jsonl",
               {"chosen": _msgs(*sys_user, ("assistant", "Hello!")), "rejected": _msgs(*sys_user, ("assistant", "No."))},
               {"prompt": _msgs(*sys_user), "chosen": _msgs(("assistant", "Hello!")),
                "rejected": _msgs(("assistant", "No."))},
               {"prompt": "Hi?", "chosen": _msgs(("assistant", "Hello!")), "rejected": _msgs(("assistant", "No."))})
    got = prefs.read_pref_file(f, "en")
    assert [(r.system, r.prompt, r.chosen, r.rejected) for r in got] == [
        ("Be kind.", "Hi?", "Hello!", "No."), ("Be kind.", "Hi?", "Hello!", "No."), (None, "Hi?", "Hello!", "No.")]


def test_hh_and_messages_give_the_same_pair(tmp_path):
    turns = ("2+2?", "4", "And 3+3?")
    convo = [("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(turns)]
    f = _jsonl(tmp_path / "both.jsonl",
               {"chosen": _hh(*turns, "6"), "rejected": _hh(*turns, "7")},
               {"chosen": _msgs(*convo, ("assistant", "6")), "rejected": _msgs(*convo, ("assistant", "7"))})
    hh, messages = prefs.read_pref_file(f)
    assert (hh.prompt, hh.chosen, hh.rejected) == (messages.prompt, messages.chosen, messages.rejected)


@pytest.mark.parametrize("row, message", [
    ({"prompt": "Q", "rejected": "b"}, "field 'chosen' is missing"),
    ({"prompt": "Q", "chosen": "a"}, "field 'rejected' is missing"),
    ({"prompt": "  ", "chosen": "a", "rejected": "b"}, "field 'prompt' is empty"),
    ({"prompt": "Q", "chosen": "", "rejected": "b"}, "field 'chosen' is empty"),
    ({"prompt": "Q", "chosen": 3, "rejected": "b"}, "field 'chosen' must be a string, got int"),
    ({"prompt": 5, "chosen": "a", "rejected": "b"}, "field 'prompt' must be a string, got int"),
    ({"prompt": "Q", "chosen": "a", "rejected": "b", "system": ["x"]}, "field 'system' must be a string, got list"),
    ({"prompt": "Q", "chosen": "a", "rejected": "b", "kind": "dpo"}, "field 'kind' must be one of"),
    ({"chosen": "just text", "rejected": "b"}, "field 'chosen' must be a dialogue"),
    ({"chosen": _hh("Q", "a"), "rejected": _hh("other Q", "b")}, "field 'rejected' differs from 'chosen'"),
    ({"chosen": "\n\nAssistant: a", "rejected": "\n\nAssistant: b"}, "field 'prompt' is empty"),
    ({"chosen": _msgs(("user", "Q"), ("assistant", "a")), "rejected": "b"},
     "field 'rejected' must be a list of messages"),
    ({"chosen": _msgs(("user", "Q"), ("assistant", "a")), "rejected": [{"role": "user", "content": 1}]},
     "field 'rejected[0].content' must be a string, got int"),
    ({"chosen": _msgs(("user", "Q"), ("bot", "a")), "rejected": _msgs(("user", "Q"), ("assistant", "b"))},
     "field 'chosen[1]' must be a message with role system|user|assistant"),
    ({"chosen": _msgs(("user", "Q")), "rejected": _msgs(("user", "Q"), ("assistant", "b"))},
     "field 'chosen' must end with an assistant turn"),
    (["not", "an", "object"], "expected a JSON object, got list"),
])
def test_structural_problems_are_one_line_errors_naming_file_line_and_field(tmp_path, row, message):
    f = _jsonl(tmp_path / "bad.jsonl", {"prompt": "fine", "chosen": "a", "rejected": "b"}, row)
    with pytest.raises(DataError) as e:
        prefs.read_pref_file(f)
    assert str(e.value).startswith(f"{f}:2: {message}") and "\n" not in str(e.value)


def test_chosen_equal_to_rejected_is_skipped_and_counted(tmp_path):
    f = _jsonl(tmp_path / "p.jsonl", {"prompt": "Q1", "chosen": "same ", "rejected": " same"},
               {"prompt": "Q2", "chosen": "a", "rejected": "b"},
               {"chosen": _hh("Q3", "x"), "rejected": _hh("Q3", "x")})
    records, counts = prefs.load_pref_file(f)
    assert [r.prompt for r in records] == ["Q2"]
    assert (counts.read, counts.identical) == (3, 2)


def test_write_prefs_standard_layout_round_trip(tmp_path):
    recs = [PrefRecord("Q", "да", "yes", None, "x/1", "ru", "somewhere:3", "cross-lingual"),
            PrefRecord("Q2", "a", "b", "sys", None, None, "", "file")]
    out = prefs.write_prefs(recs, tmp_path / "sub" / "out.jsonl")
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == [
        {"prompt": "Q", "chosen": "да", "rejected": "yes", "id": "x/1", "lang": "ru", "kind": "cross-lingual",
         "source": "somewhere:3"},
        {"prompt": "Q2", "chosen": "a", "rejected": "b", "system": "sys", "kind": "file"}]
    again = prefs.read_pref_file(out)
    assert [(r.prompt, r.chosen, r.rejected, r.system, r.id, r.lang, r.kind) for r in again] == \
        [(r.prompt, r.chosen, r.rejected, r.system, r.id, r.lang, r.kind) for r in recs]


# --------------------------------------------------------------------------------------------- cross-lingual

def _squad(path: Path, context: str, qas: list[tuple[str, str, str]]) -> None:
    _json(path, {"data": [{"paragraphs": [{"context": context, "qas": [
        {"id": i, "question": q, "answers": [{"text": a, "answer_start": 0}]} for i, q, a in qas]}]}]})


def _tiny_root(root: Path) -> Path:
    """A hand-made paired set: XQuAD en/ru (one answer the same in both) and MT-Bench en/ru."""
    _squad(root / "xquad" / "xquad.en.json", "Tesla was born in 1856 in Smiljan.",
           [("q1", "When was Tesla born?", "1856"), ("q2", "Where was Tesla born?", "in Smiljan")])
    _squad(root / "xquad" / "xquad.ru.json", "Тесла родился в 1856 году в Смилянах.",
           [("q1", "Когда родился Тесла?", "1856"), ("q2", "Где родился Тесла?", "в Смилянах")])
    mt = root / "mt_bench_ru"
    _jsonl(mt / "question_en.jsonl", *({"question_id": i, "turns": [f"Question {i}?", "More?"]} for i in (1, 2, 3)))
    _jsonl(mt / "question_ru.jsonl", *({"question_id": i, "turns": [f"Вопрос {i}?", "Ещё?"]} for i in (1, 2, 3)))
    ref = lambda i, text: {"question_id": i, "choices": [{"index": 0, "turns": [text, "..."]}]}
    _jsonl(mt / "reference_answer_ru_gpt-4.jsonl", ref(1, "Ответ один."), ref(2, "42"), ref(3, "Ответ три."))
    _jsonl(mt / "reference_answer_en_gpt-4.jsonl", ref(1, "Answer one."), ref(2, "42"))
    return root


def test_cross_lingual_pairs_on_a_tiny_paired_set(tmp_path):
    root = _tiny_root(tmp_path / "data")
    records, report = prefs_cli.build(prefs_cli.PrefRequest("cross-lingual", "ru", root=root))
    assert records == [
        PrefRecord("Вопрос 1?", "Ответ один.", "Answer one.", None, "mt_bench/1", "ru",
                   f"{root / 'mt_bench_ru' / 'question_ru.jsonl'}:1", "cross-lingual"),
        PrefRecord("Текст: Тесла родился в 1856 году в Смилянах.\n\nВопрос: Где родился Тесла?", "в Смилянах",
                   "in Smiljan", None, "xquad/q2", "ru", f"{root / 'xquad' / 'xquad.ru.json'}:q2", "cross-lingual"),
    ]
    mt, xq = report["sets"]["mt_bench"], report["sets"]["xquad"]
    assert (mt["read"], mt["missing_answer"], mt["identical"], mt["kept"]) == (3, 1, 1, 1)
    assert (xq["read"], xq["identical"], xq["kept"]) == (2, 1, 1)
    assert report["kinds"]["cross-lingual"]["kept"] == report["kept"] == 2


def test_cross_lingual_set_without_the_language_is_a_user_error(tmp_path):
    root = _tiny_root(tmp_path / "data")
    with pytest.raises(UserError, match="set 'xquad' has no 'ko' data"):
        prefs_cli.check_request(prefs_cli.PrefRequest("cross-lingual", "ko", ["xquad"], root=root))
    with pytest.raises(UserError, match="unknown set 'squad'"):
        prefs_cli.check_request(prefs_cli.PrefRequest("cross-lingual", "ru", ["squad"], root=root))


@pytest.mark.shared_data
def test_cross_lingual_on_real_mt_bench_ko_and_xquad_ru(shared_data):
    ko, ko_rep = prefs_cli.build(prefs_cli.PrefRequest("cross-lingual", "ko", ["mt_bench"], root=shared_data))
    c = ko_rep["sets"]["mt_bench"]
    # 80 questions with a Korean reference answer; only 101-130 have an English one
    assert (c["read"], c["missing_answer"], c["identical"], c["kept"]) == (80, 50, 0, 30)
    assert {r.id for r in ko} == {f"mt_bench/{i}" for i in range(101, 131)}
    assert ko[0].rejected.startswith("If you have just overtaken the second person")
    ru, ru_rep = prefs_cli.build(prefs_cli.PrefRequest("cross-lingual", "ru", ["xquad"], root=shared_data))
    c = ru_rep["sets"]["xquad"]
    assert (c["read"], c["identical"], c["duplicates"], c["kept"]) == (1190, 115, 4, 1071) == (1190, 115, 4, len(ru))
    assert all(r.chosen.strip() != r.rejected.strip() and r.prompt.startswith("Текст: ") for r in ru)


# --------------------------------------------------------------------------------------------- labels

YESNO_TASK = """
name: tiny_yn
lang: ru
kind: yesno
format: jsonl
file: yn/val.jsonl
train_file: yn/train.jsonl
split: val
system: "Отвечай кратко."
prompts: ["{passage} {question} Ответь да или нет."]
label_field: label
labels: {"true": "yes", "false": "no"}
"""

MC_TASK = """
name: tiny_mc
lang: ko
kind: multiple_choice
format: tsv
file: mc/dev.tsv
train_file: mc/train.tsv
prompts: ["{context}"]
choices: [" {choice1}", " {choice2}", " {choice3}"]
label_field: label
labels: {"0": 0, "1": 1, "2": 2}
"""

CARVE_TASK = """
name: tiny_carve
lang: ar
kind: yesno
format: jsonl
file: c/all.jsonl
carve: test
carve_key: [text]
prompts: ["{text}"]
label_field: label
labels: {"0": "yes", "1": "no"}
"""


def _task(tmp_path: Path, text: str) -> str:
    path = tmp_path / f"{text.split('name: ')[1].split()[0]}.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def _tsv(path: Path, header: list[str], *rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def test_label_pairs_yes_no_right_and_wrong_word(tmp_path):
    task = _task(tmp_path, YESNO_TASK)
    _jsonl(tmp_path / "yn" / "train.jsonl",
           {"idx": 0, "passage": "Москва — столица России.", "question": "Москва столица?", "label": True},
           {"idx": 1, "passage": "Нева течёт в Петербурге.", "question": "Нева в Москве?", "label": False})
    _jsonl(tmp_path / "yn" / "val.jsonl", {"idx": 0, "passage": "Вал.", "question": "Вал?", "label": True})
    records, counts = labels.label_pairs(task, tmp_path, "ru")
    src = "tiny_yn:yn/train.jsonl"
    assert records == [
        PrefRecord("Москва — столица России. Москва столица? Ответь да или нет.", "Да", "Нет", "Отвечай кратко.",
                   "tiny_yn/0", "ru", f"{src}#0", "label"),
        PrefRecord("Нева течёт в Петербурге. Нева в Москве? Ответь да или нет.", "Нет", "Да", "Отвечай кратко.",
                   "tiny_yn/1", "ru", f"{src}#1", "label"),
    ]
    assert counts.read == 2


def test_label_pairs_multiple_choice_right_option_vs_a_wrong_one(tmp_path):
    task = _task(tmp_path, MC_TASK)
    _tsv(tmp_path / "mc" / "train.tsv", ["context", "choice1", "choice2", "choice3", "label"],
         ["나는 밥을", "먹었다", "날았다", "헤엄쳤다", "0"], ["새가 하늘을", "먹었다", "날았다", "헤엄쳤다", "1"])
    records, _ = labels.label_pairs(task, tmp_path, "ko", seed=3)
    assert [(r.prompt, r.chosen) for r in records] == [("나는 밥을", "먹었다"), ("새가 하늘을", "날았다")]
    wrong = [["날았다", "헤엄쳤다"], ["먹었다", "헤엄쳤다"]]
    assert [r.rejected for r in records] == [random.Random(f"3:{i}").choice(w) for i, w in enumerate(wrong)]
    assert all(r.system is None and r.kind == "label" for r in records)


def test_label_pairs_from_a_carve_use_the_half_not_evaluated(tmp_path):
    from lingotune.eval.tasks import carve_part

    task = _task(tmp_path, CARVE_TASK)
    rows = [{"text": f"تغريدة رقم {i}", "label": i % 2} for i in range(40)]
    _jsonl(tmp_path / "c" / "all.jsonl", *rows)
    records, counts = labels.label_pairs(task, tmp_path, "ar")
    dev = [r for r in rows if carve_part(r, ["text"]) == "dev"]
    assert 0 < len(dev) < len(rows) and counts.read == len(records) == len(dev)
    assert [(r.prompt, r.chosen) for r in records] == [(r["text"], "نعم" if r["label"] == 0 else "لا") for r in dev]


def test_label_tasks_without_a_training_split_or_in_another_language_are_refused(tmp_path):
    no_split = _task(tmp_path, YESNO_TASK.replace("train_file: yn/train.jsonl\n", "").replace("tiny_yn", "no_split"))
    with pytest.raises(UserError, match="no training split"):
        labels.label_spec(no_split, "ru")
    same_file = _task(tmp_path, YESNO_TASK.replace("yn/train.jsonl", "yn/val.jsonl").replace("tiny_yn", "same_file"))
    with pytest.raises(UserError, match="train_file is the evaluated file"):
        labels.label_spec(same_file, "ru")
    with pytest.raises(UserError, match="written in ru, not ko"):
        labels.label_spec(_task(tmp_path, YESNO_TASK), "ko")
    with pytest.raises(UserError, match="kind translation has no labels"):
        labels.label_spec("flores_ru_from_en", "ru")


@pytest.mark.shared_data
def test_kobest_label_pairs_come_from_train_only(shared_data):
    from lingotune.eval.tasks import load_task, read_rows

    leak = prefs_cli.eval_leakage_index("ko", shared_data)
    records, report = prefs_cli.build(prefs_cli.PrefRequest("labels", "ko", root=shared_data), leak)
    key = {"kobest_boolq": "Question", "kobest_copa": "sentence", "kobest_hellaswag": "context",
           "kobest_sentineg": "Text", "kobest_wic": "SENTENCE1"}
    assert list(report["sets"]) == list(key)
    for task, fld in key.items():
        spec = load_task(task)
        assert report["sets"][task]["read"] == len(read_rows(spec, shared_data, "ko", which="train"))
        built = [r for r in records if r.id.startswith(f"{task}/")]
        assert built and all(r.source.startswith(f"{task}:{spec.train_file}#") for r in built)
        text = "\x00".join(t for r in built for t in (r.prompt, r.chosen, r.rejected))
        dev_texts = [row[fld] for row in read_rows(spec, shared_data, "ko") if len(row[fld].split()) >= 4]
        assert dev_texts and not [t for t in dev_texts if t in text], task


@pytest.mark.shared_data
def test_idat_label_pairs_come_from_the_dev_half(shared_data):
    from lingotune.eval.tasks import carve_part, load_task, read_rows

    records, counts = labels.label_pairs("idat", shared_data, "ar")
    rows = {f"idat/{r['id']}": r for r in read_rows(load_task("idat"), shared_data, "ar")}
    assert counts.read == sum(carve_part(r, ["text"]) == "dev" for r in rows.values()) == len(records)
    assert all(carve_part(rows[r.id], ["text"]) == "dev" for r in records)


# --------------------------------------------------------------------------------------------- on-policy

class FakeModel:
    """Stands in for `inference.generate_chat`: answers from a table, counts the prompts it was asked."""

    def __init__(self, answers: dict[str, str], fail_after: int | None = None):
        self.answers, self.fail_after, self.asked, self.calls = answers, fail_after, [], 0

    def __call__(self, model, tok, conversations, max_new_tokens, batch_size=8, stop="eos", desc=""):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        self.asked += [c[-1]["content"] for c in conversations]
        return [self.answers[c[-1]["content"]] for c in conversations]


REFS = [Record("Столица Франции?", "Столица Франции — Париж.", None, "1", "ru", "refs:1"),
        Record("Сколько будет 2+2?", "Четыре.", "Отвечай кратко.", "2", "ru", "refs:2"),
        Record("Назови цвет неба.", "Небо голубое.", None, "3", "ru", "refs:3"),
        Record("Кто написал «Войну и мир»?", "Лев Толстой.", None, "4", "ru", "refs:4"),
        Record("Какой сегодня день?", "Не знаю.", None, "5", "ru", "refs:5")]
ANSWERS = {"Столица Франции?": "столица франции - париж",  # the same after normalisation: near-duplicate
           "Сколько будет 2+2?": "Five, I think.",
           "Назови цвет неба.": "",  # nothing generated
           "Кто написал «Войну и мир»?": "Пушкин.",
           "Какой сегодня день?": "Не знаю."}  # identical


def test_on_policy_pairs_cached_and_near_duplicates_dropped(tmp_path, monkeypatch):
    fake = FakeModel(ANSWERS)
    monkeypatch.setattr(inference, "generate_chat", fake)
    gen = prefs.Generator(None, None, "fake-model", max_new_tokens=16, batch_size=2)
    records, counts = prefs.on_policy_pairs(REFS, gen, tmp_path / "cache")
    kept = prefs.screen(records, counts)
    assert kept == [PrefRecord("Сколько будет 2+2?", "Четыре.", "Five, I think.", "Отвечай кратко.", "2", "ru",
                               "refs:2", "on-policy"),
                    PrefRecord("Кто написал «Войну и мир»?", "Лев Толстой.", "Пушкин.", None, "4", "ru", "refs:4",
                               "on-policy")]
    assert (counts.read, counts.near_duplicates, counts.empty, counts.identical, counts.kept) == (5, 1, 1, 1, 2)
    assert sorted(fake.asked) == sorted(ANSWERS) and fake.calls == 3  # batches of 2

    again = FakeModel(ANSWERS)
    monkeypatch.setattr(inference, "generate_chat", again)
    records2, _ = prefs.on_policy_pairs(REFS, gen, tmp_path / "cache")
    assert again.calls == 0 and records2 == records


def test_on_policy_interrupted_build_resumes_without_regenerating(tmp_path, monkeypatch):
    gen = prefs.Generator(None, None, "fake-model", max_new_tokens=16, batch_size=2)
    first = FakeModel(ANSWERS, fail_after=1)
    monkeypatch.setattr(inference, "generate_chat", first)
    with pytest.raises(KeyboardInterrupt):
        prefs.on_policy_pairs(REFS, gen, tmp_path / "cache")
    second = FakeModel(ANSWERS)
    monkeypatch.setattr(inference, "generate_chat", second)
    prefs.on_policy_pairs(REFS, gen, tmp_path / "cache")
    assert len(first.asked) == 2 and sorted(first.asked + second.asked) == sorted(ANSWERS)
    other = prefs.Generator(None, None, "another-model", max_new_tokens=16, batch_size=8)
    third = FakeModel(ANSWERS)
    monkeypatch.setattr(inference, "generate_chat", third)
    prefs.on_policy_pairs(REFS, other, tmp_path / "cache")
    assert sorted(third.asked) == sorted(ANSWERS)  # another model's answers are not reused


def test_generation_cache_ignores_a_torn_line_and_keeps_appending(tmp_path):
    path = tmp_path / "generations.jsonl"
    path.write_text('{"key": "a", "text": "A"}\n{"key": "b", "te', encoding="utf-8")
    from lingotune.files import JsonlCache

    cache = JsonlCache(path, field="text")
    assert cache.items == {"a": "A"}
    cache.put_many([("c", "C")])
    assert JsonlCache(path, field="text").items == {"a": "A", "c": "C"}


@pytest.mark.parametrize("chosen, rejected, near", [
    ("Столица Франции — Париж.", "столица франции - париж", True),  # equal after normalisation
    ("The quick brown fox jumps over the lazy dog.", "The quick brown fox jumped over the lazy dog.", True),
    ("Ответ: 72", "Ответ: 72. Потому что 8 умножить на 9 равно 72.", False),
    ("Столица Франции — Париж.", "Париж является столицей Франции.", False),
    ("Да", "Нет", False),
])
def test_near_duplicate_rule(chosen, rejected, near):
    assert prefs.near_duplicate(chosen, rejected) is near


# --------------------------------------------------------------------------------------------- leakage

def test_leakage_check_drops_a_pair_sharing_an_ngram_with_an_eval_text():
    index = LeakageIndex(["Alpha beta gamma delta epsilon zeta eta theta iota kappa."])
    pairs = [PrefRecord("Q1", "ok", "The eval says beta gamma delta epsilon zeta eta theta iota!"),
             PrefRecord("Q2 beta gamma delta epsilon zeta eta theta iota", "ok", "no"),
             PrefRecord("Q3", "beta gamma delta epsilon", "fine"),  # only four words in common
             PrefRecord("Q4", "a", "b", system="alpha beta gamma delta epsilon zeta eta theta")]
    counts = prefs.PrefCounts()
    kept = prefs.screen(pairs, counts, index)
    assert [r.prompt for r in kept] == ["Q3"] and (counts.leaked, counts.kept) == (3, 1)


def test_on_policy_references_that_leak_are_not_generated(tmp_path, monkeypatch):
    fake = FakeModel(ANSWERS)
    monkeypatch.setattr(inference, "generate_chat", fake)
    index = LeakageIndex(["Кто написал «Войну и мир»?"])
    gen = prefs.Generator(None, None, "fake-model")
    _, counts = prefs.on_policy_pairs(REFS, gen, tmp_path / "cache", leak=index)
    assert counts.leaked == 1 and "Кто написал «Войну и мир»?" not in fake.asked


# --------------------------------------------------------------------------------------------- the command

def test_cli_build_prefs_from_a_file(tmp_path):
    src = _jsonl(tmp_path / "hh.jsonl", {"chosen": _hh("Привет, как дела у тебя?", "Хорошо."),
                                        "rejected": _hh("Привет, как дела у тебя?", "Fine.")},
                 {"prompt": "Q", "chosen": "same", "rejected": "same"})
    out = tmp_path / "out" / "prefs.jsonl"
    r = runner.invoke(app, ["data", "build-prefs", "--lang", "ru", "--from", "file", "--input", str(src), "--out", str(out),
                            "--data-root", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == [
        {"prompt": "Привет, как дела у тебя?", "chosen": "Хорошо.", "rejected": "Fine.", "lang": "ru", "kind": "file",
         "source": f"{src}:1"}]
    report = json.loads((tmp_path / "out" / "prefs.report.json").read_text())
    assert report["sets"]["hh.jsonl"] == {"kind": "file", "read": 2, "missing_answer": 0, "identical": 1, "empty": 0,
                                               "near_duplicates": 0, "duplicates": 0, "leaked": 0, "kept": 1}
    assert report["kinds"]["file"]["kept"] == 1


@pytest.mark.parametrize("args, message", [
    (["--from", "file", "--input", "{bad}"], "bad.jsonl:2: field 'chosen' is missing"),
    (["--from", "file", "--input", "{tmp}/none.jsonl"], "none.jsonl: file not found"),
    (["--from", "file"], "option '--input' is required"),
    (["--from", "rlhf"], "option '--from' must be one of"),
    (["--from", "cross-lingual", "--sets", "xquad", "--lang", "ko"], "set 'xquad' has no 'ko' data"),
    (["--from", "labels", "--sets", "kobest_boolq"], "task kobest_boolq: written in ko, not ru"),
    (["--from", "labels", "--sets", "no_such_task"], "unknown task 'no_such_task'"),
    (["--from", "on-policy", "--sets", "xquad"], "option '--model' is required"),
    (["--from", "file", "--input", "{same}"], "no preference pairs left"),
    (["--from", "file", "--input", "{bad}", "--lang", "xx"], "unknown language"),
])
def test_cli_bad_input_one_line_exit_2_nothing_written(tmp_path, args, message):
    root = _tiny_root(tmp_path / "data")
    bad = _jsonl(tmp_path / "bad.jsonl", {"prompt": "Q", "chosen": "a", "rejected": "b"}, {"prompt": "Q", "rejected": "b"})
    same = _jsonl(tmp_path / "same.jsonl", {"prompt": "Q", "chosen": "a", "rejected": "a"})
    args = [a.format(bad=bad, same=same, tmp=tmp_path) for a in args]
    lang = [] if "--lang" in args else ["--lang", "ru"]
    out = tmp_path / "out" / "p.jsonl"
    r = runner.invoke(app, ["data", "build-prefs", *lang, *args, "--out", str(out), "--data-root", str(root),
                            "--cache-dir", str(tmp_path / "cache")])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
    error_lines = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_cli_build_prefs_cross_lingual_and_labels(tmp_path):
    root = _tiny_root(tmp_path / "data")
    out = tmp_path / "x.jsonl"
    r = runner.invoke(app, ["data", "build-prefs", "-l", "ru", "--from", "cross-lingual", "-o", str(out), "--data-root", str(root)])
    assert r.exit_code == 0, r.output
    assert [json.loads(line)["chosen"] for line in out.read_text(encoding="utf-8").splitlines()] == ["Ответ один.", "в Смилянах"]
    task = _task(tmp_path, YESNO_TASK)
    _jsonl(root / "yn" / "train.jsonl", {"idx": 0, "passage": "Небо синее.", "question": "Небо синее?", "label": True})
    _jsonl(root / "yn" / "val.jsonl", {"idx": 0, "passage": "Вал.", "question": "Вал?", "label": True})
    r = runner.invoke(app, ["data", "build-prefs", "-l", "ru", "--from", "labels", "--sets", task, "-o", str(out),
                            "--data-root", str(root)])
    assert r.exit_code == 0, r.output
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == [
        {"prompt": "Небо синее. Небо синее? Ответь да или нет.", "chosen": "Да", "rejected": "Нет",
         "system": "Отвечай кратко.", "id": "tiny_yn/0", "lang": "ru", "kind": "label", "source": "tiny_yn:yn/train.jsonl#0"}]


def test_cli_build_prefs_on_policy_resumes_from_its_cache(tmp_path, monkeypatch):
    import lingotune.models

    monkeypatch.setattr(lingotune.models, "load_model", lambda source, device="cpu", **kw: (object(), object()))
    refs = _jsonl(tmp_path / "refs.jsonl", *({"prompt": r.prompt, "completion": r.response} for r in REFS))
    args = ["data", "build-prefs", "-l", "ru", "--from", "on-policy", "--input", str(refs), "--model", "fake", "-o",
            str(tmp_path / "op.jsonl"), "--cache-dir", str(tmp_path / "cache"), "--data-root", str(tmp_path)]
    fake = FakeModel(ANSWERS)
    monkeypatch.setattr(inference, "generate_chat", fake)
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (tmp_path / "op.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(x["chosen"], x["rejected"], x["kind"]) for x in rows] == [("Четыре.", "Five, I think.", "on-policy"),
                                                                        ("Лев Толстой.", "Пушкин.", "on-policy")]
    again = FakeModel(ANSWERS)
    monkeypatch.setattr(inference, "generate_chat", again)
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and again.calls == 0, r.output
    r = runner.invoke(app, args + ["--fresh"])
    assert r.exit_code == 0 and sorted(again.asked) == sorted(ANSWERS), r.output


def test_cross_lingual_starter_pairs_prefer_the_target_answer_to_the_english_one():
    from lingotune.data.starter import generate

    records, report = prefs_cli.build(prefs_cli.PrefRequest("cross-lingual", "ko", sets=["starter"], root=Path(".")))
    data = generate("ko")
    by_id = {f"starter/{t.id}": (en, t) for en, t in data.train_pairs}
    assert records and all(r.id in by_id for r in records)
    for r in records:
        en, ko = by_id[r.id]
        assert (r.prompt, r.chosen, r.rejected) == (ko.prompt, ko.response, en.response)
    held = {h["question"] for h in data.heldout_yesno}
    assert not held & {r.prompt for r in records}  # held-out facts never become pairs
    s = report["sets"]["starter"]
    assert s["read"] == len(data.train_pairs) and s["kept"] == len(records) == s["read"] - s["identical"]
