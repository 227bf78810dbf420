"""Validation on load: empty answers, wrong script, duplicates, leakage, strict mode."""

from __future__ import annotations

import pytest

from lingotune.data.records import DataError, Record
from lingotune.data.validate import (LeakageIndex, drop_leaked_pairs, drop_leaked_records, validate_pairs,
                                     validate_records, wrong_script)


def rec(prompt, response, lang="ru", src="f.jsonl:1"):
    return Record(prompt, response, None, None, lang, src)


def test_empty_answer_counted_and_dropped():
    kept, rep = validate_records([rec("Как дела у тебя сегодня?", "  "), rec("Как дела у тебя сегодня?", "Хорошо, спасибо.")], "ru")
    assert len(kept) == 1 and rep.empty_answer == 1 and rep.kept == 1 and rep.records_in == 2
    assert "field 'response' is empty" in rep.examples[0] and rep.examples[0].startswith("f.jsonl:1")


def test_wrong_script_counted_short_texts_ignored():
    assert wrong_script("This is an English sentence.", "ru")
    assert not wrong_script("Это русское предложение.", "ru")
    assert not wrong_script("NASA 2024", "ru")  # too few letters to judge
    recs = [rec("Кто написал эту книгу?", "The book was written by Tolstoy."),
            rec("Кто написал эту книгу?", "Толстой"),
            rec("Who wrote this book, do you know?", "Это написал Лев Толстой.")]
    kept, rep = validate_records(recs, "ru")
    assert [r.response for r in kept] == ["Толстой"] and rep.wrong_script == 2
    kept, rep = validate_records(recs, "ru", script_check=False)
    assert len(kept) == 3 and rep.wrong_script == 0


def test_pairs_check_english_prompt_and_target_side():
    good = (rec("What is the capital?", "Paris", "en"), rec("Какая столица у этой страны?", "Париж"))
    swapped = (rec("Какая столица у этой страны?", "Париж", "en"), rec("What is the capital of it?", "Paris is the capital"))
    translation = (rec("Translate into Russian: Good morning to all of my friends and colleagues.", "Доброе утро всем.", "en"),
                   rec("Переведи на русский язык:\nGood morning to all of my friends and colleagues.", "Доброе утро всем."))
    kept, rep = validate_pairs([good, swapped, translation], "ru")
    assert kept == [good] and rep.wrong_script == 2
    kept, _ = validate_pairs([good, swapped, translation], "ru", check_target_prompt=False)
    assert kept == [good, translation]


def test_duplicates_counted_and_dropped_or_kept():
    recs = [rec("Сколько будет два плюс два?", "Четыре"), rec("Сколько будет два плюс два?", "Четыре", src="f.jsonl:2"),
            rec("Сколько будет два плюс три?", "Пять")]
    kept, rep = validate_records(recs, "ru")
    assert len(kept) == 2 and rep.duplicates == 1 and "f.jsonl:2" in rep.examples[0]
    kept, rep = validate_records(recs, "ru", drop_duplicates=False)
    assert len(kept) == 3 and rep.duplicates == 1


def test_strict_raises_naming_file_line_and_field():
    with pytest.raises(DataError, match=r"f.jsonl:1: field 'response' is empty"):
        validate_records([rec("Вопрос без ответа здесь?", "")], "ru", strict=True)
    with pytest.raises(DataError, match=r"f.jsonl:1: field 'response' is not in Cyrillic script"):
        validate_records([rec("Вопрос на русском языке?", "An answer in English words.")], "ru", strict=True)


def test_leakage_by_word_8grams():
    evals = ["The quick brown fox jumps over the lazy dog near the river bank today.", "Да"]
    idx = LeakageIndex(evals)
    assert idx.leaks("Story: the QUICK brown fox jumps over the lazy dog, again.")  # 8 shared words
    assert not idx.leaks("The quick brown fox jumps over a lazy dog.")  # breaks every 8-gram
    assert not idx.leaks("Да, конечно")  # evaluation texts under 4 words are ignored
    short = LeakageIndex(["Is Paris in France?"])  # shorter than 8 words: the whole text is the shingle
    assert short.leaks("Question: is Paris in France? Answer yes or no.")
    recs = [rec("Story: the quick brown fox jumps over the lazy dog near it", "Ответ первый"), rec("Другое", "Ответ второй")]
    kept, n = drop_leaked_records(recs, idx)
    assert n == 1 and kept == recs[1:]
    pairs = [(rec("x", "y", "en"), recs[0]), (rec("x", "y", "en"), recs[1])]
    kept_pairs, n = drop_leaked_pairs(pairs, idx)
    assert n == 1 and len(kept_pairs) == 1


def test_cached_script_share_matches_languages():
    from lingotune import languages
    from lingotune.data import validate

    for text in ["Привет, world!", "مرحبا بالعالم", "안녕하세요 hello", "123 ...", "Ünïcödé ёж"]:
        for script in ("Latin", "Cyrillic", "Arabic", "Hangul"):
            assert validate.script_share(text, script) == languages.script_share(text, script)
