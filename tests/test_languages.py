"""The language table: today's per-language text pinned byte for byte, and a language defined only here
(Ukrainian) that gets starter data, DParT pairs, yes/no parsing and translation prompts with no other edit."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import fields, replace

import pytest

from lingotune import languages
from lingotune.data import sources, starter
from lingotune.data.pairs import build_stage1
from lingotune.data.records import DataError, Record
from lingotune.eval.config import EvalConfig
from lingotune.eval.copy import build_messages as copy_messages
from lingotune.eval.tasks import load_task
from lingotune.eval.translation import instruction
from lingotune.eval.yesno import answer_word
from lingotune.languages import (
    Language,
    get_language,
    parse_yes_no,
    register,
    script_share,
)

# instruction(src, tgt) for every pair, as rendered before the entries moved into lingotune.languages.
PROMPTS = {
    ("ru", "en"): ("Ты - полезный помощник, прочитай текст и переведи его на английский. Пример: "
                   "### Альберт Эйнштейн был одним из лучших физиков-теоретиков, в 1905 году он выдвинул теорию общей и специальной теории относительности."
                   "### Albert Einstein was one of the best theoretical physicists in 1905, he put forward the theory of general and special relativity."),
    ("en", "ru"): ("Ты - полезный помощник, прочитай текст и переведи его на русский. Пример: "
                   "### Albert Einstein was one of the best theoretical physicists in 1905, he put forward the theory of general and special relativity."
                   "### Альберт Эйнштейн был одним из лучших физиков-теоретиков, в 1905 году он выдвинул теорию общей и специальной теории относительности."),
    ("ar", "en"): ("مساعد شخصي اقرأ النص بإمعان وترجمه الى الانكليزية. مثال: "
                   "### ألبرت آينشتاين كان من أفضل علماء الفيزياء النظرية في ١٩٠٥ قام بطرح نظرية النسبية العامة والخاصة."
                   "### Albert Einstein was one of the best theoretical physicists in 1905, he put forward the theory of general and special relativity."),
    ("en", "ar"): ("مساعد شخصي اقرأ النص بإمعان وترجمه الى العربية. مثال: "
                   "### Albert Einstein was one of the best theoretical physicists in 1905, he put forward the theory of general and special relativity."
                   "### ألبرت آينشتاين كان من أفضل علماء الفيزياء النظرية في ١٩٠٥ قام بطرح نظرية النسبية العامة والخاصة."),
    ("ko", "en"): ("당신은 유용한 도우미입니다. 글을 잘 읽고 영어로 번역하세요. 예시: "
                   "### 알베르트 아인슈타인은 1905년 최고의 이론 물리학자 중 한 명이었으며, 일반 상대성 이론과 특수 상대성 이론을 제시했습니다."
                   "### Albert Einstein was one of the best theoretical physicists in 1905, he put forward the theory of general and special relativity."),
    ("en", "ko"): ("당신은 유용한 도우미입니다. 글을 잘 읽고 한국어로 번역하세요. 예시: "
                   "### Albert Einstein was one of the best theoretical physicists in 1905, he put forward the theory of general and special relativity."
                   "### 알베르트 아인슈타인은 1905년 최고의 이론 물리학자 중 한 명이었으며, 일반 상대성 이론과 특수 상대성 이론을 제시했습니다."),
}

# translate_native, passage/question/answer labels, MSVAMP name and default suite, per language.
TEXTS = {
    "en": ("Translate into English:", ("Passage", "Question", "Answer"), "English",
           ["starter_heldout"]),
    "ru": ("Переведи на русский язык:", ("Текст", "Вопрос", "Ответ"), "Russian",
           ["danetqa", "terra", "russe", "flores_ru_to_en", "flores_ru_from_en", "flores_ru_bpc", "starter_heldout",
            "transfer_facts", "transfer_xquad", "align_facts"]),
    "ar": ("ترجم إلى العربية:", ("النص", "السؤال", "الإجابة"), "Arabic",
           ["idat", "mq2q", "flores_ar_to_en", "flores_ar_from_en", "flores_ar_bpc", "starter_heldout",
            "transfer_facts", "transfer_xquad", "align_facts"]),
    "ko": ("한국어로 번역하세요:", ("지문", "질문", "답"), "Korean",
           ["kobest_boolq", "kobest_copa", "kobest_hellaswag", "kobest_sentineg", "kobest_wic", "flores_ko_to_en", "flores_ko_from_en", "flores_ko_bpc", "starter_heldout",
            "transfer_facts", "align_facts"]),
}

# Every starter template, filled with x="X", y="y" (one line each: "kind: question -> answer",
# "kind? yes/no question", "kind. statement").
STARTER = {
    "en": """\
currency: What is the currency of X? -> The currency of X is the y.
currency: Which currency is used in X? -> Y.
currency: Country: X. What is its currency? -> Its currency is the y.
language: What is the official language of X? -> The official language of X is Y.
language: Which language is official in X? -> Y.
language: Country: X. What is its official language? -> Its official language is Y.
city: In which country is X? -> X is in y.
city: Which country is the city of X in? -> y.
city: City: X. Which country is it in? -> It is in y.
number: Write the number X in words. -> y
number: How is the number X written in words? -> In words: y.
currency? Is the y the currency of X?
language? Is Y the official language of X?
city? Is X in y?
currency. The currency of X is the y.
language. The official language of X is Y.
city. X is a city in y.
""",
    "ru": """\
currency: Как называется валюта страны X? -> Валюта страны X — y.
currency: Какая валюта используется в стране X? -> Y.
currency: Страна: X. Какая у неё валюта? -> Её валюта — y.
language: Какой язык является официальным в стране X? -> Официальный язык страны X — y.
language: Какой официальный язык у страны X? -> Y.
language: Страна: X. Какой у неё официальный язык? -> Её официальный язык — y.
city: В какой стране находится город X? -> Город X находится в стране y.
city: Назови страну, в которой находится город X. -> Это y.
city: Город: X. В какой стране он находится? -> Страна: y.
number: Запиши число X словами. -> y
number: Как пишется число X прописью? -> Прописью: y.
currency? Правда ли, что валюта страны X — y?
language? Правда ли, что официальный язык страны X — y?
city? Страна: y. Город X находится в этой стране?
currency. Валюта страны X — y.
language. Официальный язык страны X — y.
city. Город X находится в стране y.
""",
    "ar": """\
currency: ما هي عملة X؟ -> عملة X هي y.
currency: ما العملة المستخدمة في X؟ -> y.
currency: الدولة: X. ما عملتها؟ -> عملتها هي y.
language: ما هي اللغة الرسمية في X؟ -> اللغة الرسمية في X هي y.
language: ما اللغة الرسمية المعتمدة في X؟ -> y.
language: الدولة: X. ما لغتها الرسمية؟ -> لغتها الرسمية هي y.
city: في أي دولة تقع مدينة X؟ -> تقع مدينة X في y.
city: اذكر الدولة التي تقع فيها مدينة X. -> y.
city: المدينة: X. في أي دولة تقع؟ -> تقع في y.
number: اكتب العدد X بالحروف. -> y
number: كيف يُكتب العدد X بالحروف؟ -> بالحروف: y.
currency? هل عملة X هي y؟
language? هل اللغة الرسمية في X هي y؟
city? هل تقع مدينة X في y؟
currency. عملة X هي y.
language. اللغة الرسمية في X هي y.
city. X مدينة في y.
""",
    "ko": """\
currency: X의 통화는 무엇인가요? -> X의 통화는 y입니다.
currency: X에서 사용하는 통화는 무엇입니까? -> y입니다.
currency: 국가: X. 이 나라의 통화는 무엇인가요? -> 이 나라의 통화는 y입니다.
language: X의 공용어는 무엇인가요? -> X의 공용어는 y입니다.
language: X에서 공식적으로 쓰는 언어는 무엇입니까? -> y입니다.
language: 국가: X. 이 나라의 공용어는 무엇인가요? -> 이 나라의 공용어는 y입니다.
city: X은(는) 어느 나라에 있나요? -> X은(는) y에 있습니다.
city: 도시 X이(가) 있는 나라는 어디입니까? -> y입니다.
city: 도시: X. 어느 나라에 있습니까? -> y에 있습니다.
number: 다음 숫자를 한글로 쓰세요: X -> y
number: 숫자 X: 한글로 어떻게 읽나요? -> 한글로: y.
currency? X의 통화는 y입니까?
language? X의 공용어는 y입니까?
city? X은(는) y에 있습니까?
currency. X의 통화는 y입니다.
language. X의 공용어는 y입니다.
city. X은(는) y에 있는 도시입니다.
""",
}


# sha256 (first 16 hex digits) of starter.generate(lang, seed=0, n_train=50), computed before the templates
# moved into lingotune.languages: train pairs, stage-2 records, held-out questions and parallel sentences.
STARTER_DIGESTS = {"en": "f4fd3489503f95f5", "ru": "c9a89a24ae221351", "ar": "7bf62bf7ae19ecb3",
                   "ko": "4a182df7ee010ea1"}


def starter_digest(data: starter.StarterData) -> str:
    rows = ([[e.to_dict(), t.to_dict()] for e, t in data.train_pairs] + [r.to_dict() for r in data.stage2]
            + data.heldout_yesno + [list(p) for p in data.parallel])
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()[:16]


def rendered_templates(lang: str) -> str:
    language = get_language(lang)
    lines = [f"{kind}: {starter._fill(q, 'X', 'y')} -> {starter._fill(a, 'X', 'y')}"
             for kind, pairs in language.starter_qa.items() for q, a in pairs]
    lines += [f"{kind}? {starter._fill(t, 'X', 'y')}" for kind, t in language.starter_yesno.items()]
    lines += [f"{kind}. {starter._fill(t, 'X', 'y')}" for kind, t in language.starter_statement.items()]
    return "\n".join(lines) + "\n"


def write_json(path, obj, jsonl=False):
    rows = obj if jsonl else [obj]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


# --------------------------------------------------------------------------------------------- pinned text

@pytest.mark.parametrize("pair", list(PROMPTS))
def test_translation_prompts_are_unchanged(pair):
    assert instruction(*pair) == PROMPTS[pair]


@pytest.mark.parametrize("lang", list(TEXTS))
def test_reader_texts_and_suites_are_unchanged(lang, tmp_path):
    native, (passage, question, answer), msvamp, suite = TEXTS[lang]
    _, tgt = sources.translation_pair("Good morning.", "T", lang, "1", "en:1", "tgt:1")
    assert tgt.prompt == f"{native}\nGood morning."
    squad = {"data": [{"paragraphs": [{"context": "C.", "qas": [{"id": "q1", "question": "Q?", "answers": [{"text": "A"}]}]}]}]}
    for code in ("en", lang):
        write_json(tmp_path / f"xquad.{code}.json", squad)
    (_, t), = sources.read_xquad(tmp_path, lang)
    assert t.prompt == f"{passage}: C.\n\n{question}: Q?"
    for name in ("English", msvamp):
        write_json(tmp_path / f"test_{name}.json", [{"m_query": "2 + 6?", "response": "8.0"}], jsonl=True)
    (e, t), = sources.read_msvamp(tmp_path, lang)
    assert (e.response, t.response) == ("Answer: 8", f"{answer}: 8")
    assert EvalConfig().task_names(lang) == suite


@pytest.mark.parametrize("lang", list(STARTER))
def test_starter_templates_and_data_are_unchanged(lang):
    assert rendered_templates(lang) == STARTER[lang]
    assert starter_digest(starter.generate(lang, seed=0, n_train=50)) == STARTER_DIGESTS[lang]


def test_language_has_no_extra_field():
    assert "extra" not in {f.name for f in fields(Language)}


# --------------------------------------------------------------------------------------------- a new language

UKRAINIAN = Language(
    code="uk", flores="ukr_Cyrl", name="Ukrainian", native="українська", script="Cyrillic",
    yes=("так",), no=("ні",),
    answer_in_en="Answer in Ukrainian.", answer_in_native="Відповідай українською мовою.",
    answer_yes_no="Відповідай так або ні.", tatoeba="ukr",
    translate_native="Переклади українською мовою:",
    passage_label="Текст", question_label="Питання", answer_label="Відповідь",
    mt_example=("Альберт Ейнштейн був одним із найкращих фізиків-теоретиків, у 1905 році він висунув теорію "
                "загальної та спеціальної відносності."),
    mt_example_label="Приклад:",
    mt_to_en="Ти - корисний помічник, прочитай текст і переклади його англійською.",
    mt_from_en="Ти - корисний помічник, прочитай текст і переклади його українською.",
    cldr="uk", num2words="uk",
    starter_qa={
        "currency": (("Як називається валюта країни {x}?", "Валюта країни {x} — {y}."),
                     ("Яка валюта використовується в країні {x}?", "{Y}."),
                     ("Країна: {x}. Яка в неї валюта?", "Її валюта — {y}.")),
        "language": (("Яка мова є офіційною в країні {x}?", "Офіційна мова країни {x} — {y}."),
                     ("Яка офіційна мова країни {x}?", "{Y}."),
                     ("Країна: {x}. Яка в неї офіційна мова?", "Її офіційна мова — {y}.")),
        "city": (("У якій країні розташоване місто {x}?", "Місто {x} розташоване в країні {y}."),
                 ("Назви країну, у якій розташоване місто {x}.", "Це {y}."),
                 ("Місто: {x}. У якій країні воно розташоване?", "Країна: {y}.")),
        "number": (("Запиши число {x} словами.", "{y}"),
                   ("Як пишеться число {x} словами?", "Словами: {y}.")),
    },
    starter_yesno={
        "currency": "Чи правда, що валюта країни {x} — {y}?",
        "language": "Чи правда, що офіційна мова країни {x} — {y}?",
        "city": "Країна: {y}. Місто {x} розташоване в цій країні?",
    },
    starter_statement={
        "currency": "Валюта країни {x} — {y}.",
        "language": "Офіційна мова країни {x} — {y}.",
        "city": "Місто {x} розташоване в країні {y}.",
    },
)
# German with only the fields every entry must have: each optional feature fails with a one-line error.
BARE_GERMAN = Language(
    code="de", flores="deu_Latn", name="German", native="Deutsch", script="Latin", yes=("ja",), no=("nein",),
    answer_in_en="Answer in German.", answer_in_native="Antworte auf Deutsch.", answer_yes_no="Antworte mit ja oder nein.",
)


REAL_TABLE = languages.LANGUAGES


@pytest.fixture
def table(monkeypatch):
    """A copy of LANGUAGES for the test's duration, so that `register` leaves the real table alone."""
    monkeypatch.setattr(languages, "LANGUAGES", dict(languages.LANGUAGES))
    return languages.LANGUAGES


def test_new_language_gets_starter_data(table):
    register(UKRAINIAN)
    data = starter.generate("uk", seed=0, n_train=60)
    assert len(data.train_pairs) == 60 and len(data.stage2) == 60
    for en, tgt in data.train_pairs:
        assert en.lang == "en" and tgt.lang == "uk" and en.id == tgt.id
        assert script_share(tgt.prompt, "Cyrillic") > 0.5 and script_share(en.prompt, "Latin") > 0.5
    prompts = [t.prompt for _, t in data.train_pairs]
    assert any("валюта країни" in p or "мова країни" in p or "місто" in p for p in prompts)
    numbers = [t for _, t in data.train_pairs if t.prompt.startswith(("Запиши число", "Як пишеться число"))]
    assert numbers and all(script_share(t.response, "Cyrillic") == 1.0 for t in numbers)  # num2words in Ukrainian
    yes_no = [t for _, t in data.train_pairs if "#yesno" in t.id]
    assert Counter(t.response for t in yes_no) == Counter({"Так.": 6, "Ні.": 6})
    assert all(t.prompt.endswith("Відповідай так або ні.") for t in yes_no)
    assert all(r.lang == "uk" and script_share(r.prompt, "Cyrillic") > 0.5 for r in data.stage2)
    held = data.heldout_yesno
    assert len(held) >= 50 and abs(sum(q["answer"] == "yes" for q in held) * 2 - len(held)) <= 1
    assert all(q["lang"] == "uk" and ("Чи правда" in q["question"] or "Місто" in q["question"]) for q in held)
    assert not {q["fact"] for q in held} & data.train_facts


def test_new_language_leaves_other_starter_data_alone(table):
    register(UKRAINIAN)
    assert starter_digest(starter.generate("ru", seed=0, n_train=50)) == STARTER_DIGESTS["ru"]


def test_new_language_gets_stage1_pairs(table):
    register(UKRAINIAN)
    pairs = [(Record("What is the capital of France?", "Paris.", None, "1", "en", "en:1"),
              Record("Яка столиця Франції?", "Париж.", None, "1", "uk", "uk:1")),
             (Record("How many legs has a cat?", "Four.", None, "2", "en", "en:2"),
              Record("Скільки ніг у кота?", "Чотири.", None, "2", "uk", "uk:2"))]
    for instr, text in (("en", "Answer in Ukrainian."), ("native", "Відповідай українською мовою.")):
        examples = build_stage1(pairs, "uk", seed=0, instruction=instr)
        kinds = Counter(ex.meta["kind"] for ex in examples)
        assert kinds == Counter({"target": 2, "en2target": 2}) and all(ex.meta["lang"] == "uk" for ex in examples)
        for ex in examples:
            user, answer = ex.messages[-2]["content"], ex.messages[-1]["content"]
            assert answer in ("Париж.", "Чотири.")
            assert user.endswith("\n\n" + text) if ex.meta["kind"] == "en2target" else user.endswith("?")
    (en, tgt), = sources.as_translation(pairs[:1], "uk")
    assert tgt.prompt == "Переклади українською мовою:\nWhat is the capital of France?"
    assert en.prompt == "Translate into Ukrainian: What is the capital of France?" and tgt.response == "Яка столиця Франції?"


def test_new_language_yes_no_and_translation_prompts(table):
    register(UKRAINIAN)
    assert parse_yes_no("Так, звичайно.", "uk") == "yes" and parse_yes_no("НІ.", "uk") == "no"
    assert parse_yes_no("Можливо.", "uk") is None and answer_word("no", "uk") == "Ні"
    english = get_language("en").mt_example
    assert instruction("uk", "en") == (f"{UKRAINIAN.mt_to_en} Приклад: ### {UKRAINIAN.mt_example}### {english}")
    assert instruction("en", "uk") == (f"{UKRAINIAN.mt_from_en} Приклад: ### {english}### {UKRAINIAN.mt_example}")
    assert EvalConfig().task_names("uk") == ["starter_heldout"]


def test_missing_text_is_a_one_line_error_naming_language_and_field(table, tmp_path):
    register(BARE_GERMAN)
    cases = [
        (DataError, "cldr", lambda: starter.generate("de")),
        (DataError, "translate_native", lambda: sources.translation_pair("Hi.", "Hallo.", "de", None, "a", "b")),
        (DataError, "passage_label", lambda: sources._squad(tmp_path / "x.json", "de")),
        (DataError, "msvamp", lambda: sources.read_msvamp(tmp_path, "de")),
        (DataError, "tatoeba", lambda: sources.read_tatoeba(tmp_path, "de")),
        (ValueError, "mt_to_en", lambda: instruction("de", "en")),
        (ValueError, "mt_from_en", lambda: instruction("en", "de")),
        (ValueError, "copy_instruction", lambda: copy_messages(load_task("cp_sent_ru"), {"id": 0, "text": "Hallo."}, "de")),
    ]
    write_json(tmp_path / "x.json", {"data": []})
    for error, field, call in cases:
        with pytest.raises(error, match=f"language 'de' \\(German\\) has no '{field}'") as info:
            call()
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="exactly one side must be English"):
        instruction("ru", "ar")


def test_starter_templates_must_match_english(table):
    short = dict(UKRAINIAN.starter_qa, number=UKRAINIAN.starter_qa["number"][:1])
    register(replace(UKRAINIAN, starter_qa=short))
    with pytest.raises(DataError, match="language 'uk' .*'starter_qa'.*'number': 1") as info:
        starter.generate("uk")
    assert "\n" not in str(info.value)


def test_register_checks_the_entry(table):
    with pytest.raises(ValueError, match="already registered"):
        register(get_language("ru"))
    with pytest.raises(ValueError, match="script 'Cyrilic'"):
        register(replace(UKRAINIAN, script="Cyrilic"))
    with pytest.raises(ValueError, match="'Так' must be one lower-case word"):
        register(replace(UKRAINIAN, yes=("Так",)))
    assert "uk" not in table
    register(UKRAINIAN)
    assert get_language("uk") is UKRAINIAN and "uk" not in REAL_TABLE

