"""Preference data (prompt, chosen, rejected) for DPO/ORPO, built offline: file readers, three builders, checks.

Files (`read_pref_file`; JSON array or JSONL, the layout told per row by its fields):
- standard: {"prompt": str, "chosen": str, "rejected": str} plus optional "system" (str), "id", "lang" (str),
  "kind" (one of KINDS). This is what `write_prefs` writes (and "source" when a pair has one).
- HH (Anthropic HH-RLHF): no "prompt"; "chosen" and "rejected" are whole dialogues
  "\\n\\nHuman: ...\\n\\nAssistant: ...". The prompt is their shared prefix up to the last Assistant turn, the
  answers are the last Assistant turns.
- messages: "chosen" and "rejected" are lists of {role: system|user|assistant, content: str} that share all but
  their last (assistant) message; or TRL's conversational layout, "prompt" a list of messages (or a string, one
  user message) and "chosen"/"rejected" the lists of messages that follow it.
In the HH and messages layouts, a leading system message becomes `system`; a prompt of one user turn is its
text, a longer one the transcript "Human: ...\\n\\nAssistant: ...\\n\\nHuman: ..." (as HH writes it).
Structural problems are a one-line DataError naming file:line and field (a missing "chosen", an empty prompt or
answer, a wrong type, dialogues that differ before their last answer). A pair whose chosen and rejected are
identical (after stripping surrounding whitespace) is skipped and counted, not an error.

Builders (each returns PrefRecords with `kind` set, and a `PrefCounts` per set or task):
- `cross_lingual_pairs` ("cross-lingual"): for each item of a shared parallel set, the target-language prompt,
  chosen = the target-language answer, rejected = the English answer to the same item, from `data.sources`'
  readers: starter (the project's own bilingual facts, `data.starter`: the training facts' question pairs,
  never the held-out ones), mt_bench (the English side's answer is the English GPT-4 reference,
  reference_answer[_en]_gpt-4.jsonl; items without one are counted in `missing_answer`), xquad, gsm8k, msvamp,
  mintaka, each at its `data.config.DEFAULT_PATH` under the data root. Items whose two answers are identical
  (numbers, names) are counted in `identical`.
- `eval.labels.label_pairs` ("label"): yes/no and multiple-choice evaluation tasks (their YAML: prompts, system prompt, label
  map) read on a split that is NOT evaluated: the task's `train_file`; for a task without one that carves its
  file (IDAT, MQ2Q: `carve: test` evaluates the test half), the other half of the carve (the dev half). Never the
  split the task evaluates. The prompt is the one the evaluation renders (yes/no: the user turn and system
  prompt of `eval.yesno.build_messages` with seed `seed`; multiple choice: `eval.multiple_choice.mc_context`).
  chosen = the right answer (yes/no: the language's capitalized yes/no word, `eval.yesno.answer_word`; multiple
  choice: the right option's text), rejected = the wrong word, or one wrong option drawn with
  random.Random(f"{seed}:{row id}"). NB for IDAT/MQ2Q: the dev half is what the `idat_dev`/`mq2q_dev` tasks
  evaluate, so after training on these pairs those two are no longer held out (the default suite evaluates
  the test halves).
- `on_policy_pairs` ("on-policy"): chosen = a reference answer, rejected = the model's own greedy answer
  (`inference.generate_chat`, one batch per call, at most `max_new_tokens` new tokens). References: the records
  of an instruction file (`formats.read_file`: alpaca, openorca, sharegpt, prompt_completion), or the target side
  (prompt, target-language answer) of the shared sets above. Generations are cached in <cache_dir>/generations.jsonl
  (appended and flushed after every batch, keyed by sha256 of model name, max_new_tokens, system and prompt),
  so an interrupted build generates only what is missing. An empty generation is counted in `empty`; one too
  close to the reference is counted in `near_duplicates`: equal after `normalize` (case folded, punctuation
  dropped, whitespace collapsed), or chrF++ (sacrebleu, word order 2) of the normalized generation against the
  normalized reference >= NEAR_DUP_CHRF.

Every builder's pairs then go through `screen`: identical pairs, repeats of an earlier (system, prompt, chosen,
rejected), and pairs whose prompt, chosen, rejected or system shares a word n-gram with an evaluation text
(`validate.LeakageIndex`) are dropped and counted (`identical`, `duplicates`, `leaked`).

Label pairs need the evaluation's task files and prompts, so they live in `lingotune.eval.labels`; the request
that `lingotune data build-prefs` makes (and the leakage index over the evaluation texts) in
`lingotune.prefs_cli`, above both.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lingotune import inference
from lingotune.data.formats import field as str_field
from lingotune.data.formats import iter_rows
from lingotune.data.records import DataError, PrefRecord, Record
from lingotune.data.validate import LeakageIndex
from lingotune.files import JsonlCache
from lingotune.languages import get_language

KINDS = ("cross-lingual", "label", "on-policy", "file")
SOURCES = ("cross-lingual", "labels", "on-policy", "file")  # what `build` (and `--from`) accepts
CROSS_SETS = ("starter", "mt_bench", "xquad", "gsm8k", "msvamp", "mintaka")
NEAR_DUP_CHRF = 85.0


# --------------------------------------------------------------------------------------------- counts

@dataclass
class PrefCounts:
    """What happened to the pairs of one set, task or file."""

    kind: str = "file"
    read: int = 0  # items the set gave (pairs read, rows of a task, references)
    missing_answer: int = 0  # cross-lingual: no English answer; on-policy: a reference without prompt or answer
    identical: int = 0  # chosen == rejected
    empty: int = 0  # on-policy: the model generated nothing
    near_duplicates: int = 0  # on-policy: the generation is too close to the reference
    duplicates: int = 0  # the same (system, prompt, chosen, rejected) seen before
    leaked: int = 0  # shares a word n-gram with an evaluation text
    kept: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


COUNTERS = tuple(k for k in PrefCounts.__dataclass_fields__ if k != "kind")


def report_dict(lang: str, source: str, per_set: dict[str, PrefCounts]) -> dict:
    """The build report: counts per set and summed per kind."""
    kinds: dict[str, dict] = {}
    for c in per_set.values():
        total = kinds.setdefault(c.kind, dict.fromkeys(COUNTERS, 0))
        for k in COUNTERS:
            total[k] += getattr(c, k)
    return {"lang": lang, "from": source, "sets": {n: c.to_dict() for n, c in per_set.items()}, "kinds": kinds,
            "kept": sum(c.kept for c in per_set.values())}


def same(a: str, b: str) -> bool:
    return a.strip() == b.strip()


def pref_leaks(r: PrefRecord, index: LeakageIndex) -> bool:
    return any(index.leaks(t) for t in (r.prompt, r.chosen, r.rejected, r.system or ""))


def screen(records: list[PrefRecord], counts: PrefCounts, leak: LeakageIndex | None = None,
           seen: set | None = None) -> list[PrefRecord]:
    """The pairs worth keeping: identical, repeated and leaked pairs dropped and counted; `seen` may be shared
    between calls to find repeats across sets."""
    seen = set() if seen is None else seen
    kept = []
    for r in records:
        key = (r.system or "", r.prompt.strip(), r.chosen.strip(), r.rejected.strip())
        if same(r.chosen, r.rejected):
            counts.identical += 1
        elif key in seen:
            counts.duplicates += 1
        elif leak is not None and pref_leaks(r, leak):
            counts.leaked += 1
        else:
            seen.add(key)
            kept.append(r)
    counts.kept += len(kept)
    return kept


# --------------------------------------------------------------------------------------------- reading

_ROLES = ("system", "user", "assistant")
_LABEL = {"user": "Human", "assistant": "Assistant", "system": "System"}
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")
Turns = list[tuple[str, str]]


def hh_turns(text: str, where: str, name: str) -> Turns:
    """(role, text) turns of an HH dialogue "\\n\\nHuman: ...\\n\\nAssistant: ..."."""
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise DataError(f"{where}: field '{name}' must be a dialogue '\\n\\nHuman: ...\\n\\nAssistant: ...' "
                        f"(or give a 'prompt' field)")
    return [("user" if role == "Human" else "assistant", body.strip()) for role, body in zip(parts[1::2], parts[2::2])]


def message_turns(value: Any, where: str, name: str) -> Turns:
    """(role, text) turns of a list of {role, content} messages; a string is one user message."""
    if isinstance(value, str):
        return [("user", value.strip())]
    if not isinstance(value, list):
        raise DataError(f"{where}: field '{name}' must be a string or a list of messages, got {type(value).__name__}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            raise DataError(f"{where}: field '{name}[{i}]' must be a message with role system|user|assistant")
        if not isinstance(m.get("content"), str):
            raise DataError(f"{where}: field '{name}[{i}].content' must be a string, got {type(m.get('content')).__name__}")
        out.append((m["role"], m["content"].strip()))
    return out


def split_dialogues(chosen: Turns, rejected: Turns, where: str) -> tuple[Turns, str, str]:
    """(shared turns, chosen answer, rejected answer) of two dialogues that differ only in their last turn."""
    for name, turns in (("chosen", chosen), ("rejected", rejected)):
        if not turns or turns[-1][0] != "assistant":
            raise DataError(f"{where}: field '{name}' must end with an assistant turn")
    if chosen[:-1] != rejected[:-1]:
        raise DataError(f"{where}: field 'rejected' differs from 'chosen' before its last assistant turn")
    return chosen[:-1], chosen[-1][1], rejected[-1][1]


def prompt_of(turns: Turns) -> tuple[str | None, str]:
    """(system, prompt) of the turns before an answer: a leading system turn is the system prompt; one user turn
    is the prompt, more are written as an HH transcript."""
    system = None
    if turns and turns[0][0] == "system":
        system, turns = turns[0][1] or None, turns[1:]
    if len(turns) == 1 and turns[0][0] == "user":
        return system, turns[0][1]
    return system, "\n\n".join(f"{_LABEL[r]}: {t}" for r, t in turns)


def _layout(obj: dict, where: str) -> tuple[str | None, str, str, str]:
    """(system, prompt, chosen, rejected) of one row, whatever its layout."""
    for name in ("chosen", "rejected"):
        if obj.get(name) is None:
            raise DataError(f"{where}: field '{name}' is missing")
    c, r, p = obj["chosen"], obj["rejected"], obj.get("prompt")
    if any(isinstance(v, list) for v in (c, r, p)):
        for name, v in (("chosen", c), ("rejected", r)):
            if not isinstance(v, list):
                raise DataError(f"{where}: field '{name}' must be a list of messages like the others, got {type(v).__name__}")
        head = message_turns(p, where, "prompt") if p is not None else []
        shared, a, b = split_dialogues(head + message_turns(c, where, "chosen"), head + message_turns(r, where, "rejected"), where)
        return (*prompt_of(shared), a, b)
    if p is None:
        shared, a, b = split_dialogues(hh_turns(str_field(obj, "chosen", where), where, "chosen"),
                                       hh_turns(str_field(obj, "rejected", where), where, "rejected"), where)
        return (*prompt_of(shared), a, b)
    system = str_field(obj, "system", where, required=False).strip() or None
    return system, str_field(obj, "prompt", where), str_field(obj, "chosen", where), str_field(obj, "rejected", where)


def pref_row(obj: Any, where: str, lang: str | None = None) -> PrefRecord:
    """One preference record of a row in any of the three layouts (see the module doc)."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    system, prompt, chosen, rejected = _layout(obj, where)
    for name, text in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        if not text.strip():
            raise DataError(f"{where}: field '{name}' is empty")
    kind = str_field(obj, "kind", where, required=False, default="file")
    if kind not in KINDS:
        raise DataError(f"{where}: field 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    rid = obj.get("id")
    if rid is not None and not isinstance(rid, (str, int)):
        raise DataError(f"{where}: field 'id' must be a string or a number, got {type(rid).__name__}")
    row_lang = str_field(obj, "lang", where, required=False) or lang
    return PrefRecord(prompt.strip(), chosen.strip(), rejected.strip(), system, None if rid is None else str(rid),
                      row_lang, where, kind)


def load_pref_file(path: str | Path, lang: str | None = None, limit: int | None = None) -> tuple[list[PrefRecord], PrefCounts]:
    """The pairs of a preference file (at most `limit`) and its counts; pairs with chosen == rejected are
    skipped and counted in `identical`."""
    counts, out = PrefCounts(kind="file"), []
    for where, obj in iter_rows(path):
        if limit is not None and len(out) >= limit:
            break
        counts.read += 1
        r = pref_row(obj, where, lang)
        if same(r.chosen, r.rejected):
            counts.identical += 1
            continue
        out.append(r)
    return out, counts


def read_pref_file(path: str | Path, lang: str | None = None, limit: int | None = None) -> list[PrefRecord]:
    """The pairs of a preference file in any of the three layouts (see the module doc)."""
    return load_pref_file(path, lang, limit)[0]


def pref_dict(r: PrefRecord) -> dict:
    """The standard layout of one pair: prompt, chosen, rejected, then the optional fields that are set."""
    row = {"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected}
    for name in ("system", "id", "lang", "kind", "source"):
        if getattr(r, name):
            row[name] = getattr(r, name)
    return row


def write_prefs(records: list[PrefRecord], path: str | Path) -> Path:
    """The pairs as standard JSONL, one a line, written atomically."""
    from lingotune.files import atomic_write_text

    return atomic_write_text(Path(path), "".join(json.dumps(pref_dict(r), ensure_ascii=False) + "\n" for r in records))


# --------------------------------------------------------------------------------------------- cross-lingual

def set_available(name: str, root: Path, lang: str) -> bool:
    """Whether the shared set `name` has `lang` under the data root (its target-language file exists)."""
    from lingotune.data.config import DEFAULT_PATH

    if name == "starter":
        from lingotune.data.starter import starter_language

        try:
            starter_language(lang)
        except DataError:
            return False
        return True
    where = root / DEFAULT_PATH[name].format(lang=lang)
    target = {"mt_bench": f"question_{lang}.jsonl", "xquad": f"xquad.{lang}.json", "gsm8k": f"train.{lang}",
              "msvamp": f"test_{get_language(lang).msvamp or '-'}.json", "mintaka": ""}[name]
    return (where / target if target else where).is_file()


def set_pairs(name: str, root: Path, lang: str, limit: int | None = None) -> list[tuple[Record, Record]]:
    """(English, target) QA pairs of a shared set, read by its `data.sources` reader (mode "qa")."""
    from lingotune.data import sources
    from lingotune.data.config import DEFAULT_PATH

    if name == "starter":  # the project's own bilingual facts (training facts only, never the held-out ones)
        from lingotune.data.starter import generate

        pairs = generate(lang).train_pairs
        return pairs[:limit] if limit else pairs
    return getattr(sources, f"read_{name}")(root / DEFAULT_PATH[name].format(lang=lang), lang, limit=limit)


def mt_bench_en_answers(folder: Path) -> dict[str, str]:
    """question_id -> first turn of MT-Bench's English GPT-4 reference answer ({} when there is no such file)."""
    from lingotune.data.sources import _first_turns

    for name in ("reference_answer_en_gpt-4.jsonl", "reference_answer_gpt-4.jsonl"):
        if (folder / name).is_file():
            return {qid: text.strip() for qid, (_, text) in _first_turns(folder / name).items()}
    return {}


def cross_lingual_pairs(name: str, root: Path, lang: str, limit: int | None = None) -> tuple[list[PrefRecord], PrefCounts]:
    """Target prompt, chosen = the target answer, rejected = the English answer (see the module doc)."""
    from lingotune.data.config import DEFAULT_PATH

    pairs = set_pairs(name, root, lang, limit)
    counts, out = PrefCounts(kind="cross-lingual", read=len(pairs)), []
    en_answers = mt_bench_en_answers(root / DEFAULT_PATH[name].format(lang=lang)) if name == "mt_bench" else None
    for en, tgt in pairs:
        rejected = en.response if en_answers is None else en_answers.get(str(en.id), "")
        if not rejected.strip() or not tgt.response.strip():
            counts.missing_answer += 1
            continue
        out.append(PrefRecord(tgt.prompt, tgt.response, rejected, tgt.system, f"{name}/{tgt.id}", lang, tgt.source,
                              "cross-lingual"))
    return out, counts


# --------------------------------------------------------------------------------------------- on-policy

def normalize(text: str) -> str:
    """Case folded, punctuation dropped, whitespace collapsed."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


def near_duplicate(chosen: str, rejected: str, threshold: float = NEAR_DUP_CHRF) -> bool:
    """True when `rejected` says what `chosen` says: equal after `normalize`, or chrF++ >= threshold."""
    from sacrebleu.metrics import CHRF

    a, b = normalize(chosen), normalize(rejected)
    return a == b or CHRF(word_order=2).sentence_score(b, [a]).score >= threshold


@dataclass
class Generator:
    """The model that answers on-policy prompts; `name` identifies it in the cache."""

    model: Any
    tok: Any
    name: str
    max_new_tokens: int = 256
    batch_size: int = 8


def generation_key(gen: Generator, r: Record) -> str:
    return hashlib.sha256(json.dumps([gen.name, gen.max_new_tokens, r.system, r.prompt], ensure_ascii=False).encode()).hexdigest()


def conversation(r: Record) -> list[dict[str, str]]:
    return ([{"role": "system", "content": r.system}] if r.system else []) + [{"role": "user", "content": r.prompt}]


def generate_cached(refs: list[Record], gen: Generator, cache_dir: str | Path) -> list[str]:
    """The model's greedy answer to each reference's prompt, from the cache or generated a batch at a time."""
    cache = JsonlCache(Path(cache_dir) / "generations.jsonl", field="text")
    keys = [generation_key(gen, r) for r in refs]
    todo = list({k: r for k, r in zip(keys, refs) if k not in cache.items}.items())
    for i in range(0, len(todo), gen.batch_size):
        batch = todo[i:i + gen.batch_size]
        outs = inference.generate_chat(gen.model, gen.tok, [conversation(r) for _, r in batch], gen.max_new_tokens,
                                       batch_size=gen.batch_size, desc="on-policy answers")
        if len(outs) != len(batch):
            raise RuntimeError(f"generate_chat gave {len(outs)} answers for {len(batch)} prompts")
        cache.put_many([(k, o) for (k, _), o in zip(batch, outs)])
    return [cache.items[k] for k in keys]


def on_policy_pairs(refs: list[Record], gen: Generator, cache_dir: str | Path, threshold: float = NEAR_DUP_CHRF,
                    leak: LeakageIndex | None = None) -> tuple[list[PrefRecord], PrefCounts]:
    """chosen = each reference's answer, rejected = the model's (see the module doc). References whose prompt or
    answer leaks are dropped (counted) before anything is generated for them."""
    counts = PrefCounts(kind="on-policy", read=len(refs))
    usable = []
    for r in refs:
        if not r.prompt.strip() or not r.response.strip():
            counts.missing_answer += 1
        elif leak is not None and leak.record_leaks(r):
            counts.leaked += 1
        else:
            usable.append(r)
    out = []
    for r, answer in zip(usable, generate_cached(usable, gen, cache_dir)):
        if not answer.strip():
            counts.empty += 1
        elif not same(r.response, answer) and near_duplicate(r.response, answer, threshold):
            counts.near_duplicates += 1
        else:
            out.append(PrefRecord(r.prompt.strip(), r.response.strip(), answer.strip(), r.system, r.id, r.lang,
                                  r.source, "on-policy"))
    return out, counts


# --------------------------------------------------------------------------------------------- one request
