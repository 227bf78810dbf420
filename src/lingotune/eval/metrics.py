"""Scores and their bootstrap confidence intervals.

Accuracy counts an unparsed answer as wrong; rate is the share of answers that start with
yes or no (the DParT paper's two numbers). Macro F1 is averaged over the gold classes, an
unparsed answer counting as a miss for its gold class. chrF++ is sacrebleu's CHRF(word_order=2)
and BLEU sacrebleu's BLEU, both corpus-level. Copy tasks score each reply against its source
(`length_ratio`, `lcs_match`; see lingotune.eval.copy).

Confidence intervals: percentile bootstrap over examples (seeded). For chrF++ and BLEU each
resample recomputes the *corpus* score from per-sentence n-gram statistics (what sacrebleu's
own paired bootstrap does); for bits per character the ratio of resampled sums.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np


def accuracy(preds: Sequence[Any], golds: Sequence[Any]) -> float:
    if not golds:
        return float("nan")
    return 100.0 * sum(p is not None and p == g for p, g in zip(preds, golds)) / len(golds)


def rate(preds: Sequence[Any]) -> float:
    """Share (%) of answers that could be read as yes or no."""
    if not preds:
        return float("nan")
    return 100.0 * sum(p is not None for p in preds) / len(preds)


def macro_f1(preds: Sequence[Any], golds: Sequence[Any], classes: Sequence[Any] | None = None) -> float:
    """Macro F1 (%) over `classes` (default: the gold classes); None predictions are misses."""
    classes = sorted(set(golds), key=str) if classes is None else list(classes)
    if not classes:
        return float("nan")
    f1s = []
    for c in classes:
        tp = sum(p == c and g == c for p, g in zip(preds, golds))
        fp = sum(p == c and g != c for p, g in zip(preds, golds))
        fn = sum(p != c and g == c for p, g in zip(preds, golds))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return 100.0 * sum(f1s) / len(f1s)


def length_ratio(source: str, output: str) -> float:
    """Copy tasks' `len`: min(output/source, source/output) in characters; 0.0 when either is empty."""
    if not source or not output:
        return 0.0
    return min(len(output) / len(source), len(source) / len(output))


def lcs_length(a: str, b: str) -> int:
    """Length of the longest common (not necessarily contiguous) subsequence of two strings.

    Bit-parallel (Hyyro 2004): bit i of `v` is 0 where a[i] is matched so far; one pass over b
    with a few big-integer operations per character, so paragraphs score in milliseconds.
    """
    masks: dict[str, int] = {}
    for i, ch in enumerate(a):
        masks[ch] = masks.get(ch, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for ch in b:
        u = v & masks.get(ch, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def lcs_match(source: str, output: str, percent: int = 99) -> int:
    """Copy tasks' `lcs`: 1 when LCS(source, output) >= percent% of max(len(source), len(output)), else 0.

    Dividing by the longer side fails a truncated copy (all its characters are in the source) and a
    padded one (the whole source plus chatter) alike; integer arithmetic keeps exactly 99% a pass.
    """
    if not source or not output:
        return 0
    longest = max(len(source), len(output))
    return int(100 * lcs_length(source, output) >= percent * longest)


def chrf_metric():
    from sacrebleu.metrics import CHRF

    return CHRF(word_order=2)


def bleu_metric():
    from sacrebleu.metrics import BLEU

    return BLEU()


def sentence_stats(metric, hyps: Sequence[str], refs: Sequence[str]) -> np.ndarray:
    """Per-sentence sufficient statistics of a sacrebleu metric (rows sum to corpus statistics)."""
    return np.array(metric._extract_corpus_statistics(list(hyps), [list(refs)]), dtype=np.float64)


def score_from_stats(metric, stats: np.ndarray) -> float:
    summed = [int(round(x)) for x in stats.sum(axis=0)]
    return float(metric._compute_score_from_stats(summed).score)


def bootstrap_ci(n: int, stat: Callable[[np.ndarray], float], n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> list[float] | None:
    """Percentile bootstrap interval [lo, hi] of `stat(indices)` over resamples of n examples."""
    if n_boot <= 0 or n < 2:
        return None
    rng = np.random.default_rng(seed)
    return _percentile_ci([stat(rng.integers(0, n, n)) for _ in range(n_boot)], alpha)


def _percentile_ci(values, alpha: float) -> list[float] | None:
    vals = np.asarray(values, dtype=np.float64)
    vals = vals[~np.isnan(vals)]
    if vals.size == 0:
        return None
    lo, hi = np.percentile(vals, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return [round(float(lo), 4), round(float(hi), 4)]


def bootstrap_mean_ci(values: Sequence[float], n_boot: int = 1000, seed: int = 0) -> list[float] | None:
    """Bootstrap CI of the mean of per-example values (accuracy from 0/100 scores, rate, ...)."""
    arr = np.asarray(values, dtype=np.float64)
    return bootstrap_ci(len(arr), lambda idx: float(arr[idx].mean()), n_boot, seed)


def bootstrap_diff_ci(a: Sequence[float], b: Sequence[float], n_boot: int = 1000, seed: int = 0,
                      alpha: float = 0.05) -> list[float] | None:
    """Percentile bootstrap interval of mean(a) - mean(b) for two disjoint groups of examples, each resampled
    within itself (a stratified bootstrap: the groups keep their sizes)."""
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if n_boot <= 0 or xa.size < 2 or xb.size < 2:
        return None
    rng = np.random.default_rng(seed)
    return _percentile_ci([xa[rng.integers(0, xa.size, xa.size)].mean() - xb[rng.integers(0, xb.size, xb.size)].mean()
                           for _ in range(n_boot)], alpha)


def classification_cis(preds: list, golds: list, n_boot: int, seed: int, suffix: str = "",
                       with_rate: bool = True, classes: Sequence[Any] | None = None) -> dict[str, list[float] | None]:
    """CIs for accuracy, rate and macro F1 of one set of predictions."""
    correct = np.array([100.0 * (p is not None and p == g) for p, g in zip(preds, golds)])
    ci = {f"accuracy{suffix}": bootstrap_mean_ci(correct, n_boot, seed)}
    if with_rate:
        ci[f"rate{suffix}"] = bootstrap_mean_ci([100.0 * (p is not None) for p in preds], n_boot, seed)
    cls = sorted(set(golds), key=str) if classes is None else classes
    ci[f"f1{suffix}"] = bootstrap_ci(
        len(golds), lambda idx: macro_f1([preds[i] for i in idx], [golds[i] for i in idx], cls), n_boot, seed)
    return ci


def bits_per_char(nll_nats: float, n_chars: int) -> float:
    return nll_nats / math.log(2) / n_chars if n_chars else float("nan")
