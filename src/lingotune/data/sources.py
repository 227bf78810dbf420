"""Readers for parallel data: each returns aligned (English Record, target Record) pairs.

Layouts (all under the shared data root, see /work/shared/data/README.md):

- `read_parallel_text(en, tgt)`: two line-aligned text files (FLORES devtest, Tatoeba). Each line pair becomes a
  translation instruction: English side "Translate into Russian: <en>" and target side
  "Переведи на русский язык:\\n<en>", both answered with the target sentence.
- `read_paired(en, tgt, align="index"|"id")`: an English instruction file and its translation (HPLT, Okapi,
  Bactrian-X layouts), any format `formats.read_file` knows, aligned by position or by an id field.
- `read_xquad`: SQuAD files xquad.en.json / xquad.<lang>.json paired by `qas[].id`; prompt = passage + question,
  response = the first answer span's text.
- `read_gsm8k`: train.en / train.<lang> line-aligned questions; there are no target-language answers. mode "qa"
  (default): the answer is the final number of the English solution (joined by question text from
  gsm8kinstruct_en_train.jsonl), written as "Ответ: 72" -- a language-neutral answer, so the target pair is
  correct without translation; questions with no English solution are skipped. mode "translate": question
  translation pairs.
- `read_msvamp`: test_English.json / test_<Language.msvamp>.json (JSONL inside), line-aligned; answer = the number
  written simply ("8.0" -> "8") after the language's "Answer:" label.
- `read_mt_bench`: first turns of question_en.jsonl (or question.jsonl) and question_<lang>.jsonl by
  question_id; mode "qa" keeps questions with a target-language reference answer (first turn);
  mode "translate" uses all questions as translation pairs.
- `read_ifeval`: prompts aligned by `key`; no answers exist, so always translation pairs.
- `read_mintaka`: English questions with their translations. Answers are English entity labels, so mode "qa"
  keeps only language-neutral answers: booleans (the language's yes/no word), numbers and dates (ISO);
  mode "translate": all questions as translation pairs.
- `read_flores` / `read_tatoeba`: `read_parallel_text` on the devtest files / the Tatoeba v1 pairs.

"mode" is "qa" (question -> target-language answer) or "translate" (English text -> its translation).
Per-language text (the translation instruction, passage/question/answer labels, MSVAMP and Tatoeba file names)
comes from the language's entry in `lingotune.languages`; a missing one is a DataError naming the field.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lingotune.data.formats import (field, iter_rows, read_text, records_from_rows, source_name,
                                    source_rows)
from lingotune.data.records import DataError, Record
from lingotune.languages import get_language

Pair = tuple[Record, Record]  # (English record, target-language record)


def _text(lang: str, name: str, purpose: str) -> str:
    """A text field of the language's entry (lingotune.languages), or a DataError naming the missing field."""
    return get_language(lang).require(name, DataError, purpose)


def translate_en(lang: str) -> str:
    return f"Translate into {get_language(lang).name}:"


def translate_native(lang: str) -> str:
    """"Translate into <language>:" written in the target language itself (Language.translate_native)."""
    return _text(lang, "translate_native", "translation pairs")


def translation_pair(en_text: str, tgt_text: str, lang: str, rid: str | None, en_src: str, tgt_src: str) -> Pair:
    """The DParT pair for one sentence pair: both sides answer with the target sentence."""
    en_text, tgt_text = en_text.strip(), tgt_text.strip()
    en = Record(f"{translate_en(lang)} {en_text}", tgt_text, None, rid, "en", en_src)
    tgt = Record(f"{translate_native(lang)}\n{en_text}", tgt_text, None, rid, lang, tgt_src)
    return en, tgt


def as_translation(pairs: list[Pair], lang: str) -> list[Pair]:
    """Question pairs -> translation pairs (English prompt -> target prompt)."""
    return [translation_pair(e.prompt, t.prompt, lang, t.id or e.id, e.source, t.source)
            for e, t in pairs if e.prompt.strip() and t.prompt.strip()]


def _check_mode(mode: str) -> None:
    if mode not in ("qa", "translate"):
        raise DataError(f"field 'mode' must be 'qa' or 'translate', got {mode!r}")


def _need(path: Path) -> Path:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    return path


def _limit(pairs: list[Pair], limit: int | None) -> list[Pair]:
    return pairs if limit is None else pairs[:limit]


def _read_lines(path: Path) -> list[str]:
    return read_text(path).splitlines()


# --------------------------------------------------------------------------------------------- generic

def read_parallel_text(en_path: str | Path, tgt_path: str | Path, lang: str, limit: int | None = None) -> list[Pair]:
    """Line-aligned sentence files -> translation pairs. Line counts must match; blank line pairs are skipped."""
    en_path, tgt_path = Path(en_path), Path(tgt_path)
    en_lines, tgt_lines = _read_lines(en_path), _read_lines(tgt_path)
    if len(en_lines) != len(tgt_lines):
        raise DataError(f"{tgt_path}: {len(tgt_lines)} lines but {en_path} has {len(en_lines)}; files must be line-aligned")
    pairs = [translation_pair(e, t, lang, str(i), f"{en_path}:{i}", f"{tgt_path}:{i}")
             for i, (e, t) in enumerate(zip(en_lines, tgt_lines), 1) if e.strip() and t.strip()]
    return _limit(pairs, limit)


def read_paired(en_path, tgt_path, lang: str, align: str = "index", id_field: str = "id",
                fmt: str = "auto", mode: str = "qa", limit: int | None = None) -> list[Pair]:
    """An English side and its translation, aligned by position ("index") or by `id_field` ("id"). Each side
    is a file or a hub dataset (`lingotune.hub.HubSpec`, e.g. one dataset's `en` and `ru` configs); aligned
    by id, a target record whose id has no English record is a DataError naming the field."""
    _check_mode(mode)
    if align not in ("index", "id"):
        raise DataError(f"field 'align' must be 'index' or 'id', got {align!r}")
    if mode == "translate":
        en = _prompt_only(en_path, "en", id_field)
        tgt = _prompt_only(tgt_path, lang, id_field)
    else:
        en = records_from_rows(source_rows(en_path), fmt, "en", id_field=id_field)
        tgt = records_from_rows(source_rows(tgt_path), fmt, lang, id_field=id_field)
    en_name, tgt_name = source_name(en_path), source_name(tgt_path)
    if align == "index":
        if len(en) != len(tgt):
            raise DataError(f"{tgt_name}: {len(tgt)} records but {en_name} has {len(en)}; align by 'id' or fix the files")
        pairs = list(zip(en, tgt))
    else:
        by_id = {}
        for r in en:
            if r.id is None:
                raise DataError(f"{r.source}: field '{id_field}' is missing (needed for align: id)")
            by_id[r.id] = r
        pairs = []
        for t in tgt:
            if t.id is None:
                raise DataError(f"{t.source}: field '{id_field}' is missing (needed for align: id)")
            if t.id not in by_id:
                raise DataError(f"{t.source}: field '{id_field}' {t.id!r} has no record in {en_name}; the sides do "
                                f"not share ids")
            pairs.append((by_id[t.id], t))
    if mode == "translate":
        pairs = as_translation(pairs, lang)
    return _limit(pairs, limit)


def _prompt_only(source, lang: str, id_field: str) -> list[Record]:
    """Records from rows that may have only a prompt (HPLT test prompts): prompt/instruction/question."""
    out = []
    for where, obj in source_rows(source):
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        key = next((k for k in ("prompt", "instruction", "question") if k in obj), "prompt")
        rid = str(obj[id_field]) if obj.get(id_field) is not None else None
        out.append(Record(field(obj, key, where), "", None, rid, lang, where))
    return out


# --------------------------------------------------------------------------------------------- shared sets

def read_xquad(directory: str | Path, lang: str, limit: int | None = None) -> list[Pair]:
    directory = Path(directory)
    en = _squad(_need(directory / "xquad.en.json"), "en")
    tgt = _squad(_need(directory / f"xquad.{lang}.json"), lang)
    pairs = [(en[k], t) for k, t in tgt.items() if k in en]
    return _limit(pairs, limit)


def xquad_transfer_rows(directory: str | Path, lang: str) -> list[dict]:
    """XQuAD as rows of the transfer probe (lingotune.eval.transfer): {id, context_en, context, question_en,
    question, answers_en, answers}, the questions carrying their passage ("<Passage>: ...\n\n<Question>: ..."
    in each language), paired by `qas[].id`."""
    directory = Path(directory)
    en = _squad(_need(directory / "xquad.en.json"), "en", with_context=True)
    tgt = _squad(_need(directory / f"xquad.{lang}.json"), lang, with_context=True)
    return [{"id": k, "context_en": en[k][1], "context": t[1], "question_en": en[k][0].prompt, "question": t[0].prompt,
             "answers_en": [en[k][0].response], "answers": [t[0].response]} for k, t in tgt.items() if k in en]


def _squad(path: Path, lang: str, with_context: bool = False) -> dict:
    """qas id -> Record (passage + question, the first answer), or (Record, passage) `with_context`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{path}: field 'data' must be a list of articles (SQuAD format)")
    passage_l, question_l = _text(lang, "passage_label", "XQuAD"), _text(lang, "question_label", "XQuAD")
    out: dict[str, Record] = {}
    for a, article in enumerate(data["data"]):
        for p, para in enumerate(article.get("paragraphs", [])):
            where = f"{path}:data[{a}].paragraphs[{p}]"
            context = field(para, "context", where).replace("\ufeff", "").strip()
            for q in para.get("qas", []):
                qid = field(q, "id", where)
                answers = q.get("answers") or []
                if not answers:
                    continue
                text = field(answers[0], "text", f"{where}.qas[{qid}].answers[0]").strip()
                prompt = f"{passage_l}: {context}\n\n{question_l}: {field(q, 'question', where).strip()}"
                rec = Record(prompt, text, None, qid, lang, f"{path}:{qid}")
                out[qid] = (rec, context) if with_context else rec
    return out


_FINAL = re.compile(r"####\s*(.+?)\s*$")


def read_gsm8k(directory: str | Path, lang: str, mode: str = "qa", limit: int | None = None) -> list[Pair]:
    _check_mode(mode)
    directory = Path(directory)
    en_path, tgt_path = directory / "train.en", directory / f"train.{lang}"
    en_lines, tgt_lines = _read_lines(en_path), _read_lines(tgt_path)
    if len(en_lines) != len(tgt_lines):
        raise DataError(f"{tgt_path}: {len(tgt_lines)} lines but {en_path} has {len(en_lines)}; files must be line-aligned")
    if mode == "translate":
        return read_parallel_text(en_path, tgt_path, lang, limit)
    answers: dict[str, str] = {}
    for where, obj in iter_rows(_need(directory / "gsm8kinstruct_en_train.jsonl")):
        m = _FINAL.search(field(obj, "answer", where))
        if m:
            answers[field(obj, "question", where).strip()] = m.group(1).replace(",", "")
    en_ans, tgt_ans = _text("en", "answer_label", "math answers"), _text(lang, "answer_label", "math answers")
    pairs = []
    for i, (e, t) in enumerate(zip(en_lines, tgt_lines), 1):
        num = answers.get(e.strip())
        if num is None or not t.strip():
            continue
        pairs.append((Record(e.strip(), f"{en_ans}: {num}", None, str(i), "en", f"{en_path}:{i}"),
                      Record(t.strip(), f"{tgt_ans}: {num}", None, str(i), lang, f"{tgt_path}:{i}")))
    return _limit(pairs, limit)


def simple_number(value: Any) -> str:
    """'8.0' -> '8', '2.50' -> '2.5', 7 -> '7'."""
    s = str(value).strip()
    try:
        x = float(s)
    except ValueError:
        return s
    return str(int(x)) if x.is_integer() else f"{x:g}"


def read_msvamp(directory: str | Path, lang: str, limit: int | None = None) -> list[Pair]:
    directory = Path(directory)
    en_name, tgt_name = _text("en", "msvamp", "MSVAMP"), _text(lang, "msvamp", "MSVAMP")
    en_path, tgt_path = _need(directory / f"test_{en_name}.json"), _need(directory / f"test_{tgt_name}.json")
    en_rows, tgt_rows = list(iter_rows(en_path)), list(iter_rows(tgt_path))
    if len(en_rows) != len(tgt_rows):
        raise DataError(f"{tgt_path}: {len(tgt_rows)} records but {en_path} has {len(en_rows)}; files must be line-aligned")
    en_ans, tgt_ans = _text("en", "answer_label", "math answers"), _text(lang, "answer_label", "math answers")
    pairs = []
    for i, ((ew, eo), (tw, to)) in enumerate(zip(en_rows, tgt_rows), 1):
        e_num = simple_number(field(eo, "response", ew))
        t_num = simple_number(field(to, "response", tw))
        if e_num != t_num:
            raise DataError(f"{tw}: field 'response' {t_num} differs from {ew} ({e_num}); files are not aligned")
        pairs.append((Record(field(eo, "m_query", ew).strip(), f"{en_ans}: {e_num}", None, str(i), "en", ew),
                      Record(field(to, "m_query", tw).strip(), f"{tgt_ans}: {t_num}", None, str(i), lang, tw)))
    return _limit(pairs, limit)


def _first_turns(path: Path, key: str = "question_id") -> dict[str, tuple[str, str]]:
    """question_id -> (where, first turn) of an MT-Bench question or reference-answer file."""
    out = {}
    for where, obj in iter_rows(path):
        if not isinstance(obj, dict) or key not in obj:
            raise DataError(f"{where}: field '{key}' is missing")
        turns = obj.get("turns")
        if turns is None and obj.get("choices"):
            turns = obj["choices"][0].get("turns")
        if not isinstance(turns, list) or not turns or isinstance(turns[0], bool) or not isinstance(turns[0], (str, int, float)):
            raise DataError(f"{where}: field 'turns' must be a non-empty list of strings")
        # a few reference answers are bare numbers (12000): keep them as text
        out[str(obj[key])] = (where, turns[0] if isinstance(turns[0], str) else simple_number(turns[0]))
    return out


def read_mt_bench(directory: str | Path, lang: str, mode: str = "qa", limit: int | None = None) -> list[Pair]:
    _check_mode(mode)
    directory = Path(directory)
    en_path = directory / "question_en.jsonl"
    if not en_path.exists():
        en_path = directory / "question.jsonl"
    en_q = _first_turns(_need(en_path))
    tgt_q = _first_turns(_need(directory / f"question_{lang}.jsonl"))
    ref_path = directory / f"reference_answer_{lang}_gpt-4.jsonl"
    refs = _first_turns(ref_path) if ref_path.exists() else {}
    pairs = []
    for qid, (tw, tq) in tgt_q.items():
        if qid not in en_q:
            continue
        ew, eq = en_q[qid]
        if mode == "translate":
            pairs.append(translation_pair(eq, tq, lang, qid, ew, tw))
        elif qid in refs:
            answer = refs[qid][1].strip()
            pairs.append((Record(eq.strip(), answer, None, qid, "en", ew), Record(tq.strip(), answer, None, qid, lang, tw)))
    return _limit(pairs, limit)


def read_ifeval(directory: str | Path, lang: str, limit: int | None = None) -> list[Pair]:
    directory = Path(directory)
    files = sorted(directory.glob(f"{lang}IFEval*.jsonl"))
    if not files:
        raise DataError(f"{directory}: no {lang}IFEval*.jsonl file")
    en = {str(o["key"]): (w, field(o, "prompt", w)) for w, o in iter_rows(_need(directory / "enIFEval.jsonl")) if "key" in o}
    pairs = []
    for w, o in iter_rows(files[0]):
        if not isinstance(o, dict) or "key" not in o:
            raise DataError(f"{w}: field 'key' is missing")
        k = str(o["key"])
        if k in en:
            pairs.append(translation_pair(en[k][1], field(o, "prompt", w), lang, k, en[k][0], w))
    return _limit(pairs, limit)


def _mintaka_answer(ans: dict, lang: str) -> str | None:
    """A language-neutral answer in `lang`, or None when the answer is an (English) entity label."""
    kind, values = ans.get("answerType"), ans.get("answer") or []
    if not values:
        return None
    if kind == "boolean":
        language = get_language(lang)
        word = language.yes[0] if values[0] else language.no[0]
        return word[:1].upper() + word[1:]
    if kind in ("numerical", "date"):
        return ", ".join(simple_number(v) for v in values)
    return None


def read_mintaka(path: str | Path, lang: str, mode: str = "qa", limit: int | None = None) -> list[Pair]:
    _check_mode(mode)
    path = _need(Path(path))
    pairs = []
    for where, obj in iter_rows(path):
        translations = obj.get("translations") if isinstance(obj, dict) else None
        if not isinstance(translations, dict):
            raise DataError(f"{where}: field 'translations' must be an object")
        if lang not in translations:
            raise DataError(f"{where}: field 'translations' has no {lang!r} (it has {sorted(translations)})")
        rid = field(obj, "id", where)
        eq, tq = field(obj, "question", where), field(translations, lang, where)
        if mode == "translate":
            pairs.append(translation_pair(eq, tq, lang, rid, where, where))
            continue
        ans = obj.get("answer") if isinstance(obj.get("answer"), dict) else {}
        t_ans, e_ans = _mintaka_answer(ans, lang), _mintaka_answer(ans, "en")
        if t_ans is None:
            continue
        pairs.append((Record(eq.strip(), e_ans, None, rid, "en", where), Record(tq.strip(), t_ans, None, rid, lang, where)))
    return _limit(pairs, limit)


def read_flores(directory: str | Path, lang: str, split: str = "devtest", limit: int | None = None) -> list[Pair]:
    directory = Path(directory)
    sub = directory / split if (directory / split).is_dir() else directory
    en, tgt = get_language("en").flores, get_language(lang).flores
    return read_parallel_text(sub / f"{en}.{split}", sub / f"{tgt}.{split}", lang, limit)


def read_tatoeba(directory: str | Path, lang: str, limit: int | None = None) -> list[Pair]:
    directory = Path(directory)
    en, code = _text("en", "tatoeba", "Tatoeba"), _text(lang, "tatoeba", "Tatoeba")
    stem = directory / f"tatoeba.{code}-{en}"
    return read_parallel_text(Path(f"{stem}.{en}"), Path(f"{stem}.{code}"), lang, limit)
