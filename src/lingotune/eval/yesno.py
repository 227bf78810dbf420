"""Yes/no tasks as in DParT: a zero-shot (or k-shot) chat prompt, the answer read from its first word.

Generation (`mode` generate): greedy, left-padded batches, `max_new_tokens` new tokens; the
answer is `lingotune.languages.parse_yes_no(output, lang)`: 'yes', 'no' or None.
accuracy counts None as wrong; rate is the share of answers that start with yes or no; f1 is
macro F1 over yes/no.

Log-likelihood (`mode` loglik): after the same prompt, log P(yes word) vs log P(no word), where
each side is the log-sum-exp over the canonical word's spellings (lower-case and capitalized,
e.g. "да"/"Да"), a multi-token spelling scored by the sum of its tokens' log-probs. Reported as
accuracy_ll and f1_ll (every example gets an answer, so there is no rate). In mode both,
`generate_limits` can cap the generation to the first N examples (n_generated): a whole validation set by
log-likelihood, a sample of it for the answer rate. The generated examples' prompts run once for both
(`inference.generate_and_score`), the others once for the log-likelihoods.

When a task has several prompts (TERRa), one is drawn per example with
`random.Random(f"{seed}:{example id}")`: equal odds, stable under limit/sample.
"""

from __future__ import annotations

import math
import random

from lingotune import inference
from lingotune.eval.metrics import accuracy, classification_cis, macro_f1, rate
from lingotune.eval.tasks import TaskSpec, draw_demos, render, suffix, template_fields
from lingotune.languages import get_language, parse_yes_no


def answer_word(answer: str, lang: str) -> str:
    """The canonical word for 'yes'/'no' in `lang`, capitalized as a reply starts ("Да", "Нет")."""
    language = get_language(lang)
    word = language.yes[0] if answer == "yes" else language.no[0]
    return word[:1].upper() + word[1:]


def prompt_index(spec: TaskSpec, row: dict, seed: int) -> int:
    if len(spec.prompts) == 1:
        return 0
    return random.Random(f"{seed}:{row['id']}").randrange(len(spec.prompts))


def user_prompt(spec: TaskSpec, row: dict, lang: str, seed: int) -> str:
    return render(spec.prompts[prompt_index(spec, row, seed)], template_fields(row, lang))


def build_messages(spec: TaskSpec, row: dict, lang: str, seed: int = 0, demos: list[dict] = ()) -> list[dict]:
    """Chat messages for one example: optional system prompt, k demonstration turns, the question."""
    msgs = []
    if spec.system:
        msgs.append({"role": "system", "content": render(spec.system, template_fields(row, lang))})
    for d in demos:
        msgs.append({"role": "user", "content": user_prompt(spec, d, lang, seed)})
        msgs.append({"role": "assistant", "content": answer_word(d["label"], lang)})
    msgs.append({"role": "user", "content": user_prompt(spec, row, lang, seed)})
    return msgs


def prompt_text(tok, spec: TaskSpec, row: dict, lang: str, seed: int, train: list[dict] = (), k: int = 0) -> str:
    """The chat prompt of one example at k shots (its demonstrations drawn for it), ending where the reply starts."""
    demos = draw_demos(list(train), k, seed, row["id"])
    return inference.chat_text(tok, build_messages(spec, row, lang, seed, demos))


def answer_spellings(lang: str) -> list[tuple[str, str]]:
    """(answer, spelling) of every continuation the log-likelihood mode scores: the yes word and the no word of
    `lang`, each as written and capitalized (one spelling where the two are the same)."""
    language = get_language(lang)
    return [(a, w) for a, word in (("yes", language.yes[0]), ("no", language.no[0]))
            for w in dict.fromkeys([word, word[:1].upper() + word[1:]])]


def _logsumexp(xs: list[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def run_yesno(model, tok, spec: TaskSpec, rows: list[dict], lang: str, cfg, train: list[dict] = (),
              k: int = 0) -> tuple[list[dict], dict, dict]:
    """Evaluate one yes/no task at one k; returns (per-example records, metrics, cis)."""
    sfx = suffix(k)
    texts = [prompt_text(tok, spec, row, lang, cfg.seed, train, k) for row in rows]
    records = [{"id": row["id"], "shots": k, "prompt": text, "label": row["label"]} for row, text in zip(rows, texts)]
    ids = [inference.encode(tok, t) for t in texts]
    golds = [r["label"] for r in records]
    metrics, cis = {}, {}
    classes = ["no", "yes"]
    variants = answer_spellings(lang)
    spellings = [inference.encode(tok, w) for _, w in variants]
    scores = []
    if cfg.mode in ("generate", "both"):
        n = cfg.generate_limits.get(spec.name, len(ids)) if cfg.mode == "both" else len(ids)
        if cfg.mode == "both" and not isinstance(model, inference.ApiModel):  # one pass over these prompts for both
            outs, scores = inference.generate_and_score(model, tok, ids[:n], spellings, cfg.max_new_tokens,
                                                        cfg.batch_size, desc=f"{spec.name} {k}-shot + ll")
        else:
            outs = inference.generate(model, tok, ids[:n], cfg.max_new_tokens, cfg.batch_size,
                                      desc=f"{spec.name} {k}-shot")
        preds, gen_golds = [parse_yes_no(o, lang) for o in outs], golds[: len(outs)]
        for r, o, p in zip(records, outs, preds):
            r.update(output=o, parsed=p, correct=p == r["label"])
        metrics.update({f"accuracy{sfx}": accuracy(preds, gen_golds), f"rate{sfx}": rate(preds),
                        f"f1{sfx}": macro_f1(preds, gen_golds, classes)})
        if len(outs) < len(ids):
            metrics[f"n_generated{sfx}"] = len(outs)
        cis.update(classification_cis(preds, gen_golds, cfg.n_bootstrap, cfg.seed, suffix=sfx, classes=classes))
    if cfg.mode in ("loglik", "both"):
        if len(scores) < len(ids):  # the examples not generated (all of them in mode loglik)
            scores += inference.shared_continuation_logprobs(model, tok, ids[len(scores):], spellings, cfg.batch_size,
                                                             desc=f"{spec.name} {k}-shot ll")
        per = [{a: [s for (a2, _), s in zip(variants, row) if a2 == a] for a in ("yes", "no")} for row in scores]
        preds = []
        for r, p in zip(records, per):
            ly, ln = _logsumexp(p["yes"]), _logsumexp(p["no"])
            pred = "yes" if ly > ln else "no"
            preds.append(pred)
            r.update(logp_yes=round(ly, 4), logp_no=round(ln, 4), parsed_ll=pred, correct_ll=pred == r["label"])
        metrics.update({f"accuracy_ll{sfx}": accuracy(preds, golds), f"f1_ll{sfx}": macro_f1(preds, golds, classes)})
        cis.update(classification_cis(preds, golds, cfg.n_bootstrap, cfg.seed, suffix=f"_ll{sfx}",
                                      with_rate=False, classes=classes))
    return records, metrics, cis
