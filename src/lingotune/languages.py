"""Languages lingotune knows: names, scripts, yes/no words and instruction wording.

One table, shared by the data layer (pair builder, starter data, script checks) and the
evaluation (yes/no parsing). Add a language by adding one `Language` entry.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field


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
    extra: dict = field(default_factory=dict, compare=False, hash=False)


LANGUAGES: dict[str, Language] = {
    "en": Language(
        code="en", flores="eng_Latn", name="English", native="English", script="Latin",
        yes=("yes",), no=("no",),
        answer_in_en="Answer in English.", answer_in_native="Answer in English.",
        answer_yes_no="Answer yes or no.", tatoeba="eng",
    ),
    "ru": Language(
        code="ru", flores="rus_Cyrl", name="Russian", native="русский", script="Cyrillic",
        yes=("да",), no=("нет",),
        answer_in_en="Answer in Russian.", answer_in_native="Ответь на русском языке.",
        answer_yes_no="Ответь да или нет.", tatoeba="rus",
    ),
    "ar": Language(
        code="ar", flores="arb_Arab", name="Arabic", native="العربية", script="Arabic",
        yes=("نعم",), no=("لا",),
        answer_in_en="Answer in Arabic.", answer_in_native="أجب باللغة العربية.",
        answer_yes_no="أجب بنعم أو لا.", tatoeba="ara",
    ),
    "ko": Language(
        code="ko", flores="kor_Hang", name="Korean", native="한국어", script="Hangul",
        yes=("예", "네"), no=("아니오", "아니요", "아니"),
        answer_in_en="Answer in Korean.", answer_in_native="한국어로 대답하세요.",
        answer_yes_no="예 또는 아니오로 대답하세요.", tatoeba="kor",
    ),
}


class UnknownLanguageError(ValueError):
    pass


def get_language(code: str) -> Language:
    """The `Language` for an ISO code; a clear error naming the known codes otherwise."""
    try:
        return LANGUAGES[code]
    except KeyError:
        known = ", ".join(sorted(LANGUAGES))
        raise UnknownLanguageError(f"unknown language {code!r}; known: {known}") from None


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
