"""Languages lingotune knows: every piece of per-language text lives here, in one `Language` entry.

One table, shared by the data layer (pair builder, readers, starter data, script checks) and the evaluation
(yes/no parsing, translation prompts, default task suites). A language is added by adding one entry to
`LANGUAGES` (or, at run time, by `register(Language(...))`); no other module keeps per-language text.

What an entry needs:
- always: code, flores, name, native, script, yes, no, answer_in_en, answer_in_native, answer_yes_no.
  They give DParT stage-1 pairs, yes/no prompts and parsing, script checks and FLORES/NLLB file names.
  `script` is a key of `SCRIPT_RANGES` (a language in a script not listed there adds its Unicode ranges
  too); yes/no words are single lower-case words, the first of each the canonical answer.
- for the data readers (`lingotune.data.sources`): translate_native (translation pairs: FLORES, Tatoeba,
  "translate" modes), passage_label and question_label (XQuAD), answer_label (GSM8K, MSVAMP), msvamp
  (MSVAMP file name), tatoeba (Tatoeba file code).
- for translation evaluation (`lingotune.eval.translation`): mt_example and, for a non-English language,
  mt_example_label, mt_to_en and mt_from_en.
- for copy evaluation (`lingotune.eval.copy`, Darumeru's cp_sent / cp_para): copy_instruction.
- for pairwise judging (`lingotune.eval.judge`, its LLM and local-model judges): judge_prompt, the judge's
  instructions written in the language, a `str.format` template with {question}, {answer_a} and {answer_b}
  (no other braces) that asks for the final verdict as [[A]], [[B]] or [[C]] (a tie).
- for starter data (`lingotune.data.starter`): cldr (a locale Babel has), num2words, starter_qa,
  starter_yesno and starter_statement, with the kinds English has and as many `starter_qa` templates per
  kind, in the same order (the same index means the same question in every language). Templates are
  `str.format` strings with {x} (the entity), {y} (the value), {Y} (the value capitalized), {x_topic} and
  {x_subj} (Korean: {x} with its topic / subject particle).
- for the knowledge-transfer probe (`lingotune.eval.transfer`): answer_briefly, and probe_sum (its arithmetic
  items; with num2words).
- eval_suite: the default evaluation tasks, names of task files in lingotune/eval/tasks or YAML paths
  (default: only the held-out starter yes/no questions, which need the starter fields).
Optional text left empty makes the feature that needs it fail with a one-line error naming the language
and the field (`Language.require`): a DataError in the data layer, a ValueError in the evaluation.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from lingotune.errors import UserError

# Starter-data templates per fact kind ("currency", "language", "city", "number"); see the module doc.
QATemplates = dict[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class Language:
    code: str  # ISO 639-1, the key used everywhere in recipes
    flores: str  # FLORES-200 file stem, e.g. "rus_Cyrl"
    name: str  # English name
    native: str  # name in the language itself
    script: str  # Unicode script name used by `script_share`
    yes: tuple[str, ...]  # accepted first words meaning "yes"; the first is the canonical one
    no: tuple[str, ...]  # accepted first words meaning "no"; the first is the canonical one
    # Appended to an English question in DParT stage 1 to ask for an answer in this language.
    answer_in_en: str
    # The same request written in the language itself.
    answer_in_native: str
    # "Answer yes or no." in the language itself (the paper's "Ответь да или нет.").
    answer_yes_no: str
    tatoeba: str = ""  # Tatoeba v1 three-letter code ("rus")
    # --- data readers (lingotune.data.sources)
    # "Translate into <this language>:" in the language itself: the target side of a translation pair.
    translate_native: str = ""
    passage_label: str = ""  # "Passage" in the language (XQuAD prompts: "<label>: <context>")
    question_label: str = ""  # "Question" in the language (XQuAD prompts)
    answer_label: str = ""  # "Answer" in the language (math answers: "<label>: 72")
    msvamp: str = ""  # MSVAMP file name part: test_<msvamp>.json ("Russian")
    # --- translation evaluation (lingotune.eval.translation, paper appendix A.6)
    mt_example: str = ""  # the one-shot example sentence (Einstein) in this language
    mt_example_label: str = ""  # the word for "Example:" in this language ("Пример:")
    mt_to_en: str = ""  # "You are a helpful assistant, read the text and translate it into English." in it
    mt_from_en: str = ""  # the same instruction, but "... translate it into <this language>", in it
    # --- copy evaluation (lingotune.eval.copy): "Repeat the text below exactly ...; reply with the text only." in it
    copy_instruction: str = ""
    # --- pairwise judging (lingotune.eval.judge): the judge prompt; {question}, {answer_a}, {answer_b}; asks for
    # "[[A]]", "[[B]]" or "[[C]]" (a tie) at the end, and counts an answer not in this language as worse
    judge_prompt: str = ""
    # Default evaluation tasks (task names or YAML paths) when a run names none.
    eval_suite: tuple[str, ...] = ("starter_heldout",)
    # --- starter data (lingotune.data.starter)
    cldr: str = ""  # Babel/CLDR locale for territory, currency, language and city names ("ru")
    num2words: str = ""  # num2words language code for numbers written in words ("ru")
    starter_qa: QATemplates = field(default_factory=dict, hash=False)  # kind -> (question, answer) templates
    starter_yesno: dict[str, str] = field(default_factory=dict, hash=False)  # kind -> yes/no question template
    starter_statement: dict[str, str] = field(default_factory=dict, hash=False)  # kind -> statement template
    # --- the knowledge-transfer probe (lingotune.eval.transfer)
    answer_briefly: str = ""  # "Answer in a few words." in the language itself
    probe_sum: str = ""  # "What is {a} plus {b}?" in it; {a} and {b} are numbers written in words (num2words)

    def require(self, name: str, error: type[Exception] = ValueError, purpose: str = "") -> Any:
        """Field `name`, or `error` (one line naming the language and the field) when it is empty."""
        value = getattr(self, name)
        if not value:
            needed = f", needed for {purpose}" if purpose else ""
            raise error(f"language {self.code!r} ({self.name}) has no {name!r}{needed}; "
                        f"add it to its entry in lingotune.languages")
        return value


LANGUAGES: dict[str, Language] = {
    "en": Language(
        code="en", flores="eng_Latn", name="English", native="English", script="Latin",
        yes=("yes",), no=("no",),
        answer_in_en="Answer in English.", answer_in_native="Answer in English.",
        answer_yes_no="Answer yes or no.", tatoeba="eng",
        translate_native="Translate into English:", msvamp="English",
        passage_label="Passage", question_label="Question", answer_label="Answer",
        mt_example=("Albert Einstein was one of the best theoretical physicists in 1905, he put forward the theory of "
                    "general and special relativity."),
        copy_instruction=("Repeat the text below exactly as it is, without changing, adding or leaving out anything. "
                          "Reply with the text only."),
        judge_prompt=(
            "You are an impartial judge. Compare the two assistants' answers to the user's question below and "
            "decide which one is better. Judge helpfulness, relevance, accuracy and level of detail; an answer "
            "that is not written in English is worse. Neither the order of the answers nor their length may "
            "influence you. Explain your choice briefly, then give your final verdict in exactly this format: "
            "[[A]] if answer A is better, [[B]] if answer B is better, [[C]] if they are equally good.\n\n"
            "[Question]\n{question}\n\n[Answer A]\n{answer_a}\n[End of answer A]\n\n"
            "[Answer B]\n{answer_b}\n[End of answer B]"
        ),
        eval_suite=("starter_heldout",),
        answer_briefly="Answer in a few words.", probe_sum="What is {a} plus {b}?",
        cldr="en", num2words="en",
        starter_qa={
            "currency": (("What is the currency of {x}?", "The currency of {x} is the {y}."),
                         ("Which currency is used in {x}?", "{Y}."),
                         ("Country: {x}. What is its currency?", "Its currency is the {y}.")),
            "language": (("What is the official language of {x}?", "The official language of {x} is {Y}."),
                         ("Which language is official in {x}?", "{Y}."),
                         ("Country: {x}. What is its official language?", "Its official language is {Y}.")),
            "city": (("In which country is {x}?", "{x} is in {y}."),
                     ("Which country is the city of {x} in?", "{y}."),
                     ("City: {x}. Which country is it in?", "It is in {y}.")),
            "number": (("Write the number {x} in words.", "{y}"),
                       ("How is the number {x} written in words?", "In words: {y}.")),
        },
        starter_yesno={
            "currency": "Is the {y} the currency of {x}?",
            "language": "Is {Y} the official language of {x}?",
            "city": "Is {x} in {y}?",
        },
        starter_statement={
            "currency": "The currency of {x} is the {y}.",
            "language": "The official language of {x} is {Y}.",
            "city": "{x} is a city in {y}.",
        },
    ),
    "ru": Language(
        code="ru", flores="rus_Cyrl", name="Russian", native="русский", script="Cyrillic",
        yes=("да",), no=("нет",),
        answer_in_en="Answer in Russian.", answer_in_native="Ответь на русском языке.",
        answer_yes_no="Ответь да или нет.", tatoeba="rus",
        translate_native="Переведи на русский язык:", msvamp="Russian",
        passage_label="Текст", question_label="Вопрос", answer_label="Ответ",
        mt_example=("Альберт Эйнштейн был одним из лучших физиков-теоретиков, в 1905 году он выдвинул теорию общей и "
                    "специальной теории относительности."),
        mt_example_label="Пример:",
        mt_to_en="Ты - полезный помощник, прочитай текст и переведи его на английский.",
        mt_from_en="Ты - полезный помощник, прочитай текст и переведи его на русский.",
        copy_instruction=("Повтори текст ниже в точности, ничего не меняя, не добавляя и не пропуская. "
                          "В ответе напиши только этот текст."),
        judge_prompt=(
            "Ты — беспристрастный судья. Сравни ответы двух ассистентов на вопрос пользователя ниже и реши, какой "
            "из них лучше. Оценивай полезность, уместность, точность и полноту; ответ, написанный не на русском "
            "языке, хуже. Ни порядок ответов, ни их длина не должны влиять на твоё решение. Кратко объясни выбор, "
            "затем дай окончательный вердикт строго в таком виде: [[A]], если лучше ответ A, [[B]], если лучше "
            "ответ B, [[C]], если они равноценны.\n\n"
            "[Вопрос]\n{question}\n\n[Ответ A]\n{answer_a}\n[Конец ответа A]\n\n"
            "[Ответ B]\n{answer_b}\n[Конец ответа B]"
        ),
        eval_suite=("danetqa", "terra", "russe", "flores_ru_to_en", "flores_ru_from_en",
                    "flores_ru_bpc", "starter_heldout", "transfer_facts", "transfer_xquad", "align_facts"),
        answer_briefly="Ответь в нескольких словах.", probe_sum="Сколько будет {a} плюс {b}?",
        cldr="ru", num2words="ru",
        starter_qa={
            "currency": (("Как называется валюта страны {x}?", "Валюта страны {x} — {y}."),
                         ("Какая валюта используется в стране {x}?", "{Y}."),
                         ("Страна: {x}. Какая у неё валюта?", "Её валюта — {y}.")),
            "language": (("Какой язык является официальным в стране {x}?", "Официальный язык страны {x} — {y}."),
                         ("Какой официальный язык у страны {x}?", "{Y}."),
                         ("Страна: {x}. Какой у неё официальный язык?", "Её официальный язык — {y}.")),
            "city": (("В какой стране находится город {x}?", "Город {x} находится в стране {y}."),
                     ("Назови страну, в которой находится город {x}.", "Это {y}."),
                     ("Город: {x}. В какой стране он находится?", "Страна: {y}.")),
            "number": (("Запиши число {x} словами.", "{y}"),
                       ("Как пишется число {x} прописью?", "Прописью: {y}.")),
        },
        starter_yesno={
            "currency": "Правда ли, что валюта страны {x} — {y}?",
            "language": "Правда ли, что официальный язык страны {x} — {y}?",
            "city": "Страна: {y}. Город {x} находится в этой стране?",
        },
        starter_statement={
            "currency": "Валюта страны {x} — {y}.",
            "language": "Официальный язык страны {x} — {y}.",
            "city": "Город {x} находится в стране {y}.",
        },
    ),
    "ar": Language(
        code="ar", flores="arb_Arab", name="Arabic", native="العربية", script="Arabic",
        yes=("نعم",), no=("لا",),
        answer_in_en="Answer in Arabic.", answer_in_native="أجب باللغة العربية.",
        answer_yes_no="أجب بنعم أو لا.", tatoeba="ara",
        translate_native="ترجم إلى العربية:", msvamp="Arabic",
        passage_label="النص", question_label="السؤال", answer_label="الإجابة",
        mt_example="ألبرت آينشتاين كان من أفضل علماء الفيزياء النظرية في ١٩٠٥ قام بطرح نظرية النسبية العامة والخاصة.",
        mt_example_label="مثال:",
        mt_to_en="مساعد شخصي اقرأ النص بإمعان وترجمه الى الانكليزية.",
        mt_from_en="مساعد شخصي اقرأ النص بإمعان وترجمه الى العربية.",
        copy_instruction="كرّر النص التالي كما هو تمامًا، دون تغيير أو إضافة أو حذف أي شيء. اكتب النص فقط في إجابتك.",
        judge_prompt=(
            "أنت حكم محايد. قارن بين إجابتَي مساعدَين عن سؤال المستخدم أدناه وقرّر أيّ الإجابتين أفضل. قيّم الفائدة "
            "والصلة بالسؤال والدقة ومستوى التفصيل؛ والإجابة المكتوبة بغير العربية أسوأ. لا تدع ترتيب الإجابتين ولا "
            "طولهما يؤثّر في قرارك. اشرح اختيارك باختصار، ثم اكتب حكمك النهائي بهذا الشكل تمامًا: [[A]] إذا كانت "
            "الإجابة A أفضل، و[[B]] إذا كانت الإجابة B أفضل، و[[C]] إذا كانتا متكافئتين.\n\n"
            "[السؤال]\n{question}\n\n[الإجابة A]\n{answer_a}\n[نهاية الإجابة A]\n\n"
            "[الإجابة B]\n{answer_b}\n[نهاية الإجابة B]"
        ),
        eval_suite=("idat", "mq2q", "flores_ar_to_en", "flores_ar_from_en", "flores_ar_bpc", "starter_heldout",
                    "transfer_facts", "transfer_xquad", "align_facts"),
        answer_briefly="أجب بكلمات قليلة.", probe_sum="كم يساوي {a} زائد {b}؟",
        cldr="ar", num2words="ar",
        starter_qa={
            "currency": (("ما هي عملة {x}؟", "عملة {x} هي {y}."),
                         ("ما العملة المستخدمة في {x}؟", "{y}."),
                         ("الدولة: {x}. ما عملتها؟", "عملتها هي {y}.")),
            "language": (("ما هي اللغة الرسمية في {x}؟", "اللغة الرسمية في {x} هي {y}."),
                         ("ما اللغة الرسمية المعتمدة في {x}؟", "{y}."),
                         ("الدولة: {x}. ما لغتها الرسمية؟", "لغتها الرسمية هي {y}.")),
            "city": (("في أي دولة تقع مدينة {x}؟", "تقع مدينة {x} في {y}."),
                     ("اذكر الدولة التي تقع فيها مدينة {x}.", "{y}."),
                     ("المدينة: {x}. في أي دولة تقع؟", "تقع في {y}.")),
            "number": (("اكتب العدد {x} بالحروف.", "{y}"),
                       ("كيف يُكتب العدد {x} بالحروف؟", "بالحروف: {y}.")),
        },
        starter_yesno={
            "currency": "هل عملة {x} هي {y}؟",
            "language": "هل اللغة الرسمية في {x} هي {y}؟",
            "city": "هل تقع مدينة {x} في {y}؟",
        },
        starter_statement={
            "currency": "عملة {x} هي {y}.",
            "language": "اللغة الرسمية في {x} هي {y}.",
            "city": "{x} مدينة في {y}.",
        },
    ),
    "ko": Language(
        code="ko", flores="kor_Hang", name="Korean", native="한국어", script="Hangul",
        yes=("예", "네"), no=("아니오", "아니요", "아니"),
        answer_in_en="Answer in Korean.", answer_in_native="한국어로 대답하세요.",
        answer_yes_no="예 또는 아니오로 대답하세요.", tatoeba="kor",
        translate_native="한국어로 번역하세요:", msvamp="Korean",
        passage_label="지문", question_label="질문", answer_label="답",
        mt_example="알베르트 아인슈타인은 1905년 최고의 이론 물리학자 중 한 명이었으며, 일반 상대성 이론과 특수 상대성 이론을 제시했습니다.",
        mt_example_label="예시:",
        mt_to_en="당신은 유용한 도우미입니다. 글을 잘 읽고 영어로 번역하세요.",
        mt_from_en="당신은 유용한 도우미입니다. 글을 잘 읽고 한국어로 번역하세요.",
        copy_instruction="아래 글을 아무것도 바꾸거나 더하거나 빼지 말고 그대로 반복하세요. 답에는 그 글만 쓰세요.",
        judge_prompt=(
            "당신은 공정한 심판입니다. 아래 사용자 질문에 대한 두 어시스턴트의 답변을 비교하여 어느 답변이 더 나은지 "
            "판단하세요. 유용성, 관련성, 정확성, 충실성을 평가하고, 한국어로 작성되지 않은 답변은 더 나쁜 것으로 "
            "보세요. 답변의 순서와 길이가 판단에 영향을 주어서는 안 됩니다. 짧게 이유를 설명한 뒤, 최종 판정을 "
            "반드시 다음 형식으로 쓰세요: 답변 A가 더 나으면 [[A]], 답변 B가 더 나으면 [[B]], 두 답변이 비슷하면 "
            "[[C]].\n\n"
            "[질문]\n{question}\n\n[답변 A]\n{answer_a}\n[답변 A 끝]\n\n"
            "[답변 B]\n{answer_b}\n[답변 B 끝]"
        ),
        eval_suite=("kobest_boolq", "kobest_copa", "kobest_hellaswag", "kobest_sentineg", "kobest_wic",
                    "flores_ko_to_en", "flores_ko_from_en", "flores_ko_bpc", "starter_heldout", "transfer_facts",
                    "align_facts"),
        answer_briefly="몇 단어로 짧게 대답하세요.", probe_sum="{a} 더하기 {b}의 값은 얼마입니까?",
        cldr="ko", num2words="ko",
        starter_qa={
            "currency": (("{x}의 통화는 무엇인가요?", "{x}의 통화는 {y}입니다."),
                         ("{x}에서 사용하는 통화는 무엇입니까?", "{y}입니다."),
                         ("국가: {x}. 이 나라의 통화는 무엇인가요?", "이 나라의 통화는 {y}입니다.")),
            "language": (("{x}의 공용어는 무엇인가요?", "{x}의 공용어는 {y}입니다."),
                         ("{x}에서 공식적으로 쓰는 언어는 무엇입니까?", "{y}입니다."),
                         ("국가: {x}. 이 나라의 공용어는 무엇인가요?", "이 나라의 공용어는 {y}입니다.")),
            "city": (("{x_topic} 어느 나라에 있나요?", "{x_topic} {y}에 있습니다."),
                     ("도시 {x_subj} 있는 나라는 어디입니까?", "{y}입니다."),
                     ("도시: {x}. 어느 나라에 있습니까?", "{y}에 있습니다.")),
            "number": (("다음 숫자를 한글로 쓰세요: {x}", "{y}"),
                       ("숫자 {x}: 한글로 어떻게 읽나요?", "한글로: {y}.")),
        },
        starter_yesno={
            "currency": "{x}의 통화는 {y}입니까?",
            "language": "{x}의 공용어는 {y}입니까?",
            "city": "{x_topic} {y}에 있습니까?",
        },
        starter_statement={
            "currency": "{x}의 통화는 {y}입니다.",
            "language": "{x}의 공용어는 {y}입니다.",
            "city": "{x_topic} {y}에 있는 도시입니다.",
        },
    ),
}


class UnknownLanguageError(UserError, ValueError):
    """A language code lingotune has no `Language` entry for."""


def get_language(code: str) -> Language:
    """The `Language` for an ISO code; a clear error naming the known codes otherwise."""
    try:
        return LANGUAGES[code]
    except KeyError:
        known = ", ".join(sorted(LANGUAGES))
        raise UnknownLanguageError(f"unknown language {code!r}; known: {known}") from None


def register(language: Language, replace: bool = False) -> Language:
    """Add `language` to `LANGUAGES` at run time (a plugin, a test), after checking what parsing relies on."""
    if language.code in LANGUAGES and not replace:
        raise ValueError(f"language {language.code!r} is already registered (pass replace=True)")
    if language.script not in SCRIPT_RANGES:
        raise ValueError(f"language {language.code!r}: script {language.script!r} is not one of {', '.join(SCRIPT_RANGES)}")
    for word in language.yes + language.no:
        if word != first_word(word):
            raise ValueError(f"language {language.code!r}: yes/no word {word!r} must be one lower-case word")
    if not (language.yes and language.no):
        raise ValueError(f"language {language.code!r}: 'yes' and 'no' need at least one word each")
    LANGUAGES[language.code] = language
    return language


# Unicode ranges per script, for "text in the wrong script" checks.
SCRIPT_RANGES: dict[str, tuple[tuple[int, int], ...]] = {
    "Latin": ((0x0041, 0x005A), (0x0061, 0x007A), (0x00C0, 0x024F), (0x1E00, 0x1EFF)),
    "Cyrillic": ((0x0400, 0x04FF), (0x0500, 0x052F), (0x1C80, 0x1C8F), (0x2DE0, 0x2DFF), (0xA640, 0xA69F)),
    "Arabic": ((0x0600, 0x06FF), (0x0750, 0x077F), (0x08A0, 0x08FF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF)),
    "Hangul": ((0x1100, 0x11FF), (0x3130, 0x318F), (0xA960, 0xA97F), (0xAC00, 0xD7AF), (0xD7B0, 0xD7FF)),
}


def letter_script(ch: str) -> str | None:
    """The script of one letter (None for digits, punctuation, spaces, symbols)."""
    if not unicodedata.category(ch).startswith("L"):
        return None
    cp = ord(ch)
    for script, ranges in SCRIPT_RANGES.items():
        if any(lo <= cp <= hi for lo, hi in ranges):
            return script
    return "Other"


def script_share(text: str, script: str) -> float:
    """Share of the letters in `text` that belong to `script` (1.0 for text with no letters)."""
    letters = [s for s in map(letter_script, text) if s is not None]
    if not letters:
        return 1.0
    return sum(s == script for s in letters) / len(letters)


_WORD = re.compile(r"[\w']+", re.UNICODE)


def first_word(text: str) -> str:
    """The first word of a generated answer, lower-cased, without punctuation or markup."""
    m = _WORD.search(text.strip().lower())
    return m.group(0) if m else ""


def parse_yes_no(text: str, lang: str) -> str | None:
    """'yes', 'no', or None, read from the first word of `text` in language `lang`.

    The paper counts an answer only if it *starts* with yes or no; so do we.
    """
    language = get_language(lang)
    word = first_word(text)
    if word in language.yes:
        return "yes"
    if word in language.no:
        return "no"
    return None
