"""Starter data the project writes itself, without downloads: bilingual QA built from CLDR (via Babel) and
num2words, in English and the target language. Every language whose `lingotune.languages` entry has `cldr`,
`num2words` and the starter templates (`starter_qa`, `starter_yesno`, `starter_statement`) gets it.

Facts (kind:key):
- currency:<territory>  the territory's current legal-tender currency (CLDR territory_currencies);
- language:<territory>  its main official language (CLDR territory_languages, highest population share);
- city:<tz zone>        a city (time-zone exemplar city) and the territory it is in (CLDR zone_territories);
- number:<n>            a number and how it is written in words (num2words).
Babel has no territory-containment table, so cities stand in for "what lies where". A fact is kept when CLDR
names it in every language of `FACT_LANGS` (en, ru, ar, ko) and in the target language: that set is fixed, so
adding a language never changes another language's starter data.

Facts are split by a hash of their id: `heldout_fraction` of them are held out and used only for yes/no
questions; training pairs, stage-2 records and parallel sentences use the rest, so a held-out question's
fact is never a training fact. "no" questions pair the entity with a wrong value of the same kind (never one
of its true values). Yes and no are balanced (they differ by at most one). Numbers are not used for yes/no.

Templates (in each language's entry) are parallel across languages (the same index means the same question),
several per kind. Russian templates never inflect an inserted name: they use apposition in the nominative
("валюта страны Франция"), a label ("Страна: Франция.") or "Это Франция."; Korean topic particles ({x_topic},
{x_subj}) follow the name's last syllable.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from lingotune.data.records import DataError, Record
from lingotune.files import atomic_write_text
from lingotune.languages import Language, get_language

# Every fact needs names in these languages (and in the target language); see the module doc.
FACT_LANGS = ("en", "ru", "ar", "ko")
TEMPLATE_FIELDS = ("starter_qa", "starter_yesno", "starter_statement")
DEFAULT_N_TRAIN = 400


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _topic(word: str) -> str:
    """Korean topic particle: 은 after a final consonant, 는 after a vowel."""
    ch = word[-1:]
    if "가" <= ch <= "힣":
        return word + ("은" if (ord(ch) - 0xAC00) % 28 else "는")
    return word + "은(는)"


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


def all_facts(lang: str = "en") -> tuple[Fact, ...]:
    """Every CLDR fact with names in `FACT_LANGS` and `lang` (cached per locale set; ~0.3 s the first time)."""
    codes = FACT_LANGS + (() if lang in FACT_LANGS else (lang,))
    return _cldr_facts(tuple((c, get_language(c).require("cldr", DataError, "starter data")) for c in codes))


@lru_cache(maxsize=8)
def _cldr_facts(locales: tuple[tuple[str, str], ...]) -> tuple[Fact, ...]:
    """Facts named in every (language code, CLDR locale) of `locales`."""
    from babel import Locale

    loc = {code: Locale.parse(cldr) for code, cldr in locales}
    return tuple(_currency_facts(loc) + _language_facts(loc) + _city_facts(loc))


def _territory_names(loc: dict, t: str) -> dict | None:
    names = {c: locale.territories.get(t) for c, locale in loc.items()}
    return names if all(names.values()) and t.isalpha() and len(t) == 2 and t not in _SKIP_TERRITORIES else None


def _currency_facts(loc: dict) -> list[Fact]:
    from babel.core import get_global

    facts = []
    for t, hist in sorted(get_global("territory_currencies").items()):
        names = _territory_names(loc, t)
        current = [c for c, _start, end, tender in hist if end is None and tender]
        if not names or not current:
            continue
        cur = current[-1]
        cnames = {c: locale.currencies.get(cur) for c, locale in loc.items()}
        if all(cnames.values()) and cnames["en"] != cur:
            facts.append(Fact("currency", t, names, cnames, cur, frozenset(current)))
    return facts


def _language_facts(loc: dict) -> list[Fact]:
    from babel.core import get_global

    facts = []
    for t, langs in sorted(get_global("territory_languages").items()):
        names = _territory_names(loc, t)
        official = [(v.get("population_percent", 0), code) for code, v in langs.items()
                    if v.get("official_status") == "official"]
        if not names or not official:
            continue
        code = max(official)[1]
        lnames = {c: locale.languages.get(code) for c, locale in loc.items()}
        if all(lnames.values()) and "_" not in code:
            facts.append(Fact("language", t, names, lnames, code, frozenset(c for _, c in official)))
    return facts


def _city_facts(loc: dict) -> list[Fact]:
    """Time-zone exemplar cities; English falls back to the zone id's last part ("New_York" -> "New York")."""
    from babel.core import get_global

    facts = []
    for zone, t in sorted(get_global("zone_territories").items()):
        names = _territory_names(loc, t)
        if not names or zone.startswith("Etc/"):
            continue
        cities = {c: locale.time_zones.get(zone, {}).get("city") for c, locale in loc.items()}
        cities["en"] = cities["en"] or zone.split("/")[-1].replace("_", " ")
        if not all(cities.values()) or any(cities[c] == names[c] for c in loc):
            continue
        facts.append(Fact("city", zone, cities, names, t, frozenset([t])))
    return facts


def number_facts(seed: int, lang: str = "en", n: int = 300) -> list[Fact]:
    """About `n` numbers with their words in English and `lang` (num2words, Language.num2words)."""
    from num2words import num2words

    rng = random.Random(f"numbers-{seed}")
    nums = sorted(set(rng.choice([rng.randint(0, 100), rng.randint(100, 10_000), rng.randint(10_000, 1_000_000)])
                      for _ in range(n)))
    codes = {c: get_language(c).require("num2words", DataError, "starter data") for c in ("en", lang)}
    out = []
    for k in nums:
        words = {c: num2words(k, lang=code) for c, code in codes.items()}
        out.append(Fact("number", str(k), {c: str(k) for c in codes}, words, str(k), frozenset([str(k)])))
    return out


def is_heldout(fact_id: str, fraction: float) -> bool:
    """Deterministic split by a hash of the fact id (independent of seed and language)."""
    h = int.from_bytes(hashlib.sha256(fact_id.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def _shape(templates: dict) -> dict[str, int]:
    """kind -> number of templates (1 for a single template string)."""
    return {kind: 1 if isinstance(t, str) else len(t) for kind, t in templates.items()}


def starter_language(lang: str) -> Language:
    """The entry of `lang`, checked for what starter data needs; DataError naming the language and field."""
    language, en = get_language(lang), get_language("en")
    for name in ("cldr", "num2words") + TEMPLATE_FIELDS:
        language.require(name, DataError, "starter data")
    for name in TEMPLATE_FIELDS:
        want, got = _shape(getattr(en, name)), _shape(getattr(language, name))
        if got != want:
            raise DataError(f"language {lang!r} ({language.name}): field {name!r} has templates {got}, but starter "
                            f"data needs as many per kind as English has: {want}")
    return language


def _record(fact: Fact, lang: str, idx: int, seed: int, kind: str = "pair") -> Record:
    q, a = get_language(lang).starter_qa[fact.kind][idx]
    x, y = fact.entity[lang], fact.value[lang]
    return Record(_fill(q, x, y), _fill(a, x, y), None, f"{fact.id}#{idx}", lang, f"starter:{kind}:{fact.id}#{idx}")


def generate(lang: str, seed: int = 0, n_train: int | None = None, heldout_fraction: float = 0.2) -> StarterData:
    """Starter data for `lang` (see module doc). Deterministic for (lang, seed, n_train, heldout_fraction)."""
    starter_language(lang)
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    n_train = DEFAULT_N_TRAIN if n_train is None else n_train
    rng = random.Random(seed)
    facts = list(all_facts(lang)) + number_facts(seed, lang)
    train = [f for f in facts if not is_heldout(f.id, heldout_fraction)]
    held = [f for f in facts if is_heldout(f.id, heldout_fraction) and f.kind != "number"]
    rng.shuffle(train)
    data = StarterData(lang, seed)

    n_yesno = n_train // 5  # a fifth of the pairs are yes/no questions about other training facts
    chosen = train[: n_train - n_yesno]
    yesno_facts = [f for f in train[n_train - n_yesno:] if f.kind != "number"][:n_yesno]
    _add_training_facts(data, chosen, rng)
    for en, tgt in _yesno_training(yesno_facts, facts, lang, seed):
        data.train_pairs.append((en, tgt))
        data.stage2.append(tgt)
    data.train_facts.update(f.id for f in yesno_facts)
    data.heldout_yesno = _yesno(held, facts, lang, rng)
    return data


def _add_training_facts(data: StarterData, chosen: list[Fact], rng: random.Random) -> None:
    """Training pairs, stage-2 records (the same facts asked with another template, target language only) and
    parallel sentences for translation checks, all from the `chosen` training facts."""
    lang, seed = data.lang, data.seed
    en_qa, qa = get_language("en").starter_qa, get_language(lang).starter_qa
    for f in chosen:
        idx = rng.randrange(len(en_qa[f.kind]))
        data.train_pairs.append((_record(f, "en", idx, seed), _record(f, lang, idx, seed)))
        data.train_facts.add(f.id)
    for f in chosen:
        data.stage2.append(_record(f, lang, rng.randrange(len(qa[f.kind])), seed, kind="stage2"))
    en_st, st = get_language("en").starter_statement, get_language(lang).starter_statement
    for f in chosen:
        if f.kind in en_st:
            data.parallel.append((_fill(en_st[f.kind], f.entity["en"], f.value["en"]),
                                  _fill(st[f.kind], f.entity[lang], f.value[lang])))


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
    yesno = get_language(lang).starter_yesno
    return [
        {"id": f"starter-yesno-{lang}-{i}", "question": _fill(yesno[f.kind], f.entity[lang], y[lang]),
         "answer": answer, "lang": lang, "fact": f.id}
        for i, (f, y, answer) in enumerate(_yesno_items(held, facts, rng))
    ]


def _yesno_training(subset: list[Fact], facts: list[Fact], lang: str, seed: int) -> list[tuple[Record, Record]]:
    """Yes/no questions about *training* facts, balanced, so that the model learns the answer
    format; the held-out yes/no questions are about other facts (transfer, not recall).
    English side: the English question + "Answer yes or no."; both sides answer in `lang`."""
    rng = random.Random(f"starter-yesno-train-{seed}")
    target, en = get_language(lang), get_language("en")
    pairs = []
    for f, y, answer in _yesno_items(subset, facts, rng):
        word = (target.yes if answer == "yes" else target.no)[0]
        reply = word[:1].upper() + word[1:] + "."
        rid = f"{f.id}#yesno"
        en_q = _fill(en.starter_yesno[f.kind], f.entity["en"], y["en"]) + " " + en.answer_yes_no
        tgt_q = _fill(target.starter_yesno[f.kind], f.entity[lang], y[lang]) + " " + target.answer_yes_no
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
        paths[name] = atomic_write_text(out / f"{name}.jsonl",
                                        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return paths


# ------------------------------------------------------------------ items of the knowledge-transfer probe

PROBE_KINDS = ("currency", "language", "city")
N_SUMS = 40
MAX_SHARED = 2
N_OPTIONS = 4  # the probe scored by log-likelihood: the item's answer and 3 wrong values of its kind


def _probe_words(text: str) -> list[str]:
    return re.findall(r"\w+", text.casefold())


def accepted_answers(value: dict, others: list[dict], entity: dict, lang: str) -> list[str]:
    """What counts as naming `value` in `lang`: its whole name, and each word of it (of 3+ letters) that at most
    `MAX_SHARED` other values of the same kind also have and that is not a word of the entity's name ("yen" of
    "Japanese yen", "dirham" of "UAE dirham"; not "dollar", which twenty currencies share)."""
    counts: dict[str, int] = {}
    for o in others:
        if o[lang] != value[lang]:
            for w in set(_probe_words(o[lang])):
                counts[w] = counts.get(w, 0) + 1
    own = set(_probe_words(entity[lang]))
    words = [w for w in _probe_words(value[lang]) if len(w) >= 3 and counts.get(w, 0) <= MAX_SHARED and w not in own]
    return list(dict.fromkeys([value[lang].casefold()] + words))


def transfer_items(lang: str, heldout_fraction: float = 0.2) -> list[dict]:
    """The probe's items, the same questions in English and in `lang` (lingotune.eval.transfer):
    - one per held-out CLDR fact (`is_heldout`, the starter data's split, so never a training fact) of the
      kinds in `PROBE_KINDS`, asked with the kind's first `starter_qa` question;
    - `N_SUMS` sums of two numbers written in words (num2words), answered by the number in digits or words.
    Rows {id, kind, question_en, question, answers_en, answers, echo_free, options_en, options}, in an order mixed by a
    hash of the id (so a `limit` keeps every kind). `options_en`/`options` (for the probe scored by log-likelihood):
    the answer first, then `N_OPTIONS - 1` wrong values of the same kind, drawn by a hash of the id, the same
    values in both languages; a wrong value is never one that also makes the fact true (a second official
    language) nor shares the answer's name in either language."""
    starter_language(lang)
    target, en = get_language(lang), get_language("en")
    target.require("probe_sum", DataError, "the transfer probe")
    facts = list(all_facts(lang))
    values: dict[str, list[dict]] = {}
    by_id: dict[str, dict[str, dict]] = {}  # kind -> value_id -> value (each distinct value once)
    for f in facts:
        values.setdefault(f.kind, []).append(f.value)
        by_id.setdefault(f.kind, {}).setdefault(f.value_id, f.value)
    rows = []
    for f in facts:
        if f.kind not in PROBE_KINDS or not is_heldout(f.id, heldout_fraction):
            continue
        q_en, q = en.starter_qa[f.kind][0][0], target.starter_qa[f.kind][0][0]
        wrong = _wrong_values(f, by_id[f.kind], lang)
        rows.append({"id": f"probe:{f.id}", "kind": f.kind,
                     "question_en": _fill(q_en, f.entity["en"], f.value["en"]),
                     "question": _fill(q, f.entity[lang], f.value[lang]),
                     "answers_en": accepted_answers(f.value, values[f.kind], f.entity, "en"),
                     "answers": accepted_answers(f.value, values[f.kind], f.entity, lang), "echo_free": True,
                     "options_en": [_cap(v["en"]) for v in [f.value] + wrong],
                     "options": [_cap(v[lang]) for v in [f.value] + wrong]})
    rows += _sum_items(lang)
    return sorted(rows, key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest())


def _wrong_values(f: Fact, pool: dict[str, dict], lang: str) -> list[dict]:
    """`N_OPTIONS - 1` values of `f`'s kind that do not answer it, drawn by a hash of its id."""
    right = {f.value["en"].casefold(), f.value[lang].casefold()}
    cands = [v for vid, v in sorted(pool.items()) if vid != f.value_id and vid not in f.true_values
             and v["en"].casefold() not in right and v[lang].casefold() not in right]
    return random.Random(f"probe-options:{f.id}").sample(cands, N_OPTIONS - 1)


def _sum_items(lang: str) -> list[dict]:
    from num2words import num2words

    codes = {c: get_language(c).require("num2words", DataError, "the transfer probe") for c in ("en", lang)}
    rng = random.Random("probe-sums")
    pairs = sorted({(rng.randint(2, 20), rng.randint(2, 20)) for _ in range(4 * N_SUMS)})
    rng.shuffle(pairs)
    rows = []
    for a, b in sorted(pairs[:N_SUMS]):
        words = {c: (num2words(a, lang=code), num2words(b, lang=code), num2words(a + b, lang=code))
                 for c, code in codes.items()}
        wrong = random.Random(f"probe-options:{a}+{b}").sample([a + b + d for d in (-3, -2, -1, 1, 2, 3)], N_OPTIONS - 1)
        options = {c: [_cap(num2words(n, lang=code)) for n in [a + b] + wrong] for c, code in codes.items()}
        rows.append({"id": f"probe:sum:{a}+{b}", "kind": "sum",
                     "question_en": get_language("en").probe_sum.format(a=words["en"][0], b=words["en"][1]),
                     "question": get_language(lang).probe_sum.format(a=words[lang][0], b=words[lang][1]),
                     "answers_en": [str(a + b), words["en"][2]], "answers": [str(a + b), words[lang][2]],
                     "echo_free": False, "options_en": options["en"], "options": options[lang]})
    return rows
