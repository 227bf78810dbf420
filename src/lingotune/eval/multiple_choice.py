"""Multiple-choice tasks scored by log-likelihood, 0-shot or k-shot.

Demonstrations (`lingotune.eval.tasks.draw_demos`) come before the question as plain text blocks.
Multiple choice (KoBEST COPA, HellaSwag; as lm-evaluation-harness does): plain text, no chat
template; the context is the task's prompt, each option's continuation is scored by the sum of
its token log-probabilities (`pred`) and by that sum divided by its length in characters
(`pred_norm`, reported as accuracy_norm/f1_norm); the highest wins.
"""

from __future__ import annotations

from lingotune import inference
from lingotune.eval.metrics import accuracy, classification_cis, macro_f1
from lingotune.eval.tasks import TaskSpec, draw_demos, render, suffix, template_fields


def mc_context(spec: TaskSpec, row: dict, lang: str) -> str:
    return render(spec.prompts[0], template_fields(row, lang))


def mc_choices(spec: TaskSpec, row: dict, lang: str) -> list[str]:
    fields = template_fields(row, lang)
    return [render(c, fields) for c in spec.choices]


def mc_example(spec: TaskSpec, row: dict, lang: str, seed: int, train: list[dict] = (), k: int = 0) -> tuple[str, list[str]]:
    """(context, options) of one example at k shots: its demonstrations (each its context and gold option, then a
    blank line) before its own context; the options are the continuations scored."""
    demos = draw_demos(list(train), k, seed, row["id"])
    prefix = "".join(mc_context(spec, d, lang) + mc_choices(spec, d, lang)[d["label"]] + "\n\n" for d in demos)
    return prefix + mc_context(spec, row, lang), mc_choices(spec, row, lang)


def best_per_char(logprobs: list[float], options: list[str]) -> int:
    """The option with the highest log-probability per character of its text (acc_norm's choice)."""
    norm = [x / max(len(o), 1) for x, o in zip(logprobs, options)]
    return max(range(len(norm)), key=norm.__getitem__)


def context_ids(tok, context: str) -> list[int]:
    """The context's token ids, after BOS where the tokenizer adds one (plain text, no chat template)."""
    ids = inference.encode(tok, context)
    return [tok.bos_token_id] + ids if tok.bos_token_id is not None and getattr(tok, "add_bos_token", False) else ids


def run_multiple_choice(model, tok, spec: TaskSpec, rows: list[dict], lang: str, cfg, train: list[dict] = (),
                        k: int = 0) -> tuple[list[dict], dict, dict]:
    """Score each option by log-likelihood; returns (per-example records, metrics, cis)."""
    sfx = suffix(k)
    contexts, options, records = [], [], []
    for row in rows:
        context, choices = mc_example(spec, row, lang, cfg.seed, train, k)
        contexts.append(context_ids(tok, context))
        options.append([inference.encode(tok, c) for c in choices])
        records.append({"id": row["id"], "shots": k, "prompt": context, "choices": choices, "label": row["label"]})
    per = inference.shared_continuation_logprobs(model, tok, contexts, options, cfg.batch_size,
                                                 desc=f"{spec.name} {k}-shot")
    for rec, s in zip(records, per):
        rec["logprobs"] = [round(x, 4) for x in s]
        rec["pred"] = max(range(len(s)), key=s.__getitem__)
        rec["pred_norm"] = best_per_char(s, rec["choices"])
        rec["correct"] = rec["pred"] == rec["label"]
    golds = [r["label"] for r in records]
    classes = list(range(len(spec.choices)))
    metrics, cis = {}, {}
    for tag, key in (("", "pred"), ("_norm", "pred_norm")):
        preds = [r[key] for r in records]
        metrics[f"accuracy{tag}{sfx}"] = accuracy(preds, golds)
        metrics[f"f1{tag}{sfx}"] = macro_f1(preds, golds, classes)
        cis.update(classification_cis(preds, golds, cfg.n_bootstrap, cfg.seed, suffix=f"{tag}{sfx}",
                                      with_rate=False, classes=classes))
    return records, metrics, cis
