"""Vocabulary adaptation (LEP, `../shared/papers/lep.txt`): new tokenizers and the rows of new tokens.

- `piece_map(new_tok, old_tok)`: for every id of the new vocabulary, the ids the *old* tokenizer
  uses for the same text. It drives the mean initialisation of new rows (`init_new_rows`) and
  propagation's Conversion map (`lingotune.propagate`).
"""

from __future__ import annotations

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


def same_bpe_family(new_tok, old_tok) -> bool:
    """Both are BPE models with the same pre-tokenizer (e.g. an `extend`ed vocabulary and its source):
    a new token's string is then segmented by the old model directly, bytes and all."""
    a, b = _model_json(new_tok), _model_json(old_tok)
    return a["model"]["type"] == b["model"]["type"] == "BPE" and a.get("pre_tokenizer") == b.get("pre_tokenizer")


def piece_map(new_tok, old_tok) -> list[list[int]]:
    """For each new id (0 .. len(new_tok)-1): the old ids that spell the same text.

    Special and added tokens map to the old token of the same content. In the same BPE family the
    old model segments the new token's string directly (exact bytes, also for tokens that are not
    whole characters); otherwise the token is decoded to text and encoded by the old tokenizer
    without special tokens. A token the old tokenizer cannot spell gets [] (callers decide).
    """
    specials_new, specials_old = _special_ids(new_tok), _special_ids(old_tok)
    by_id = {i: t for t, i in specials_new.items()}
    old_vocab = old_tok.get_vocab()
    direct = same_bpe_family(new_tok, old_tok)
    old_model = old_tok.backend_tokenizer.model

    @lru_cache(maxsize=None)
    def spell(token: str) -> tuple[int, ...]:
        if direct:
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


class VocabConfig(BaseModel):
    """The recipe's `vocab:` section: how the tokenizer is adapted before training (LEP step 1)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    scenario: Literal["none", "extend"] = Field(
        "none", description="none: keep the model's tokenizer; extend: add tokens learned as BPE merges on target-"
        "language text on top of the original vocabulary (English ids unchanged). New rows start as the mean of the "
        "old rows that spell them.")
    add: int = Field(5000, ge=1, description="extend: new tokens to learn (fewer when the corpus runs out of pairs).")
    min_count: int = Field(2, ge=1, description="extend: a pair must occur at least this often in the corpus.")
    threshold: float = Field(0.5, gt=0.0, le=1.0, description="extend: minimum share of a new token's letters in the "
                             "language's script.")
    corpus: list[str] = Field(default_factory=list, description="Text files the vocabulary is learned on (.txt one "
                              "text a line, or JSON/JSONL with a 'text' field), relative to the data root. Empty: the "
                              "run's `text` set (data sources used as text).")


def adapt(cfg: VocabConfig, tok, lang: str, texts: list[str]):
    """(adapted tokenizer, report), or (None, None) when `cfg.scenario` is none."""
    if cfg.scenario == "none":
        return None, None
    if not texts:
        raise VocabError("vocab: no corpus (give vocab.corpus, or a data source used as text)")
    return extend(tok, texts, lang, cfg.add, cfg.min_count, cfg.threshold)


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


def bpe_segment(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """BPE as the tokenizers library applies it: repeatedly merge the lowest-ranked adjacent pair."""
    syms = list(symbols)
    while len(syms) > 1:
        rank, pair = min((ranks.get((a, b), _NEVER), (a, b)) for a, b in zip(syms, syms[1:]))
        if rank == _NEVER:
            break
        syms = bpe_apply(syms, pair)
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
    from transformers import AutoTokenizer

    from lingotune.models import prepare_tokenizer

    spec = _model_json(tok)
    model = spec["model"]
    as_lists = bool(model["merges"]) and isinstance(model["merges"][0], list)
    model["merges"] += [list(m) if as_lists else " ".join(m) for m in merges]
    next_id = 1 + max([*model["vocab"].values(), *(t["id"] for t in spec.get("added_tokens", []))])
    for i, token in enumerate(new_tokens):
        model["vocab"][token] = next_id + i
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        (Path(tmp) / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        new = AutoTokenizer.from_pretrained(tmp)
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


# ----------------------------------------------------------------------------- rows of the new vocabulary


@torch.no_grad()
def init_new_rows(model, old_tok, new_tok) -> dict:
    """Resize `model` to `new_tok` and set every row whose token the old vocabulary does not hold as
    one id to the mean of the old rows that spell it (`piece_map`), separately for the input
    embeddings and an untied output head; a tied model's one matrix is set once. Returns counts.

    The old ids' rows keep their values (`extend` and `with_chat_tokens` keep every old id; an old token
    the old model itself segments into other pieces, as 260 of Gemma-3's do, is not re-initialised).
    A special token new to the vocabulary (ChatML's, `with_chat_tokens`) starts as the mean of all the
    old tokens' rows. Any other token the old tokenizer cannot spell keeps transformers' initialisation
    (counted). The matrix never shrinks (a model may hold more rows than its tokenizer has tokens).
    """
    pieces = piece_map(new_tok, old_tok)
    old_specials = _special_ids(old_tok)
    new_specials = sorted(i for t, i in _special_ids(new_tok).items() if t not in old_specials)
    inp = model.get_input_embeddings().weight.detach().clone()
    head = model.get_output_embeddings()
    tied = head is None or head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    old_head = None if tied else head.weight.detach().clone()
    rows = max(len(new_tok), inp.shape[0])
    model.resize_token_embeddings(rows, mean_resizing=False)
    n_old = min(len(old_tok), inp.shape[0])
    todo = [(i, p) for i, p in enumerate(pieces) if i >= n_old and p and p != [i]]
    targets = [(model.get_input_embeddings().weight, inp)] + ([] if tied else [(model.get_output_embeddings().weight, old_head)])
    for weight, old in targets:
        for i, p in todo:
            weight[i] = old[p].mean(0).to(weight.dtype)
        for i in new_specials:
            weight[i] = old[:n_old].mean(0).to(weight.dtype)
    model.config.vocab_size = rows
    return {"rows": len(pieces), "set_to_mean": len(todo), "new_special_tokens": len(new_specials),
            "unspellable": sum(1 for i, p in enumerate(pieces) if not p and i not in new_specials), "tied": tied}


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
