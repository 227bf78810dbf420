"""The knowledge-transfer probe and the alignment diagnostic: the same questions in English and in the target
language.

Transfer (kind `transfer`). Each item is asked twice, in English ("... Answer in a few words.") and in the
target language (the same request in it), greedy, through the chat template. The English answer gets the
task's `max_new_tokens`, the target one that times the tokenizer's token ratio of the target questions to
the English ones (`target_budget`): a budget of equal content, not of equal tokens. An answer is correct when it
names one of the item's accepted answers in that language (`names_answer`). The headline is

    transfer = P(correct in the target language | the *untouched* model is correct in English)

over the items the untouched model knows in English (`known`; the untouched model's own result carries their
ids, and `evaluate(..., reference=)` hands them to every later evaluation, so each model is scored on the same
items). Without a reference (the untouched model itself) the model's own English-correct items are used.
Also reported: accuracy (target language, every item), accuracy_en, lang_share (mean share of the target
answers' letters in the target script; an answer with no letters, like "23", counts as 1), n_known, and for a
model scored against the untouched one, transfer_gain: the paired difference, item by item over the known
items, of this model's and the untouched model's correctness in the target language (its bootstrap interval
is the test of "stage 1 moved transfer").

Transfer proper. transfer_gain also moves when training teaches the target language's answers of these kinds
whatever the model knew in English (the starter data trains other countries' currencies, languages and cities).
So the same paired gain is reported on the items the untouched model does *not* know in English (gain_other),
and transfer_excess = transfer_gain - gain_other, with a bootstrap interval that resamples each group within
itself: the part of the gain that needs the English knowledge. Its bias runs against transfer when the known
items already score higher in the target language (less room to rise); read it beside both gains.

By log-likelihood (a task with `score: loglik`, e.g. `transfer_facts_ll`; `run_transfer_loglik`): nothing is
generated; each item's options (its answer first, then wrong values of its kind, the same in both languages:
`lingotune.data.starter.transfer_items`) are scored as the answer to the same prompts, and an item is correct in
a language when its answer has the highest log-probability per character (lm-evaluation-harness's acc_norm:
options differ in length). It asks whether a model that cannot yet *say* a fact in the target language
*recognises* it there; transfer, transfer_gain, accuracy and accuracy_en are as above (chance: 1 / options).

Matching (`names_answer`): text is case-folded, "ё" -> "е", Arabic diacritics and tatweel dropped, every
Unicode decimal digit made ASCII, and split into word tokens. An accepted answer of several words must appear
as consecutive tokens. A word matches a token: digits exactly; Latin and Cyrillic by prefix (a word of 5+
letters without its last two, of 4 letters without its last one, shorter ones whole: "иена" ~ "иены");
Hangul and Arabic by containment (particles and articles attach: "브라질에", "البرازيل" ~ "برازيل" after
dropping the article and one-letter prefixes). For facts (`echo_free` items) the question's own tokens are
removed from the answer first, so an answer that repeats the question ("The official language of Russia
is ...") is credited only for what it adds. An XQuAD answer (its span is in the passage) that repeats
`COPY_RUN` consecutive tokens of the passage is not credited.

Alignment (kind `alignment`). For each item, the hidden states of the bare target-language question and of its
English twin (no chat template), mean-pooled over tokens, at every layer (embeddings = layer 0). Per layer:
- cos_dist: mean over items of 1 - cos(target, English twin);
- l2_dist: mean of ||t - e|| / ((||t|| + ||e||) / 2) (the normalised L2 distance);
- the same two for mismatched pairs (each target question against the English question of the next item),
  and the margins mismatched - matched: a model that only pulls every vector together lowers both distances,
  one that aligns twins widens the margin.
The task's numbers are the means over layers; `layers` holds the per-layer values; cos_dist_change (against
the untouched model) the paired per-item change of the cosine distance, mean over layers.
"""

from __future__ import annotations

import math
import re
import unicodedata

import torch

from lingotune import inference
from lingotune.eval.metrics import bootstrap_diff_ci, bootstrap_mean_ci
from lingotune.eval.multiple_choice import best_per_char
from lingotune.languages import get_language, letter_script, script_share

_ARABIC_MARKS = re.compile("[\u064b-\u065f\u0670\u0640]")
COPY_RUN = 8  # an XQuAD answer that repeats this many consecutive passage tokens is not credited
_ARABIC_PREFIXES = ("وال", "بال", "فال", "كال", "لل", "ال", "و", "ف", "ب", "ل")


def _normalise(text: str) -> list[str]:
    text = _ARABIC_MARKS.sub("", text.casefold().replace("ё", "е"))
    text = "".join(str(unicodedata.decimal(c)) if c.isdecimal() else c for c in text)
    return re.findall(r"\w+", text)


def _strip_arabic(word: str) -> str:
    for p in _ARABIC_PREFIXES:
        if word.startswith(p) and len(word) - len(p) >= 3:
            return word[len(p):]
    return word


def _word_matches(word: str, token: str) -> bool:
    if word.isdigit() or token.isdigit():
        return word == token
    script = letter_script(word[0])
    if script == "Arabic":
        return _strip_arabic(word) in _strip_arabic(token)
    if script == "Hangul":
        return word in token
    stem = word if len(word) <= 3 else word[:len(word) - (1 if len(word) == 4 else 2)]
    return token.startswith(stem)


def names_answer(output: str, answers: list[str], question: str = "", echo_free: bool = False) -> bool:
    """Whether `output` names one of `answers` (see the module doc); with `echo_free`, the tokens of
    `question` are removed from the output first."""
    tokens = _normalise(output)
    if echo_free:
        asked = set(_normalise(question))
        tokens = [t for t in tokens if t not in asked]
    for answer in answers:
        words = _normalise(answer)
        if words and any(all(_word_matches(w, t) for w, t in zip(words, tokens[i:i + len(words)]))
                         for i in range(len(tokens) - len(words) + 1)):
            return True
    return False


def copies(output: str, passage: str | None, n: int = COPY_RUN) -> bool:
    """Whether `output` repeats `n` consecutive word tokens of `passage` (an answer read off a copied passage)."""
    if not passage:
        return False
    src, out = _normalise(passage), _normalise(output)
    grams = {tuple(src[i:i + n]) for i in range(len(src) - n + 1)}
    return any(tuple(out[i:i + n]) in grams for i in range(len(out) - n + 1))


def _prompts(tok, rows: list[dict], lang: str, field: str) -> list[list[int]]:
    brief = get_language(lang).require("answer_briefly", ValueError, "the transfer probe")
    return [inference.encode(tok, inference.chat_text(tok, [{"role": "user", "content": f"{r[field]} {brief}"}]))
            for r in rows]


def target_budget(tok, rows: list[dict], budget_en: int) -> int:
    """New tokens for the target-language answers: the English budget times how many more tokens the
    tokenizer spends on the target questions than on their English twins (at least 1x), so that both answers
    get room for the same content (SmolLM2 spends about 3.5x as many tokens on Russian as on English)."""
    n_en = sum(len(inference.encode(tok, r["question_en"])) for r in rows)
    n_tgt = sum(len(inference.encode(tok, r["question"])) for r in rows)
    return math.ceil(budget_en * max(1.0, n_tgt / max(n_en, 1)))


def run_transfer(model, tok, spec, rows: list[dict], lang: str, cfg, reference: dict | None = None
                 ) -> tuple[list[dict], dict, dict]:
    """Ask every item in English and in `lang`; (per-example records, metrics, cis). `reference`: the untouched
    model's result of this task: its `known` ids (what it answers correctly in English) and `correct_ids` (in
    `lang`); None for the untouched model itself."""
    budget_en = spec.max_new_tokens or cfg.max_new_tokens
    budget = target_budget(tok, rows, budget_en)
    outs_en = inference.generate(model, tok, _prompts(tok, rows, "en", "question_en"), budget_en, cfg.batch_size,
                                 desc=f"{spec.name} en")
    outs = inference.generate(model, tok, _prompts(tok, rows, lang, "question"), budget, cfg.batch_size,
                              desc=f"{spec.name} {lang}")
    script = get_language(lang).script
    records = []
    for r, o_en, o in zip(rows, outs_en, outs):
        echo = bool(r.get("echo_free"))
        copied_en, copied = copies(o_en, r.get("context_en")), copies(o, r.get("context"))
        records.append({"id": r["id"], "kind": r.get("kind"), "question_en": r["question_en"], "question": r["question"],
                        "output_en": o_en, "output": o,
                        "correct_en": not copied_en and names_answer(o_en, r["answers_en"], r["question_en"], echo),
                        "correct": not copied and names_answer(o, r["answers"], r["question"], echo),
                        "share": round(script_share(o, script), 4), "copied": copied or copied_en})
    per = {"lang_share": [100.0 * r["share"] for r in records]}
    records, metrics, cis = _scored(records, reference, cfg, per)
    metrics["max_new_tokens"] = {"en": budget_en, lang: budget}
    return records, metrics, cis


def run_transfer_loglik(model, tok, spec, rows: list[dict], lang: str, cfg, reference: dict | None = None
                        ) -> tuple[list[dict], dict, dict]:
    """The probe scored by log-likelihood (task `score: loglik`): each item's `options_en` and `options` (its answer
    first, then wrong values of its kind) are scored as the answer to its question, in English and in `lang`
    (the same prompts as `run_transfer`); an item is correct in a language when its answer has the highest
    log-probability per character there. Chance is 1 / the number of options. Also reported as `run_transfer`:
    transfer on the untouched model's `known` items, transfer_gain, accuracy, accuracy_en (no lang_share:
    nothing is generated)."""
    missing = next((r["id"] for r in rows if not r.get("options") or not r.get("options_en")), None)
    if missing is not None:
        raise ValueError(f"task {spec.name}: item {missing} has no options to score (score: loglik needs "
                         "format starter_transfer)")
    records = [{"id": r["id"], "kind": r.get("kind"), "options_en": r["options_en"], "options": r["options"]}
               for r in rows]
    for side, field, opts in (("_en", "question_en", "options_en"), ("", "question", "options")):
        side_lang = "en" if side else lang
        per = inference.shared_continuation_logprobs(
            model, tok, _prompts(tok, rows, side_lang, field),
            [[inference.encode(tok, o) for o in r[opts]] for r in rows], cfg.batch_size, desc=f"{spec.name} {side_lang}")
        for rec, scores in zip(records, per):
            rec[f"logprobs{side}"] = [round(x, 4) for x in scores]
            rec[f"correct{side}"] = best_per_char(scores, rec[opts]) == 0
    records, metrics, cis = _scored(records, reference, cfg, {})
    metrics["chance"] = 100.0 * sum(1 / len(r["options"]) for r in rows) / max(len(rows), 1)
    return records, metrics, cis


def _scored(records: list[dict], reference: dict | None, cfg, per: dict) -> tuple[list[dict], dict, dict]:
    """Records with `correct_en` and `correct` -> (records with `transferred` on the known items, metrics, cis):
    transfer, accuracy, accuracy_en, `per`'s own per-item lists (lang_share) and, against `reference` (the
    untouched model's result), transfer_gain, gain_other and transfer_excess (the module's docstring)."""
    known = (reference or {}).get("known")
    own = [r["id"] for r in records if r["correct_en"]]
    known_ids = set(map(str, own if known is None else known))
    for rec in records:
        if str(rec["id"]) in known_ids:
            rec["transferred"] = rec["correct"]
    on_known = [100.0 * rec["transferred"] for rec in records if "transferred" in rec]
    per = {"accuracy": [100.0 * r["correct"] for r in records], "accuracy_en": [100.0 * r["correct_en"] for r in records],
           **per, "transfer": on_known}
    if known is not None and "correct_ids" in reference:  # paired, item by item, against the untouched model
        before = set(map(str, reference["correct_ids"]))
        gains = {rec["id"]: 100.0 * (rec["correct"] - (str(rec["id"]) in before)) for rec in records}
        per["transfer_gain"] = [gains[rec["id"]] for rec in records if "transferred" in rec]
        per["gain_other"] = [gains[rec["id"]] for rec in records if "transferred" not in rec]
    metrics = {k: (sum(v) / len(v) if v else float("nan")) for k, v in per.items()}
    cis = {k: bootstrap_mean_ci(v, cfg.n_bootstrap, cfg.seed) for k, v in per.items()}
    if "gain_other" in per:  # transfer proper: the gain on the known items beyond the gain on the others
        metrics["transfer_excess"] = metrics["transfer_gain"] - metrics["gain_other"]
        cis["transfer_excess"] = bootstrap_diff_ci(per["transfer_gain"], per["gain_other"], cfg.n_bootstrap, cfg.seed)
    metrics.update(n_known=len(on_known), known=own, correct_ids=[r["id"] for r in records if r["correct"]],
                   known_from="reference" if known is not None else "self")
    return records, metrics, cis


# ----------------------------------------------------------------------------------------- alignment

def distances(t: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per layer, the mean over items of the cosine distance and of the normalised L2 distance between
    `t` and `e` (both [items, layers, hidden])."""
    t, e = t.double(), e.double()
    cos = 1.0 - torch.nn.functional.cosine_similarity(t, e, dim=-1)
    l2 = (t - e).norm(dim=-1) / ((t.norm(dim=-1) + e.norm(dim=-1)) / 2).clamp_min(1e-12)
    return cos.mean(0), l2.mean(0)


def run_alignment(model, tok, spec, rows: list[dict], lang: str, cfg, reference: dict | None = None
                  ) -> tuple[list[dict], dict, dict]:
    """Distances between the hidden states of each target question and its English twin (see the module doc).
    With the untouched model's result as `reference`, also cos_dist_change: the paired change of each item's
    cosine distance (mean over layers), with its bootstrap interval."""
    if len(rows) < 2:
        raise ValueError(f"task {spec.name}: alignment needs at least 2 items (mismatched pairs), got {len(rows)}")
    t = inference.hidden_means(model, tok, [inference.encode(tok, r["question"]) for r in rows], cfg.batch_size,
                               desc=f"{spec.name} {lang}")
    e = inference.hidden_means(model, tok, [inference.encode(tok, r["question_en"]) for r in rows], cfg.batch_size,
                               desc=f"{spec.name} en")
    cos, l2 = distances(t, e)
    cos_x, l2_x = distances(t, e.roll(1, dims=0))
    layers = {"cos_dist": cos.tolist(), "l2_dist": l2.tolist(), "cos_margin": (cos_x - cos).tolist(),
              "l2_margin": (l2_x - l2).tolist()}
    metrics = {k: float(sum(v) / len(v)) for k, v in layers.items()}
    per_item = 1.0 - torch.nn.functional.cosine_similarity(t.double(), e.double(), dim=-1).mean(1)
    records = [{"id": r["id"], "question_en": r["question_en"], "question": r["question"], "cos_dist": round(float(d), 6)}
               for r, d in zip(rows, per_item)]
    cis = {"cos_dist": bootstrap_mean_ci(per_item.tolist(), cfg.n_bootstrap, cfg.seed)}
    before = dict(zip(map(str, (reference or {}).get("item_ids", [])), (reference or {}).get("item_cos", [])))
    change = [float(d) - before[str(r["id"])] for r, d in zip(rows, per_item) if str(r["id"]) in before]
    if change:
        metrics["cos_dist_change"] = sum(change) / len(change)
        cis["cos_dist_change"] = bootstrap_mean_ci(change, cfg.n_bootstrap, cfg.seed)
    metrics["layers"] = {k: [round(x, 6) for x in v] for k, v in layers.items()}
    metrics["item_ids"] = [r["id"] for r in rows]
    metrics["item_cos"] = [round(float(d), 6) for d in per_item]
    return records, metrics, cis
