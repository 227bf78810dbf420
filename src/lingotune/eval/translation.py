"""Translation with DParT's one-shot prompts (paper, appendix A.6), scored by chrF++, BLEU and COMET.

The prompt is written in the non-English language of the pair and carries one example
(Einstein); its text lives in the languages' entries (`lingotune.languages`: mt_to_en, mt_from_en,
mt_example_label, mt_example). The Russian->English one is the paper's text verbatim; the Arabic->English
one is the paper's Arabic text (its extraction is garbled, so it takes the Russian prompt's
"### source### target" layout); the opposite directions and Korean are built by analogy.
It is sent as one user message followed by "### " and the source sentence; the first
non-empty line of the greedy continuation (leading "#" marks removed) is the translation.
A new-token budget of 2 x source tokens + 16 (capped by `translation_max_new_tokens`).

COMET (unbabel-comet, not a dependency) runs only when a local checkpoint is given
(`comet_model` or $LINGOTUNE_COMET); otherwise the result says comet: null and why.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from lingotune import inference
from lingotune.eval.metrics import bleu_metric, bootstrap_ci, chrf_metric, score_from_stats, sentence_stats
from lingotune.eval.tasks import TaskSpec, render
from lingotune.languages import get_language

DEFAULT_USER = "{instruction}\n### {source}"


def instruction(src: str, tgt: str) -> str:
    """The A.6 one-shot instruction for src -> tgt (instruction, example source, example target).

    One side must be English; the instruction and the word for "Example:" come from the other side's
    `Language` entry (mt_to_en / mt_from_en, mt_example_label), the examples from both (mt_example).
    """
    if (src == "en") == (tgt == "en"):
        raise ValueError(f"no translation prompt for {src}->{tgt}: exactly one side must be English (en)")
    pair = f"the {src}->{tgt} translation prompt"
    other = get_language(tgt if src == "en" else src)
    text = other.require("mt_from_en" if src == "en" else "mt_to_en", ValueError, pair)
    example = other.require("mt_example_label", ValueError, pair)
    src_example, tgt_example = (get_language(c).require("mt_example", ValueError, pair) for c in (src, tgt))
    return f"{text} {example} ### {src_example}### {tgt_example}"


def build_messages(spec: TaskSpec, row: dict) -> list[dict]:
    fields = {**row, "instruction": instruction(spec.src_lang, spec.tgt_lang)}
    msgs = [{"role": "system", "content": render(spec.system, fields)}] if spec.system else []
    msgs.append({"role": "user", "content": render(spec.prompts[0] if spec.prompts else DEFAULT_USER, fields)})
    return msgs


def clean(output: str) -> str:
    """The first non-empty line, without leading '#' marks or a trailing '###'."""
    for line in output.splitlines():
        line = line.strip().lstrip("#").strip()
        if line:
            return line.split("###")[0].strip()
    return ""


def comet_checkpoint(explicit: str | None) -> tuple[str | None, str | None]:
    """(checkpoint path, None) or (None, why COMET is skipped)."""
    path = explicit or os.environ.get("LINGOTUNE_COMET")
    if not path:
        return None, "no COMET checkpoint given (set comet_model or LINGOTUNE_COMET to a local .ckpt)"
    if not Path(path).expanduser().exists():
        return None, f"COMET checkpoint {path!r} not found"
    try:
        import comet  # noqa: F401
    except ImportError:
        return None, "unbabel-comet is not installed (pip install 'lingotune[comet]')"
    return str(Path(path).expanduser()), None


def comet_scores(ckpt: str, srcs: list[str], hyps: list[str], refs: list[str], batch_size: int) -> list[float]:
    from comet import load_from_checkpoint

    model = load_from_checkpoint(ckpt)
    data = [{"src": s, "mt": h, "ref": r} for s, h, r in zip(srcs, hyps, refs)]
    out = model.predict(data, batch_size=batch_size, gpus=1 if torch.cuda.is_available() else 0, progress_bar=False)
    return [100.0 * float(x) for x in out.scores]


def run_translation(model, tok, spec: TaskSpec, rows: list[dict], cfg) -> tuple[list[dict], dict, dict]:
    msgs = [build_messages(spec, r) for r in rows]
    budgets = [min(cfg.translation_max_new_tokens, 2 * len(inference.encode(tok, r["source"])) + 16) for r in rows]
    outs = inference.generate_chat(model, tok, msgs, budgets, cfg.batch_size, stop="line", desc=spec.name)
    hyps = [clean(o) for o in outs]
    refs = [r["target"] for r in rows]
    records = [{"id": r["id"], "prompt": m[-1]["content"], "source": r["source"], "output": o, "hypothesis": h,
                "reference": r["target"]} for r, m, o, h in zip(rows, msgs, outs, hyps)]
    metrics, cis = {}, {}
    for name, metric in (("chrf++", chrf_metric()), ("bleu", bleu_metric())):
        stats = sentence_stats(metric, hyps, refs)
        metrics[name] = score_from_stats(metric, stats)
        cis[name] = bootstrap_ci(len(hyps), lambda idx: score_from_stats(metric, stats[idx]), cfg.n_bootstrap, cfg.seed)
    ckpt, why = comet_checkpoint(cfg.comet_model)
    metrics["comet"] = None
    if ckpt:
        seg = comet_scores(ckpt, [r["source"] for r in rows], hyps, refs, cfg.batch_size)
        arr = np.array(seg)
        metrics["comet"] = float(arr.mean())
        cis["comet"] = bootstrap_ci(len(arr), lambda idx: float(arr[idx].mean()), cfg.n_bootstrap, cfg.seed)
        for rec, s in zip(records, seg):
            rec["comet"] = round(s, 4)
    else:
        metrics["comet_skipped"] = why
    return records, metrics, cis
