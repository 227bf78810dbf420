"""Readers: every single-file format, paired layouts, their errors, and the real shared-data layouts."""

from __future__ import annotations

import json
import sys

import pytest

from lingotune.data import formats, sources
from lingotune.data.records import DataError
from lingotune.languages import get_language


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_alpaca_json_array_sources_point_at_record_lines(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps([{"instruction": "Add.", "input": "2+2", "output": "4"},
                             {"instruction": "Say hi.", "input": "", "output": "hi"}], indent=2))
    recs = formats.read_file(p, "alpaca")
    assert [r.prompt for r in recs] == ["Add.\n\n2+2", "Say hi."]
    assert [r.response for r in recs] == ["4", "hi"]
    assert recs[0].source == f"{p}:2" and recs[1].source == f"{p}:7"
    assert all(r.lang == "en" for r in recs)


def test_alpaca_jsonl_and_limit(tmp_path):
    p = write_jsonl(tmp_path / "a.jsonl", [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(5)])
    recs = formats.read_file(p, "auto", "ru", limit=2)
    assert [r.prompt for r in recs] == ["q0", "q1"] and recs[1].source == f"{p}:2" and recs[0].lang == "ru"


def test_openorca_keeps_system(tmp_path):
    p = write_jsonl(tmp_path / "o.jsonl", [{"id": "x1", "system_prompt": "Be brief.", "question": "Q?", "response": "A."},
                                           {"id": "x2", "system_prompt": "", "question": "Q2?", "response": "A2."}])
    recs = formats.read_file(p, "openorca")
    assert recs[0].system == "Be brief." and recs[0].id == "x1" and recs[1].system is None


def test_sharegpt_first_exchange_or_all(tmp_path):
    convo = {"id": "c", "conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "u1"},
                                          {"from": "gpt", "value": "a1"}, {"from": "human", "value": "u2"},
                                          {"from": "gpt", "value": "a2"}]}
    msgs = {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]}
    p = write_jsonl(tmp_path / "s.jsonl", [convo, msgs])
    first = formats.read_file(p, "sharegpt")
    assert [(r.prompt, r.response, r.system) for r in first] == [("u1", "a1", "S"), ("hello", "hi", None)]
    every = formats.read_file(p, "sharegpt", all_turns=True)
    assert [(r.prompt, r.response) for r in every] == [("u1", "a1"), ("u2", "a2"), ("hello", "hi")]
    assert every[0].id == "c#0" and every[1].id == "c#1"


def test_prompt_completion(tmp_path):
    p = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "p", "completion": "c"}])
    assert formats.read_file(p, "prompt_completion")[0].response == "c"


def test_malformed_json_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", \n')
    with pytest.raises(DataError, match=rf"{p.name}:2: malformed JSON"):
        formats.read_file(p)


def test_malformed_json_array_names_line(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('[\n {"instruction": "a", "output": "b"},\n {"instruction": "a" "output": "b"}\n]')
    with pytest.raises(DataError, match=r"bad.json:3: malformed JSON"):
        formats.read_file(p)


def test_missing_field_names_field_and_line(tmp_path):
    p = write_jsonl(tmp_path / "m.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "a"}])
    with pytest.raises(DataError, match=r"m.jsonl:2: field 'output' is missing"):
        formats.read_file(p, "alpaca")


def test_wrong_type_names_field(tmp_path):
    p = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "a", "completion": 5}])
    with pytest.raises(DataError, match=r"t.jsonl:1: field 'completion' must be a string, got int"):
        formats.read_file(p, "prompt_completion")
    p2 = write_jsonl(tmp_path / "r.jsonl", [{"messages": [{"role": "robot", "content": "x"}]}])
    with pytest.raises(DataError, match=r"field 'messages\[0\].role'"):
        formats.read_file(p2, "sharegpt")


def test_unknown_layout_and_missing_file(tmp_path):
    p = write_jsonl(tmp_path / "u.jsonl", [{"foo": 1}])
    with pytest.raises(DataError, match="cannot tell the format"):
        formats.read_file(p)
    with pytest.raises(DataError, match="file not found"):
        formats.read_file(tmp_path / "nope.jsonl")


def test_hf_disk_without_datasets_says_pip_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails even where datasets is installed
    with pytest.raises(DataError, match=f"^{tmp_path}: reading Hugging Face datasets needs the `datasets` package: "
                                        r"pip install 'lingotune\[datasets\]' \(or pip install datasets\)$"):
        formats.read_hf_disk(tmp_path)
    with pytest.raises(DataError, match="pip install datasets"):
        formats.read_hub("some/dataset")


def test_hf_disk_rows_through_a_fake_datasets(tmp_path, monkeypatch):
    import types

    class FakeDict(dict):
        pass

    fake = types.SimpleNamespace(DatasetDict=FakeDict,
                                 load_from_disk=lambda p: FakeDict(train=[{"instruction": "i", "input": "", "output": "o"}]))
    monkeypatch.setitem(sys.modules, "datasets", fake)
    recs = formats.read_hf_disk(tmp_path, lang="ru")
    assert recs[0].prompt == "i" and recs[0].response == "o" and recs[0].source == f"{tmp_path}:1"
    with pytest.raises(DataError, match="field 'split'"):
        formats.read_hf_disk(tmp_path, split="test")


def test_parallel_text_builds_translation_pairs(tmp_path):
    en, ru = tmp_path / "x.en", tmp_path / "x.ru"
    en.write_text("Hello.\nGood night.\n")
    ru.write_text("Привет.\nСпокойной ночи.\n")
    pairs = sources.read_parallel_text(en, ru, "ru")
    e, t = pairs[1]
    assert e.prompt == "Translate into Russian: Good night." and e.response == "Спокойной ночи."
    assert t.prompt == "Переведи на русский язык:\nGood night." and t.response == "Спокойной ночи."
    assert e.lang == "en" and t.lang == "ru" and t.source == f"{ru}:2"
    ru.write_text("Привет.\n")
    with pytest.raises(DataError, match="line-aligned"):
        sources.read_parallel_text(en, ru, "ru")


def test_paired_by_index_and_by_id(tmp_path):
    en = write_jsonl(tmp_path / "en.jsonl", [{"id": "a", "instruction": "Hi", "output": "Hello"},
                                             {"id": "b", "instruction": "Bye", "output": "Goodbye"}])
    ru = write_jsonl(tmp_path / "ru.jsonl", [{"id": "b", "instruction": "Пока", "output": "До свидания"},
                                             {"id": "a", "instruction": "Привет", "output": "Здравствуй"}])
    by_id = sources.read_paired(en, ru, "ru", align="id")
    assert {(e.prompt, t.prompt) for e, t in by_id} == {("Hi", "Привет"), ("Bye", "Пока")}
    by_index = sources.read_paired(en, ru, "ru", align="index")
    assert by_index[0][0].prompt == "Hi" and by_index[0][1].prompt == "Пока"
    short = write_jsonl(tmp_path / "short.jsonl", [{"instruction": "x", "output": "y"}])
    with pytest.raises(DataError, match="records but"):
        sources.read_paired(en, short, "ru")
    with pytest.raises(DataError, match="field 'id' is missing"):
        sources.read_paired(en, short, "ru", align="id")


# --------------------------------------------------------------------------------------------- real data



@pytest.mark.shared_data
@pytest.mark.parametrize("lang", ["ru", "ar"])
def test_xquad(shared_data, lang):
    pairs = sources.read_xquad(shared_data / "xquad", lang)
    assert len(pairs) == 1190
    e, t = pairs[0]
    assert e.id == t.id == "56beb4343aeaaa14008c925b" and t.response == "308"
    assert t.prompt.startswith(get_language(lang).passage_label + ": ") and "\ufeff" not in t.prompt
    assert e.prompt.endswith("How many points did the Panthers defense surrender?")


@pytest.mark.shared_data
def test_gsm8k_numeric_answers_and_translate_mode(shared_data):
    pairs = sources.read_gsm8k(shared_data / "gsm8k_questions_ru_en", "ru")
    assert len(pairs) > 7000
    e, t = pairs[0]
    assert e.response == "Answer: 72" and t.response == "Ответ: 72" and t.prompt.startswith("Наталья")
    tr = sources.read_gsm8k(shared_data / "gsm8k_questions_ru_en", "ru", mode="translate", limit=3)
    assert tr[0][1].response.startswith("Наталья") and tr[0][0].prompt.startswith("Translate into Russian: Natalia")


@pytest.mark.shared_data
def test_msvamp(shared_data):
    pairs = sources.read_msvamp(shared_data / "msvamp", "ru")
    assert len(pairs) == 1000
    assert pairs[0][1].response == "Ответ: 8" and pairs[0][1].prompt.startswith("Джулия")


@pytest.mark.shared_data
@pytest.mark.parametrize("lang,n", [("ru", 40), ("ko", 80)])
def test_mt_bench(shared_data, lang, n):
    pairs = sources.read_mt_bench(shared_data / f"mt_bench_{lang}", lang)
    assert len(pairs) == n and all(e.id == t.id for e, t in pairs)
    assert sum(not t.response.strip() for _, t in pairs) <= 1  # one Russian reference answer is blank (validate drops it)
    assert len(sources.read_mt_bench(shared_data / f"mt_bench_{lang}", lang, mode="translate")) == 80


@pytest.mark.shared_data
def test_ifeval(shared_data):
    pairs = sources.read_ifeval(shared_data / "ifeval_en_ru", "ru")
    assert len(pairs) == 541 and pairs[0][1].id == "1000" and pairs[0][1].response.startswith("Напишите")


@pytest.mark.shared_data
def test_mintaka_keeps_language_neutral_answers(shared_data):
    pairs = sources.read_mintaka(shared_data / "mintaka_en_ar" / "mintaka_dev.json", "ar")
    assert 500 < len(pairs) < 600
    assert {t.response for _, t in pairs} >= {"نعم", "لا"}
    assert len(sources.read_mintaka(shared_data / "mintaka_en_ar" / "mintaka_dev.json", "ar", mode="translate")) == 2000
    with pytest.raises(DataError, match="has no 'ru'"):
        sources.read_mintaka(shared_data / "mintaka_en_ar" / "mintaka_dev.json", "ru")


@pytest.mark.shared_data
@pytest.mark.parametrize("lang", ["ru", "ar", "ko"])
def test_flores_and_tatoeba(shared_data, lang):
    assert len(sources.read_flores(shared_data / "flores200", lang)) == 1012
    tat = sources.read_tatoeba(shared_data / "tatoeba_v1", lang)
    assert len(tat) == 1000 and tat[0][0].prompt.startswith("Translate into ")


@pytest.mark.shared_data
def test_alpaca_and_hplt(shared_data):
    recs = formats.read_file(shared_data / "alpaca_cleaned_en_2000" / "alpaca_data_cleaned.first2000.json")
    assert len(recs) == 2000 and recs[0].prompt == "Give three tips for staying healthy."
    hplt = sources.read_paired(shared_data / "hplt_instruction_test" / "test_en.jsonl",
                               shared_data / "hplt_instruction_test" / "test_ru.jsonl", "ru", align="id", mode="translate")
    assert len(hplt) == 50
