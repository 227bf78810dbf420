"""Starter data the project writes itself, without downloads: bilingual QA built from CLDR (via Babel) and
num2words, in English and the target language (ru, ar, ko).

Facts (kind:key):
- currency:<territory>  the territory's current legal-tender currency (CLDR territory_currencies);
- language:<territory>  its main official language (CLDR territory_languages, highest population share);
- city:<tz zone>        a city (time-zone exemplar city) and the territory it is in (CLDR zone_territories);
- number:<n>            a number and how it is written in words (num2words).
Babel has no territory-containment table, so cities stand in for "what lies where".

Facts are split by a hash of their id: `heldout_fraction` of them are held out and used only for yes/no
questions; training pairs, stage-2 records and parallel sentences use the rest, so a held-out question's
fact is never a training fact. "no" questions pair the entity with a wrong value of the same kind (never one
of its true values). Yes and no are balanced (they differ by at most one). Numbers are not used for yes/no.

Templates are parallel across languages (the same index means the same question), several per kind. Russian
templates never inflect an inserted name: they use apposition in the nominative ("валюта страны Франция"),
a label ("Страна: Франция.") or "Это Франция."; Korean topic particles follow the name's last syllable.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from lingotune.data.records import Record
from lingotune.languages import get_language

LANGS = ("en", "ru", "ar", "ko")
DEFAULT_N_TRAIN = 400


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _topic(word: str) -> str:
    """Korean topic particle: 은 after a final consonant, 는 after a vowel."""
    ch = word[-1:]
    if "가" <= ch <= "힣":
        return word + ("은" if (ord(ch) - 0xAC00) % 28 else "는")
    return word + "은(는)"


# Question/answer templates: {x} entity, {y} value ({Y} capitalized; {x_topic}/{x_subj}: Korean x + 은/는, 이/가). Same index = same meaning in every language.
QA = {
    "currency": {
        "en": [("What is the currency of {x}?", "The currency of {x} is the {y}."),
               ("Which currency is used in {x}?", "{Y}."),
               ("Country: {x}. What is its currency?", "Its currency is the {y}.")],
        "ru": [("Как называется валюта страны {x}?", "Валюта страны {x} — {y}."),
               ("Какая валюта используется в стране {x}?", "{Y}."),
               ("Страна: {x}. Какая у неё валюта?", "Её валюта — {y}.")],
        "ar": [("ما هي عملة {x}؟", "عملة {x} هي {y}."),
               ("ما العملة المستخدمة في {x}؟", "{y}."),
               ("الدولة: {x}. ما عملتها؟", "عملتها هي {y}.")],
        "ko": [("{x}의 통화는 무엇인가요?", "{x}의 통화는 {y}입니다."),
               ("{x}에서 사용하는 통화는 무엇입니까?", "{y}입니다."),
               ("국가: {x}. 이 나라의 통화는 무엇인가요?", "이 나라의 통화는 {y}입니다.")],
    },
    "language": {
        "en": [("What is the official language of {x}?", "The official language of {x} is {Y}."),
               ("Which language is official in {x}?", "{Y}."),
               ("Country: {x}. What is its official language?", "Its official language is {Y}.")],
        "ru": [("Какой язык является официальным в стране {x}?", "Официальный язык страны {x} — {y}."),
               ("Какой официальный язык у страны {x}?", "{Y}."),
               ("Страна: {x}. Какой у неё официальный язык?", "Её официальный язык — {y}.")],
        "ar": [("ما هي اللغة الرسمية في {x}؟", "اللغة الرسمية في {x} هي {y}."),
               ("ما اللغة الرسمية المعتمدة في {x}؟", "{y}."),
               ("الدولة: {x}. ما لغتها الرسمية؟", "لغتها الرسمية هي {y}.")],
        "ko": [("{x}의 공용어는 무엇인가요?", "{x}의 공용어는 {y}입니다."),
               ("{x}에서 공식적으로 쓰는 언어는 무엇입니까?", "{y}입니다."),
               ("국가: {x}. 이 나라의 공용어는 무엇인가요?", "이 나라의 공용어는 {y}입니다.")],
    },
    "city": {
        "en": [("In which country is {x}?", "{x} is in {y}."),
               ("Which country is the city of {x} in?", "{y}."),
               ("City: {x}. Which country is it in?", "It is in {y}.")],
        "ru": [("В какой стране находится город {x}?", "Город {x} находится в стране {y}."),
               ("Назови страну, в которой находится город {x}.", "Это {y}."),
               ("Город: {x}. В какой стране он находится?", "Страна: {y}.")],
        "ar": [("في أي دولة تقع مدينة {x}؟", "تقع مدينة {x} في {y}."),
               ("اذكر الدولة التي تقع فيها مدينة {x}.", "{y}."),
               ("المدينة: {x}. في أي دولة تقع؟", "تقع في {y}.")],
        "ko": [("{x_topic} 어느 나라에 있나요?", "{x_topic} {y}에 있습니다."),
               ("도시 {x_subj} 있는 나라는 어디입니까?", "{y}입니다."),
               ("도시: {x}. 어느 나라에 있습니까?", "{y}에 있습니다.")],
    },
    "number": {
        "en": [("Write the number {x} in words.", "{y}"),
               ("How is the number {x} written in words?", "In words: {y}.")],
        "ru": [("Запиши число {x} словами.", "{y}"),
               ("Как пишется число {x} прописью?", "Прописью: {y}.")],
        "ar": [("اكتب العدد {x} بالحروف.", "{y}"),
               ("كيف يُكتب العدد {x} بالحروف؟", "بالحروف: {y}.")],
        "ko": [("다음 숫자를 한글로 쓰세요: {x}", "{y}"),
               ("숫자 {x}: 한글로 어떻게 읽나요?", "한글로: {y}.")],
    },
}

YESNO = {
    "currency": {"en": "Is the {y} the currency of {x}?", "ru": "Правда ли, что валюта страны {x} — {y}?",
                 "ar": "هل عملة {x} هي {y}؟", "ko": "{x}의 통화는 {y}입니까?"},
    "language": {"en": "Is {Y} the official language of {x}?", "ru": "Правда ли, что официальный язык страны {x} — {y}?",
                 "ar": "هل اللغة الرسمية في {x} هي {y}؟", "ko": "{x}의 공용어는 {y}입니까?"},
    "city": {"en": "Is {x} in {y}?", "ru": "Страна: {y}. Город {x} находится в этой стране?",
             "ar": "هل تقع مدينة {x} في {y}؟", "ko": "{x_topic} {y}에 있습니까?"},
}
STATEMENT = {
    "currency": {"en": "The currency of {x} is the {y}.", "ru": "Валюта страны {x} — {y}.",
                 "ar": "عملة {x} هي {y}.", "ko": "{x}의 통화는 {y}입니다."},
    "language": {"en": "The official language of {x} is {Y}.", "ru": "Официальный язык страны {x} — {y}.",
                 "ar": "اللغة الرسمية في {x} هي {y}.", "ko": "{x}의 공용어는 {y}입니다."},
    "city": {"en": "{x} is a city in {y}.", "ru": "Город {x} находится в стране {y}.",
             "ar": "{x} مدينة في {y}.", "ko": "{x_topic} {y}에 있는 도시입니다."},
}


def _subject(word: str) -> str:
    ch = word[-1:]
    if "가" <= ch <= "힣":
        return word + ("이" if (ord(ch) - 0xAC00) % 28 else "가")
    return word + "이(가)"


def _fill(template: str, x: str, y: str) -> str:
    return template.format(x=x, y=y, Y=_cap(y), x_topic=_topic(x), x_subj=_subject(x))


@dataclass(frozen=True)
class Fact:
    kind: str  # currency | language | city | number
    key: str  # territory code, zone id or number
    entity: dict  # lang -> name of the entity
    value: dict  # lang -> name of the value
    value_id: str  # code of the value (EUR, fr, FR, the number), to tell right from wrong values
    true_values: frozenset = frozenset()  # every value_id that makes a yes (official languages, ...)

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.key}"


@dataclass
class StarterData:
    lang: str
    seed: int
    train_pairs: list[tuple[Record, Record]] = field(default_factory=list)
    stage2: list[Record] = field(default_factory=list)
    heldout_yesno: list[dict] = field(default_factory=list)
    parallel: list[tuple[str, str]] = field(default_factory=list)
    train_facts: set[str] = field(default_factory=set)


_SKIP_TERRITORIES = {"EU", "EZ", "UN", "ZZ", "QO", "XA", "XB", "XK", "AQ"}


@lru_cache(maxsize=1)
def all_facts() -> tuple[Fact, ...]:
    """Every CLDR fact with names in en, ru, ar and ko (cached; ~0.3 s the first time)."""
    from babel import Locale
    from babel.core import get_global

    loc = {code: Locale(code) for code in LANGS}
    terr = {code: loc[code].territories for code in LANGS}

    def tname(t):
        names = {c: terr[c].get(t) for c in LANGS}
        return names if all(names.values()) and t.isalpha() and len(t) == 2 and t not in _SKIP_TERRITORIES else None

    facts: list[Fact] = []
    for t, hist in sorted(get_global("territory_currencies").items()):
        names = tname(t)
        current = [c for c, _start, end, tender in hist if end is None and tender]
        if not names or not current:
            continue
        cur = current[-1]
        cnames = {c: loc[c].currencies.get(cur) for c in LANGS}
        if all(cnames.values()) and cnames["en"] != cur:
            facts.append(Fact("currency", t, names, cnames, cur, frozenset(current)))
    for t, langs in sorted(get_global("territory_languages").items()):
        names = tname(t)
        official = [(v.get("population_percent", 0), code) for code, v in langs.items()
                    if v.get("official_status") == "official"]
        if not names or not official:
            continue
        code = max(official)[1]
        lnames = {c: loc[c].languages.get(code) for c in LANGS}
        if all(lnames.values()) and "_" not in code:
            facts.append(Fact("language", t, names, lnames, code, frozenset(c for _, c in official)))
    for zone, t in sorted(get_global("zone_territories").items()):
        names = tname(t)
        if not names or zone.startswith("Etc/"):
            continue
        cities = {c: loc[c].time_zones.get(zone, {}).get("city") for c in ("ru", "ar", "ko")}
        cities["en"] = loc["en"].time_zones.get(zone, {}).get("city") or zone.split("/")[-1].replace("_", " ")
        if not all(cities.values()) or any(cities[c] == names[c] for c in LANGS):
            continue
        facts.append(Fact("city", zone, cities, names, t, frozenset([t])))
    return tuple(facts)


def number_facts(seed: int, n: int = 300) -> list[Fact]:
    from num2words import num2words

    rng = random.Random(f"numbers-{seed}")
    nums = sorted(set(rng.choice([rng.randint(0, 100), rng.randint(100, 10_000), rng.randint(10_000, 1_000_000)])
                      for _ in range(n)))
    out = []
    for k in nums:
        words = {c: num2words(k, lang=c) for c in LANGS}
        out.append(Fact("number", str(k), {c: str(k) for c in LANGS}, words, str(k), frozenset([str(k)])))
    return out


def is_heldout(fact_id: str, fraction: float) -> bool:
    """Deterministic split by a hash of the fact id (independent of seed and language)."""
    h = int.from_bytes(hashlib.sha256(fact_id.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def _record(fact: Fact, lang: str, idx: int, seed: int, kind: str = "pair") -> Record:
    q, a = QA[fact.kind][lang][idx]
    x, y = fact.entity[lang], fact.value[lang]
    return Record(_fill(q, x, y), _fill(a, x, y), None, f"{fact.id}#{idx}", lang, f"starter:{kind}:{fact.id}#{idx}")


def generate(lang: str, seed: int = 0, n_train: int | None = None, heldout_fraction: float = 0.2) -> StarterData:
    """Starter data for `lang` (see module doc). Deterministic for (lang, seed, n_train, heldout_fraction)."""
    get_language(lang)
    if lang not in LANGS:
        raise ValueError(f"starter data exists for {', '.join(LANGS)}; got {lang!r}")
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    n_train = DEFAULT_N_TRAIN if n_train is None else n_train
    rng = random.Random(seed)
    facts = list(all_facts()) + number_facts(seed)
    train = [f for f in facts if not is_heldout(f.id, heldout_fraction)]
    held = [f for f in facts if is_heldout(f.id, heldout_fraction) and f.kind != "number"]
    rng.shuffle(train)
    data = StarterData(lang, seed)

    n_yesno = n_train // 5  # a fifth of the pairs are yes/no questions about other training facts
    chosen = train[: n_train - n_yesno]
    yesno_facts = [f for f in train[n_train - n_yesno:] if f.kind != "number"][:n_yesno]
    for f in chosen:
        idx = rng.randrange(len(QA[f.kind]["en"]))
        data.train_pairs.append((_record(f, "en", idx, seed), _record(f, lang, idx, seed)))
        data.train_facts.add(f.id)
    # stage 2: the same training facts asked with another template, target language only
    for f in chosen:
        n = len(QA[f.kind][lang])
        data.stage2.append(_record(f, lang, rng.randrange(n), seed, kind="stage2"))
    # parallel sentences for translation checks, from training facts only
    for f in chosen:
        if f.kind in STATEMENT:
            st = STATEMENT[f.kind]
            data.parallel.append((_fill(st["en"], f.entity["en"], f.value["en"]),
                                  _fill(st[lang], f.entity[lang], f.value[lang])))
    for en, tgt in _yesno_training(yesno_facts, facts, lang, seed):
        data.train_pairs.append((en, tgt))
        data.stage2.append(tgt)
    data.train_facts.update(f.id for f in yesno_facts)
    data.heldout_yesno = _yesno(held, facts, lang, rng)
    return data


def _yesno_items(held: list[Fact], facts: list[Fact], rng: random.Random) -> list[tuple[Fact, dict, str]]:
    """(fact, value names, "yes"|"no") for each fact, alternating yes and no; a "no" pairs the
    entity with a value of the same kind that is not true of it."""
    held = sorted(held, key=lambda f: f.id)
    rng.shuffle(held)
    values: dict[str, dict[str, dict]] = {}  # kind -> value_id -> names
    for f in facts:
        values.setdefault(f.kind, {})[f.value_id] = f.value
    out = []
    for i, f in enumerate(held):
        if i % 2 == 0:
            out.append((f, f.value, "yes"))
        else:
            wrong = sorted(v for v in values[f.kind] if v not in f.true_values)
            out.append((f, values[f.kind][rng.choice(wrong)], "no"))
    return out


def _yesno(held: list[Fact], facts: list[Fact], lang: str, rng: random.Random) -> list[dict]:
    return [
        {"id": f"starter-yesno-{lang}-{i}", "question": _fill(YESNO[f.kind][lang], f.entity[lang], y[lang]),
         "answer": answer, "lang": lang, "fact": f.id}
        for i, (f, y, answer) in enumerate(_yesno_items(held, facts, rng))
    ]


def _yesno_training(subset: list[Fact], facts: list[Fact], lang: str, seed: int) -> list[tuple[Record, Record]]:
    """Yes/no questions about *training* facts, balanced, so that the model learns the answer
    format; the held-out yes/no questions are about other facts (transfer, not recall).
    English side: the English question + "Answer yes or no."; both sides answer in `lang`."""
    rng = random.Random(f"starter-yesno-train-{seed}")
    target = get_language(lang)
    pairs = []
    for f, y, answer in _yesno_items(subset, facts, rng):
        word = (target.yes if answer == "yes" else target.no)[0]
        reply = word[:1].upper() + word[1:] + "."
        rid = f"{f.id}#yesno"
        en_q = _fill(YESNO[f.kind]["en"], f.entity["en"], y["en"]) + " " + get_language("en").answer_yes_no
        tgt_q = _fill(YESNO[f.kind][lang], f.entity[lang], y[lang]) + " " + target.answer_yes_no
        pairs.append((Record(en_q, reply, None, rid, "en", f"starter:yesno:{rid}"),
                      Record(tgt_q, reply, None, rid, lang, f"starter:yesno:{rid}")))
    return pairs


def write(data: StarterData, out_dir: str | Path) -> dict[str, Path]:
    """Write train_pairs.jsonl ({"en": record, "target": record}), stage2.jsonl, heldout_yesno.jsonl and
    parallel.jsonl ({"en", "<lang>"}) into out_dir; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "train_pairs": [{"en": e.to_dict(), "target": t.to_dict()} for e, t in data.train_pairs],
        "stage2": [r.to_dict() for r in data.stage2],
        "heldout_yesno": data.heldout_yesno,
        "parallel": [{"en": e, data.lang: t} for e, t in data.parallel],
    }
    paths = {}
    for name, rows in files.items():
        p = out / f"{name}.jsonl"
        with p.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        paths[name] = p
    return paths
