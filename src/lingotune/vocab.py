"""Vocabulary adaptation (LEP, `../shared/papers/lep.txt`): new tokenizers and the rows of new tokens.

Scenarios (`VocabConfig.scenario`, `adapt`):
- `extend`: BPE merges learned on target text on top of the old vocabulary (old ids unchanged).
- `bpe`, `unigram` (`train_vocab`): a vocabulary trained on the corpus with HF `tokenizers` replaces the
  old one; the old normalizer, pre-tokenizer, decoder, special tokens (at their old ids where the new
  size holds them) and chat template are kept.
- `optimize`: the old vocabulary cut to its `keep` most used tokens (with every token their BPE path
  needs), then extended as in `extend`.

- `piece_map(new_tok, old_tok)`: for every id of the new vocabulary, the ids the *old* tokenizer
  uses for the same text. It drives the mean initialisation of the rows (`init_new_rows`) and
  propagation's Conversion map (`lingotune.propagate`).
"""

from __future__ import annotations

import copy
import heapq
import json
import re
import tempfile
import time
from collections import Counter, defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from lingotune.errors import UserError
from lingotune.languages import get_language, letter_script


def _model_json(tok) -> dict:
    return json.loads(tok.backend_tokenizer.to_str())


def _special_ids(tok) -> dict[str, int]:
    """Special and added tokens by content -> id (they keep their content across vocabularies)."""
    return {t: tok.convert_tokens_to_ids(t) for t in tok.all_special_tokens} | {
        t.content: i for i, t in tok.added_tokens_decoder.items()}


def same_alphabet(new_tok, old_tok) -> bool:
    """The old model is BPE and both share the normalizer and pre-tokenizer (an `extend`ed vocabulary, or a
    `bpe`/`unigram` one trained in the old family): a new token's string is then written in the old
    model's symbols and the old BPE segments it directly, bytes and all."""
    a, b = _model_json(new_tok), _model_json(old_tok)
    return b["model"]["type"] == "BPE" and all(a.get(k) == b.get(k) for k in ("normalizer", "pre_tokenizer"))


def piece_map(new_tok, old_tok) -> list[list[int]]:
    """For each new id (0 .. len(new_tok)-1): the old ids that spell the same text.

    Special and added tokens map to the old token of the same content. In the same alphabet
    (`same_alphabet`) a token the old vocabulary holds is that old id, and any other is segmented by
    the old model directly (exact bytes, also for tokens that are not whole characters); otherwise the
    token is decoded to text and encoded by the old tokenizer without special tokens. A token the old
    tokenizer cannot spell gets [] (callers decide).
    """
    specials_new, specials_old = _special_ids(new_tok), _special_ids(old_tok)
    by_id = {i: t for t, i in specials_new.items()}
    old_vocab = old_tok.get_vocab()
    direct = same_alphabet(new_tok, old_tok)
    old_model = old_tok.backend_tokenizer.model

    @lru_cache(maxsize=None)
    def spell(token: str) -> tuple[int, ...]:
        if direct:
            if token in old_vocab:
                return (old_vocab[token],)
            return tuple(old_vocab[t.value] for t in old_model.tokenize(token))
        text = new_tok.convert_tokens_to_string([token])
        return tuple(old_tok(text, add_special_tokens=False)["input_ids"])

    out = []
    for i in range(len(new_tok)):
        if i in by_id:
            old = specials_old.get(by_id[i])
            out.append([old] if old is not None else [])
            continue
        token = new_tok.convert_ids_to_tokens(i)
        out.append(list(spell(token)) if token is not None else [])
    return out


# ----------------------------------------------------------------------------- the recipe's vocab section


SCENARIOS = ("none", "extend", "bpe", "unigram", "optimize")


class VocabConfig(BaseModel):
    """The recipe's `vocab:` section: how the tokenizer is adapted before training (LEP step 1)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    scenario: Literal["none", "extend", "bpe", "unigram", "optimize"] = Field(
        "none", description="none: keep the model's tokenizer; extend: add tokens learned as BPE merges on target-"
        "language text on top of the original vocabulary (English ids unchanged); bpe / unigram: a BPE / Unigram "
        "vocabulary of `size` tokens trained on the corpus replaces the original (same pre-tokenizer, special tokens "
        "and chat template); optimize: the original vocabulary cut to its `keep` most used tokens on the corpus and "
        "english_corpus, then extended by `add` tokens. Every row of the new vocabulary starts as the mean of the old "
        "rows that spell its text.")
    add: int = Field(5000, ge=1, description="extend, optimize: new tokens to learn (fewer when the corpus runs out "
                     "of pairs).")
    size: int | None = Field(None, ge=1, description="bpe, unigram: the new vocabulary's size, special tokens (and "
                             "the 256 byte symbols of a byte-level or byte-fallback model) included. null: the "
                             "original vocabulary's size.")
    keep: int | None = Field(None, ge=1, description="optimize: tokens of the original vocabulary kept, special "
                             "tokens and base symbols included. null: the original size minus `add`.")
    min_count: int = Field(2, ge=1, description="extend, optimize, bpe: a pair must occur at least this often in the "
                           "corpus to be merged.")
    threshold: float = Field(0.5, gt=0.0, le=1.0, description="extend, optimize: minimum share of a new token's "
                             "letters in the language's script.")
    corpus: list[str] = Field(default_factory=list, description="Text files the vocabulary is learned on (.txt one "
                              "text a line, or JSON/JSONL with a 'text' field), relative to the data root. Empty: the "
                              "run's `text` set (data sources used as text).")
    english_corpus: list[str] = Field(default_factory=list, description="Text the adapted vocabulary must keep "
                                      "serving (English), same formats: optimize counts token use on it beside the "
                                      "corpus (without it, tokens no corpus text uses are kept in their original "
                                      "merge order); bpe and unigram train on it too. Empty: none.")


def adapt(cfg: VocabConfig, tok, lang: str, texts: list[str], english: list[str] = ()):
    """(adapted tokenizer, report), or (None, None) when `cfg.scenario` is none. `texts` are the
    target-language corpus (checked for its script), `english` the text the vocabulary must keep serving."""
    if cfg.scenario == "none":
        return None, None
    if not texts:
        raise VocabError("vocab: no corpus (give vocab.corpus, or a data source used as text)")
    check_script(texts, lang)
    if cfg.scenario == "extend":
        return extend(tok, texts, lang, cfg.add, cfg.min_count, cfg.threshold)
    if cfg.scenario in ("bpe", "unigram"):
        return train_vocab(tok, [*texts, *english], cfg.scenario, cfg.size, cfg.min_count)
    keep = cfg.keep if cfg.keep is not None else len(tok) - cfg.add
    return optimize(tok, texts, lang, keep, cfg.add, english, cfg.min_count, cfg.threshold)


def check_script(texts: list[str], lang: str, least: float = 0.5) -> None:
    """VocabError unless at least `least` of the corpus' letters are in the language's script."""
    script = get_language(lang).script
    chars = Counter()
    for t in texts:
        chars.update(t)
    letters = {ch: letter_script(ch) for ch in chars if ch.isalpha()}
    total = sum(chars[ch] for ch in letters)
    share = sum(chars[ch] for ch, s in letters.items() if s == script) / total if total else 0.0
    if share == 0:
        raise VocabError(f"corpus: no text in the {script} script of language {lang!r}")
    if share < least:
        raise VocabError(f"corpus: only {share:.0%} of its letters are in the {script} script of language {lang!r} "
                         f"(at least {least:.0%} needed); is it text in that language?")


# ----------------------------------------------------------------------------- extend: new merges on top


class VocabError(UserError, ValueError):
    """A vocabulary cannot be adapted as asked (wrong tokenizer type, corpus, size); one line."""


_MARKERS = ("Ġ", "▁")  # word-start markers of byte-level and SentencePiece-style BPE


def _decoded(tok, piece: str) -> str:
    return tok.backend_tokenizer.decoder.decode([piece]) if tok.backend_tokenizer.decoder else piece


def corpus_words(tok, texts) -> Counter:
    """Pre-tokenized words of `texts` (as the BPE model sees them) with their counts."""
    bt = tok.backend_tokenizer
    words: Counter = Counter()
    for text in texts:
        if bt.normalizer is not None:
            text = bt.normalizer.normalize_str(text)
        if bt.pre_tokenizer is not None:
            words.update(w for w, _ in bt.pre_tokenizer.pre_tokenize_str(text))
        else:  # SentencePiece-style: words start at the "▁" marker
            words.update(w for w in re.split(r"(?=▁)", text) if w)
    return words


def bpe_segment(symbols: list[str], ranks: dict[tuple[str, str], int], applied: list[str] | None = None) -> list[str]:
    """BPE as the tokenizers library applies it: repeatedly merge the lowest-ranked adjacent pair.
    `applied`, when given, receives the token each applied merge makes, in order."""
    syms = list(symbols)
    while len(syms) > 1:
        rank, pair = min((ranks.get((a, b), _NEVER), (a, b)) for a, b in zip(syms, syms[1:]))
        if rank == _NEVER:
            break
        syms = bpe_apply(syms, pair)
        if applied is not None:
            applied.append(pair[0] + pair[1])
    return syms


def bpe_apply(syms: list[str], pair: tuple[str, str]) -> list[str]:
    """Merge every occurrence of `pair` in `syms`, left to right."""
    out, i = [], 0
    while i < len(syms):
        if i + 1 < len(syms) and (syms[i], syms[i + 1]) == pair:
            out.append(syms[i] + syms[i + 1])
            i += 2
        else:
            out.append(syms[i])
            i += 1
    return out


_NEVER = 1 << 62


class MergeLearner:
    """Greedy BPE merge learning on top of an existing segmentation (the standard incremental algorithm).

    `words` (word -> count) start segmented by the old model; each round merges the most frequent
    adjacent pair that `accept(a, b)` allows, in every word, and records it. Pairs refused once are
    never offered again.
    """

    def __init__(self, segmented: dict[tuple[str, ...], int]):
        self.syms = [list(s) for s in segmented]
        self.freq = list(segmented.values())
        self.count: Counter = Counter()
        self.where: dict[tuple[str, str], set[int]] = defaultdict(set)
        for w, syms in enumerate(self.syms):
            for p in zip(syms, syms[1:]):
                self.count[p] += self.freq[w]
                self.where[p].add(w)
        self.heap = [(-c, p) for p, c in self.count.items()]
        heapq.heapify(self.heap)

    def _merge_word(self, w: int, pair: tuple[str, str]) -> set[tuple[str, str]]:
        """Merge `pair` everywhere in word `w`; the pairs whose counts changed."""
        old = self.syms[w]
        for p in zip(old, old[1:]):
            self.count[p] -= self.freq[w]
        new = bpe_apply(old, pair)
        self.syms[w] = new
        for p in zip(new, new[1:]):
            self.count[p] += self.freq[w]
            self.where[p].add(w)
        return set(zip(old, old[1:])) | set(zip(new, new[1:]))

    def learn(self, min_count: int, accept, enough) -> list[tuple[str, str]]:
        """Merges in the order learned, until `enough()` or no pair occurs `min_count` times."""
        merges: list[tuple[str, str]] = []
        refused: set[tuple[str, str]] = set()
        while not enough() and self.heap:
            neg, pair = heapq.heappop(self.heap)
            if -neg != self.count.get(pair, 0) or pair in refused:
                continue  # a stale heap entry, or refused before
            if -neg < min_count:
                break
            if not accept(*pair):
                refused.add(pair)
                continue
            merges.append(pair)
            touched: set[tuple[str, str]] = set()
            for w in self.where.pop(pair, ()):
                touched |= self._merge_word(w, pair)
            for p in touched - {pair}:
                if self.count[p] > 0:
                    heapq.heappush(self.heap, (-self.count[p], p))
        return merges


def _ranks(merges: list) -> dict[tuple[str, str], int]:
    ranks: dict[tuple[str, str], int] = {}
    for i, m in enumerate(merges):
        ranks.setdefault(tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)), i)
    return ranks


def _target_words(tok, texts, script: str) -> Counter:
    """Old segmentations of the corpus words that hold a letter of `script`, with their counts."""
    model = tok.backend_tokenizer.model
    out: Counter = Counter()
    for word, n in corpus_words(tok, texts).items():
        if any(letter_script(ch) == script for ch in _decoded(tok, word)):
            out[tuple(t.value for t in model.tokenize(word))] += n
    return out


def extend(tok, texts, lang: str, n_new: int, min_count: int = 2, threshold: float = 0.5):
    """(new tokenizer, report): `tok` plus up to `n_new` tokens learned as BPE merges on top of its own
    segmentation of `texts`.

    A merge is kept only when its token decodes cleanly to text in `lang`'s script (share of letters >=
    `threshold`), starts no new word inside it, and is reachable: BPE on the token's own string, with
    every merge so far, yields exactly that token. New merges rank after all old ones, so text without
    a letter of the script (English) keeps exactly its old ids.
    """
    spec = _model_json(tok)
    if spec["model"]["type"] != "BPE":
        raise VocabError(f"scenario extend needs a BPE tokenizer, this one is {spec['model']['type']}; "
                         "use scenario bpe or unigram")
    script = get_language(lang).script
    words = _target_words(tok, texts, script)
    if not words:
        raise VocabError(f"corpus: no text in the {script} script of language {lang!r}")
    ranks, vocab = _ranks(spec["model"]["merges"]), spec["model"]["vocab"]
    added: list[str] = []
    why = Counter()

    to_bytes = byte_level_decoder(tok)

    def accept(a: str, b: str) -> bool:
        merged = a + b
        raw = bytes(to_bytes[c] for c in merged) if to_bytes else None
        ok = only_in_script(raw, script, threshold) if raw is not None else \
            script_share_of_letters(_decoded(tok, merged), script) >= threshold
        if any(m in merged[1:] for m in _MARKERS) or not ok:
            why["not the script"] += 1
            return False
        ranks[(a, b)] = len(ranks)
        if bpe_segment(list(merged), ranks) != [merged]:
            del ranks[(a, b)]
            why["unreachable"] += 1
            return False
        if merged not in vocab and merged not in added:
            added.append(merged)
        return True

    t0 = time.perf_counter()
    merges = MergeLearner(words).learn(min_count, accept, lambda: len(added) >= n_new)
    new_tok = with_merges(tok, merges, added)
    report = {"scenario": "extend", "lang": lang, "corpus_words": sum(words.values()), "distinct_words": len(words),
              "merges": len(merges), "new_tokens": len(added), "refused": dict(why),
              "vocab_before": len(tok), "vocab_after": len(new_tok), "seconds": round(time.perf_counter() - t0, 2)}
    return new_tok, report


def byte_level_decoder(tok) -> dict[str, int] | None:
    """Byte-level BPE (GPT-2 style): the map from a token's characters back to its bytes; None otherwise."""
    pre = _model_json(tok).get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre])
    if not any(step.get("type") == "ByteLevel" for step in steps):
        return None
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {b: chr(b) for b in visible}, 0
    for b in range(256):
        if b not in chars:
            chars[b], extra = chr(256 + extra), extra + 1
    return {c: b for b, c in chars.items()}


def only_in_script(raw: bytes, script: str, threshold: float) -> bool:
    """Whether bytes `raw` can only occur inside text of `script`: the whole characters in it are letters
    of the script (a share >= threshold of its letters; at least one), or it ends in part of a character
    whose every completion is in the script (a Hangul syllable is 3 bytes: its first two must be
    mergeable on the way to the whole). A token that starts inside a character is refused: its bytes
    end characters of other scripts too."""
    if not raw or 0x80 <= raw[0] < 0xC0:
        return False
    n = next((k for k in range(len(raw), max(len(raw) - 4, -1), -1) if _complete(raw[:k])), None)
    if n is None:
        return False
    text, tail = raw[:n].decode("utf-8"), raw[n:]
    letters = [letter_script(ch) for ch in text if ch.isalpha()]
    tail_ok = bool(tail) and _tail_in_script(tail, script)
    if tail and not tail_ok:
        return False
    share = sum(s == script for s in letters) / len(letters) if letters else 1.0
    return share >= threshold and (tail_ok or any(s == script for s in letters))


def _complete(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _tail_in_script(tail: bytes, script: str) -> bool:
    """A character's first bytes: are all code points they can start inside one range of `script`?"""
    from lingotune.languages import SCRIPT_RANGES

    need = 2 if tail[0] >= 0xC0 and tail[0] < 0xE0 else 3 if tail[0] < 0xF0 else 4
    if len(tail) >= need or tail[0] < 0xC0 or any(not 0x80 <= b < 0xC0 for b in tail[1:]):
        return False
    lo, hi = tail + b"\x80" * (need - len(tail)), tail + b"\xbf" * (need - len(tail))
    try:
        first, last = ord(lo.decode("utf-8")), ord(hi.decode("utf-8"))
    except UnicodeDecodeError:  # overlong or surrogate completions: not text any script writes
        return False
    return any(a <= first and last <= b for a, b in SCRIPT_RANGES[script])


def script_share_of_letters(text: str, script: str) -> float:
    """Share of `text`'s letters in `script`; 0 when it has none (a token of digits or marks only)."""
    letters = [letter_script(ch) for ch in text if ch.isalpha()]
    return sum(s == script for s in letters) / len(letters) if letters else 0.0


def with_merges(tok, merges: list[tuple[str, str]], new_tokens: list[str]):
    """A copy of `tok` with `merges` appended (lowest priority) and `new_tokens` given the next free ids.

    Everything else (pre-tokenizer, decoder, special and added tokens, chat template) is kept.
    """
    spec = _model_json(tok)
    model = spec["model"]
    as_lists = bool(model["merges"]) and isinstance(model["merges"][0], list)
    model["merges"] += [list(m) if as_lists else " ".join(m) for m in merges]
    next_id = 1 + max([*model["vocab"].values(), *(t["id"] for t in spec.get("added_tokens", []))])
    for i, token in enumerate(new_tokens):
        model["vocab"][token] = next_id + i
    return tokenizer_from_spec(tok, spec)


def tokenizer_from_spec(tok, spec: dict):
    """A copy of `tok` (chat template, special-token map, options) whose tokenizer.json is `spec`."""
    from transformers import AutoTokenizer

    from lingotune.models import prepare_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        (Path(tmp) / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        new = AutoTokenizer.from_pretrained(tmp)
    if tok.init_kwargs.get("lingotune_fallback_template"):
        new.init_kwargs["lingotune_fallback_template"] = True
    return prepare_tokenizer(new)


def check_extension(old_tok, new_tok, texts_unchanged: list[str], new_tokens: list[str]) -> dict:
    """What `extend` promises: `texts_unchanged` (English) encode to the same ids, and every new token
    is reachable (the new model segments its string into exactly that token)."""
    same = [old_tok(t, add_special_tokens=False)["input_ids"] == new_tok(t, add_special_tokens=False)["input_ids"]
            for t in texts_unchanged]
    model = new_tok.backend_tokenizer.model
    unreachable = [t for t in new_tokens if [x.value for x in model.tokenize(t)] != [t]]
    return {"lines": len(same), "lines_changed": same.count(False), "new_tokens": len(new_tokens),
            "unreachable": unreachable}


def chars_per_token(tok, texts: list[str]) -> float:
    """Characters per token over `texts` (no special tokens): higher means a cheaper language."""
    from lingotune.data.inspect import count_tokens

    n = count_tokens(tok, texts)
    return sum(len(t) for t in texts) / n if n else float("nan")


# ----------------------------------------------------------------------------- bpe, unigram: a new vocabulary


def byte_tokens() -> list[str]:
    """The 256 byte-fallback tokens of SentencePiece-style vocabularies, <0x00> .. <0xFF>."""
    return [f"<0x{b:02X}>" for b in range(256)]


def train_vocab(tok, texts: list[str], kind: Literal["bpe", "unigram"], size: int | None = None, min_count: int = 2):
    """(new tokenizer, report): a BPE or Unigram vocabulary of `size` tokens (default: `len(tok)`) trained on
    `texts` with HF `tokenizers`, replacing `tok`'s.

    The old normalizer, pre-tokenizer, decoder and post-processor are kept, so a byte-level model stays
    byte-level (all 256 byte symbols in the vocabulary: no text is unknown) and a SentencePiece-style one
    keeps its word-start marker "▁" (learned within words, split at the marker) and its byte fallback,
    with the 256 <0x..> tokens (else its unknown token). Special and added
    tokens keep their strings and, where the new size holds it, their old id; the others go last
    (`report["special_tokens_moved"]`). The chat template and special-token map are kept.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    spec = _model_json(tok)
    old = spec["model"]
    specials = _special_ids(tok)
    byte_level = byte_level_decoder(tok) is not None
    fallback = bool(old.get("byte_fallback")) and not byte_level
    size = len(tok) if size is None else size
    floor = len(specials) + (256 if byte_level or fallback else 0)
    if size < floor:
        symbols = f" + 256 {'byte-level symbols' if byte_level else 'byte tokens'}" if floor > len(specials) else ""
        raise VocabError(f"vocab.size: {size} is smaller than the {len(specials)} special tokens{symbols} the "
                         f"vocabulary must hold ({floor})")
    unk = None if byte_level else old.get("unk_token") or tok.unk_token
    affixes = {k: old[k] for k in ("continuing_subword_prefix", "end_of_word_suffix") if old.get(k)}
    wanted = size - (256 if fallback else 0)
    in_order = [t for t, _ in sorted(specials.items(), key=lambda x: x[1])]
    alphabet = pre_tokenizers.ByteLevel.alphabet() if byte_level else []
    if kind == "bpe":
        raw = Tokenizer(models.BPE(unk_token=unk, byte_fallback=fallback, **affixes))
        trainer = trainers.BpeTrainer(vocab_size=wanted, min_frequency=min_count, special_tokens=in_order,
                                      initial_alphabet=alphabet, show_progress=False, **affixes)
    else:
        raw = Tokenizer(models.Unigram())  # a byte-level piece's length counts bytes: 32 is about SentencePiece's
        trainer = trainers.UnigramTrainer(vocab_size=wanted, special_tokens=in_order, initial_alphabet=alphabet,
                                          unk_token=unk, show_progress=False, max_piece_length=32 if byte_level else 16)
    old_raw = tok.backend_tokenizer
    for part in ("normalizer", "pre_tokenizer", "decoder"):
        if getattr(old_raw, part) is not None:
            setattr(raw, part, getattr(old_raw, part))
    pre = spec.get("pre_tokenizer")
    if pre is None or pre["type"] == "Metaspace" and not pre.get("split", True):
        # SentencePiece style, a text is one piece: learn within words (split at "▁"); the tokenizer keeps the old
        # pre-tokenizer, and no learned token holds a "▁" past its start, so it segments the same way
        raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement=(pre or {}).get("replacement", "▁"), split=True,
                                                     prepend_scheme=(pre or {}).get("prepend_scheme", "never"))
    t0 = time.perf_counter()
    raw.train_from_iterator(texts, trainer)
    seconds = time.perf_counter() - t0
    model = json.loads(raw.to_str())["model"]
    if kind == "bpe":
        trained = [t for t, _ in sorted(model["vocab"].items(), key=lambda x: x[1])]
    else:
        trained = [piece for piece, _ in model["vocab"]]
    regular = [t for t in trained if t not in specials]
    if fallback:  # the byte tokens right after the special tokens, as SentencePiece places them
        model["byte_fallback"] = True
        regular = byte_tokens() + [t for t in regular if t not in set(byte_tokens())]
        if kind == "unigram":
            lowest = min((score for _, score in model["vocab"]), default=0.0)
            model["vocab"] += [[t, lowest - 1.0] for t in byte_tokens()]
    order = placed(regular, specials)
    new = tokenizer_from_spec(tok, spec_with_vocab(spec, model, order))
    moved = {t: [i, new.convert_tokens_to_ids(t)] for t, i in specials.items() if new.convert_tokens_to_ids(t) != i}
    return new, {"scenario": kind, "model": kind.upper() if kind == "bpe" else "Unigram",
                 "pre_tokenizer": "byte-level" if byte_level else "the original's" + (" (byte fallback)" if fallback else ""),
                 "corpus_texts": len(texts), "vocab_before": len(tok), "vocab_after": len(new),
                 "special_tokens": len(specials), "special_tokens_moved": moved, "seconds": round(seconds, 2)}


def placed(tokens: list[str], specials: dict[str, int]) -> list[str]:
    """A vocabulary in id order: each special token at its old id where the new size holds it, `tokens`
    in the free ids in their order, and the special tokens whose old id is past the end last."""
    order: list[str | None] = [None] * (len(tokens) + len(specials))
    late = []
    for t, i in sorted(specials.items(), key=lambda x: x[1]):
        if i < len(order) and order[i] is None:
            order[i] = t
        else:
            late.append(t)
    rest = iter(tokens + late)
    return [t if t is not None else next(rest) for t in order]


def spec_with_vocab(spec: dict, model: dict, order: list[str]) -> dict:
    """`spec` (a tokenizer.json) with `model` (BPE or Unigram) whose tokens take the ids of `order`; the
    added tokens and the post-processor's token ids follow their strings."""
    spec, model = copy.deepcopy(spec), copy.deepcopy(model)
    ids = {t: i for i, t in enumerate(order)}
    if model["type"] == "Unigram":
        scores = {piece: score for piece, score in model["vocab"]}
        unk = model["vocab"][model["unk_id"]][0] if model.get("unk_id") is not None else None
        model["vocab"] = [[t, scores.get(t, 0.0)] for t in order]
        model["unk_id"] = ids[unk] if unk is not None else None
    else:
        model["vocab"] = ids
    spec["model"] = model
    for added in spec.get("added_tokens") or []:
        added["id"] = ids[added["content"]]
    _remap_token_ids(spec.get("post_processor"), ids)
    return spec


def _remap_token_ids(node, ids: dict[str, int]) -> None:
    """Token ids inside a post-processor (TemplateProcessing's special tokens, Bert/Roberta's sep and cls)."""
    if isinstance(node, dict):
        if isinstance(node.get("tokens"), list) and "ids" in node:
            node["ids"] = [ids[t] for t in node["tokens"]]
        for key in ("sep", "cls"):
            if isinstance(node.get(key), list) and len(node[key]) == 2 and isinstance(node[key][0], str):
                node[key][1] = ids[node[key][0]]
        for value in node.values():
            _remap_token_ids(value, ids)
    elif isinstance(node, list):
        for value in node:
            _remap_token_ids(value, ids)


# ----------------------------------------------------------------------------- optimize: cut, then extend


def token_use(tok, texts: list[str], batch: int = 512) -> Counter:
    """How often each id occurs when `tok` encodes `texts` (no special tokens added)."""
    use: Counter = Counter()
    for i in range(0, len(texts), batch):
        for ids in tok(list(texts[i:i + batch]), add_special_tokens=False)["input_ids"]:
            use.update(ids)
    return use


def prune(tok, keep: int, use: Counter):
    """(a copy of `tok` cut to `keep` tokens, report). Kept: the special tokens, every base symbol (a
    token no merge makes), then tokens by use (ties and unused tokens in their original order), each
    with every token its BPE path makes on the way (so each kept token stays reachable, by the same
    merges). A merge survives when its two parts and its result do; text whose old tokens all survive
    segments exactly as before (into the same strings, at new ids: the kept tokens keep their order)."""
    spec = _model_json(tok)
    if spec["model"]["type"] != "BPE":
        raise VocabError(f"scenario optimize needs a BPE tokenizer, this one is {spec['model']['type']}; "
                         "use scenario bpe or unigram")
    model = spec["model"]
    vocab, merges = model["vocab"], model["merges"]
    pairs = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in merges]
    made = {a + b for a, b in pairs}
    specials = _special_ids(tok)
    kept = {t for t in vocab if t not in made} | set(specials)
    if keep > len(tok):
        raise VocabError(f"vocab.keep: {keep} is more than the vocabulary's {len(tok)} tokens")
    if keep < len(kept):
        raise VocabError(f"vocab.keep: {keep} is smaller than the {len(specials)} special tokens + "
                         f"{len(kept) - len(specials)} base symbols the vocabulary must keep ({len(kept)})")
    ranks = _ranks(merges)
    for t in sorted((t for t in vocab if t not in kept), key=lambda t: (-use[vocab[t]], vocab[t])):
        if len(kept) >= keep:
            break
        path: list[str] = []
        if t in kept or bpe_segment(list(t), ranks, path) != [t]:
            continue  # kept on another's path, or unreachable (no text ever uses it)
        need = {x for x in path if x not in kept}
        if len(kept) + len(need) <= keep:
            kept |= need
    model["merges"] = [m for m, (a, b) in zip(merges, pairs) if a in kept and b in kept and a + b in kept]
    regular = sorted((t for t in kept if t not in specials), key=lambda t: vocab[t])
    new = tokenizer_from_spec(tok, spec_with_vocab(spec, model, placed(regular, specials)))
    return new, {"kept": len(new), "dropped": len(tok) - len(new), "merges_before": len(merges),
                 "merges_kept": len(model["merges"]), "tokens_used": len(use)}


def optimize(tok, texts: list[str], lang: str, keep: int, n_new: int, english: list[str] = (), min_count: int = 2,
             threshold: float = 0.5):
    """(new tokenizer, report): `tok` cut to its `keep` most used tokens on `texts` + `english` (`prune`),
    then extended with up to `n_new` target-language tokens (`extend`). The report counts the `english`
    texts whose segmentation (token strings) changed; their ids change wherever a token was dropped below."""
    t0 = time.perf_counter()
    english = list(english)
    pruned, report = prune(tok, keep, token_use(tok, [*texts, *english]))
    if english:
        report["english_texts"] = len(english)
        report["english_texts_changed"] = sum(
            old != new for old, new in zip(token_strings(tok, english), token_strings(pruned, english)))
    new, extended = extend(pruned, texts, lang, n_new, min_count, threshold)
    report = {**extended, **report, "scenario": "optimize", "vocab_before": len(tok), "vocab_after": len(new),
              "seconds": round(time.perf_counter() - t0, 2)}
    return new, report


def token_strings(tok, texts: list[str]) -> list[list[str]]:
    """Each text's tokens as strings (compares segmentations across vocabularies whose ids differ)."""
    ids = [x for i in range(0, len(texts), 512) for x in tok(texts[i:i + 512], add_special_tokens=False)["input_ids"]]
    return [tok.convert_ids_to_tokens(x) for x in ids]


# ----------------------------------------------------------------------------- rows of the new vocabulary


@torch.no_grad()
def init_new_rows(model, old_tok, new_tok) -> dict:
    """Resize `model` to `new_tok` and set its rows from the old ones: every row of a token the old
    vocabulary lacks is the mean of the old rows that spell it (`piece_map`), separately for the input
    embeddings and an untied output head; a tied model's one matrix is set once and re-tied. Returns counts.

    Two cases:
    - an extension (every old token keeps its old id: `extend`, ChatML's tokens): the old rows keep their
      values (also an old token the old model itself segments into other pieces, as 260 of Gemma-3's
      do) and rows past the tokenizer (a model may hold more rows than tokens) are kept: the matrix
      never shrinks;
    - a replacement (`bpe`, `unigram`, `optimize`: old ids no longer mean the same tokens): the whole
      matrix is rebuilt, one row per new token (it may shrink); special tokens copy their old rows, a
      token the old vocabulary holds copies its row, and the config's bos/eos/pad ids move with their tokens.
    A special token new to the vocabulary, or a token the old tokenizer cannot spell, starts as the mean of
    all the old rows (counted). The rows not copied from one old row are the model's `lingotune_new_rows` (ids;
    what `method.lep.rows: new` trains), counted as `new_rows`.
    """
    from lingotune.models import is_tied

    pieces = piece_map(new_tok, old_tok)
    extension = extends(new_tok, old_tok)
    tied = is_tied(model) or model.get_output_embeddings() is None
    old = {slot: embedding_matrix(model, slot).detach() for slot in (("tied",) if tied else ("input", "head"))}
    n_rows = old["tied" if tied else "input"].shape[0]
    n_old = min(len(old_tok), n_rows)
    rows = max(len(new_tok), n_rows) if extension else len(new_tok)
    old_specials = _special_ids(old_tok)
    new_specials = {i for t, i in _special_ids(new_tok).items() if t not in old_specials}
    every = list(range(n_old))
    sources, counts = [], Counter()
    for i in range(rows):
        if extension and (i < n_old or i >= len(pieces)):
            src, kind = [i], "kept"
        elif i in new_specials:
            src, kind = every, "new_special_tokens"
        elif pieces[i]:
            src, kind = pieces[i], "set_to_mean"
        else:
            src, kind = every, "unspellable"
        sources.append(src)
        counts[kind] += 1
    if extension:  # only the rows new to the matrix are computed
        todo = [i for i in range(n_old, rows) if i < len(pieces)]
        model.resize_token_embeddings(rows, mean_resizing=False)
        for slot, matrix in old.items():
            weight = embedding_matrix(model, slot)
            weight[todo] = mean_of_pieces(matrix, [sources[i] for i in todo]).to(weight.dtype)
        model.config.get_text_config().vocab_size = rows
    else:
        set_rows(model, {slot: mean_of_pieces(m, sources) for slot, m in old.items()}, tied)
        remap_special_ids(model, old_tok, new_tok)
    model.lingotune_new_rows = [i for i, src in enumerate(sources) if len(src) != 1]  # method.lep.rows: new
    return {"rows": rows, "replaced": not extension, "kept": counts["kept"], "set_to_mean": counts["set_to_mean"],
            "new_special_tokens": counts["new_special_tokens"], "unspellable": counts["unspellable"], "tied": tied,
            "new_rows": len(model.lingotune_new_rows)}


def extends(new_tok, old_tok) -> bool:
    """Whether `new_tok` holds every token of `old_tok` at its old id (`extend`, ChatML's tokens), so that the
    old rows keep their meaning; a replacing vocabulary (`bpe`, `unigram`, `optimize`) does not."""
    new_vocab = new_tok.get_vocab()
    return all(new_vocab.get(t) == i for t, i in old_tok.get_vocab().items())


def mean_of_pieces(matrix: torch.Tensor, pieces: list[list[int]]) -> torch.Tensor:
    """C(matrix) in float64: row i is the mean of `matrix`'s rows `pieces[i]` (zero for an empty list)."""
    rows = [i for i, p in enumerate(pieces) for _ in p]
    cols = [j for p in pieces for j in p]
    values = [1.0 / len(p) for p in pieces for _ in p]
    c = torch.sparse_coo_tensor([rows, cols], values, (len(pieces), matrix.shape[0]), dtype=torch.float64,
                                check_invariants=True)
    return torch.sparse.mm(c.coalesce(), matrix.detach().cpu().double())


def embedding_matrix(model, slot: str) -> torch.Tensor:
    """The weight of one slot: "input" (also "tied") or "head"."""
    module = model.get_output_embeddings() if slot == "head" else model.get_input_embeddings()
    return module.weight


def set_rows(model, rows: dict[str, torch.Tensor], tied: bool) -> None:
    """Resize `model` to the new rows and write them, each in its module's dtype; a tied model stays tied.
    `rows`: {"tied": matrix} or {"input": matrix, "head": matrix}."""
    from lingotune.models import untie

    if not tied:
        untie(model)
    n = next(iter(rows.values())).shape[0]
    model.resize_token_embeddings(n, mean_resizing=False)  # every row is overwritten below
    with torch.no_grad():
        for slot, values in rows.items():
            weight = embedding_matrix(model, slot)
            weight.copy_(values.to(dtype=weight.dtype, device=weight.device))
    if tied:
        model.tie_weights()
    model.config.get_text_config().vocab_size = n


def remap_special_ids(model, old_tok, new_tok) -> None:
    """Token ids in the config and generation config (bos, eos, pad), moved to the new vocabulary."""
    vocab = new_tok.get_vocab()

    def new_id(old: int) -> int | None:
        return vocab.get(old_tok.convert_ids_to_tokens(old))

    configs = [model.config.get_text_config()] + ([model.generation_config] if model.generation_config else [])
    for cfg in configs:
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(cfg, name, None)
            if isinstance(value, int):
                setattr(cfg, name, new_id(value))
            elif isinstance(value, (list, tuple)):
                setattr(cfg, name, [i for i in map(new_id, value) if i is not None])


# ----------------------------------------------------------------------------- ChatML for base models

CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def with_chat_tokens(tok):
    """(a copy of `tok` with ChatML, report): `<|im_start|>` and `<|im_end|>` added as special tokens where
    it does not hold them as one token each, and ChatML's chat template, unless its own template already
    is ChatML (uses `<|im_start|>`). The caller resizes the model (`init_new_rows`: new rows start at the
    mean of the old rows), as for an extended vocabulary (paper appendix A.6)."""
    import copy

    new = copy.deepcopy(tok)
    vocab = tok.get_vocab()
    missing = [t for t in CHATML_TOKENS if tok(t, add_special_tokens=False)["input_ids"] != [vocab.get(t)]]
    if missing:
        new.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    own = not tok.init_kwargs.get("lingotune_fallback_template") and "<|im_start|>" in (tok.chat_template or "")
    if not own:
        new.chat_template = CHATML_TEMPLATE
        new.init_kwargs.pop("lingotune_fallback_template", None)
    return new, {"chat_tokens": "chatml", "added": missing, "template": "own" if own else "chatml"}
