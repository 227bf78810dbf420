"""DParT training sets built from aligned (English Record, target Record) pairs.

Stage 1 (embeddings only), per pair, two examples with the same target-language answer:
  kind "target":     target question                                  -> target answer
  kind "en2target":  English question + "\\n\\n" + instruction          -> target answer
The instruction is `Language.answer_in_en` ("Answer in Russian."), `answer_in_native` ("Ответь на русском
языке.") or a custom string. `both_share` (default 1.0) is the share of pairs that yield both variants; the
other pairs yield one, picked by `single_kind` ("random", "target" or "en2target").
Pairs are shuffled with random.Random(seed); the examples of one pair stay adjacent (target first) in the built
set. Training keeps them in the same optimizer step, as the paper presents the two questions of a pair
together, with `data.pair_batching: together` (`data.batches.BatchPlan`); the default, `shuffled`, batches
each example on its own. System prompts (OpenOrca) are kept as a system message: the target
record's for "target", the English record's for "en2target" (each falls back to the other when missing).

Stage 2 (LoRA): target-language instructions, target prompt -> target answer, kind "target", shuffled.

Every Example's meta: {"kind", "lang", "source", "pair_id", "stage"}.
"""

from __future__ import annotations

import random
from typing import Literal

from lingotune.data.records import Example, Record
from lingotune.languages import get_language

Pair = tuple[Record, Record]


def instruction_text(lang: str, instruction: str = "en") -> str:
    """"en" -> Language.answer_in_en, "native" -> Language.answer_in_native, anything else is used as written."""
    language = get_language(lang)
    if instruction == "en":
        return language.answer_in_en
    if instruction == "native":
        return language.answer_in_native
    if not instruction.strip():
        raise ValueError("field 'instruction' must be 'en', 'native' or a non-empty custom string")
    return instruction.strip()


def _messages(system: str | None, prompt: str, answer: str) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def pair_id(en: Record, tgt: Record, index: int) -> str:
    """A stable, unique id for a pair: the target record's source ("path:line"), else its id, else the index."""
    return tgt.source or tgt.id or en.id or str(index)


def build_stage1(pairs: list[Pair], lang: str, seed: int, instruction: str = "en", both_share: float = 1.0,
                 single_kind: Literal["random", "target", "en2target"] = "random") -> list[Example]:
    """Stage-1 examples (see module doc). Deterministic for a given seed."""
    if not 0.0 <= both_share <= 1.0:
        raise ValueError(f"field 'both_share' must be in [0, 1], got {both_share}")
    if single_kind not in ("random", "target", "en2target"):
        raise ValueError(f"field 'single_kind' must be random|target|en2target, got {single_kind!r}")
    instr = instruction_text(lang, instruction)
    rng = random.Random(seed)
    order = list(range(len(pairs)))
    rng.shuffle(order)
    n_both = round(both_share * len(pairs))
    out: list[Example] = []
    for rank, i in enumerate(order):
        en, tgt = pairs[i]
        pid = pair_id(en, tgt, i)
        answer = tgt.response
        if rank < n_both:
            kinds = ["target", "en2target"]
        elif single_kind == "random":
            kinds = [rng.choice(["target", "en2target"])]
        else:
            kinds = [single_kind]
        for kind in kinds:
            if kind == "target":
                msgs = _messages(tgt.system or en.system, tgt.prompt, answer)
                src = tgt.source
            else:
                msgs = _messages(en.system or tgt.system, f"{en.prompt.rstrip()}\n\n{instr}", answer)
                src = en.source
            out.append(Example(msgs, {"kind": kind, "lang": lang, "source": src, "pair_id": pid, "stage": 1}))
    return out


def build_stage2(records: list[Record], lang: str, seed: int) -> list[Example]:
    """Stage-2 examples: target prompt -> target answer, shuffled with random.Random(seed)."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    out = []
    for i in order:
        r = records[i]
        out.append(Example(_messages(r.system, r.prompt, r.response),
                           {"kind": "target", "lang": r.lang or lang, "source": r.source,
                            "pair_id": r.source or r.id or str(i), "stage": 2}))
    return out
