"""Metric functions on hand-made cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sacrebleu.metrics import CHRF

from lingotune.eval.metrics import (
    accuracy, bits_per_char, bootstrap_ci, bootstrap_mean_ci, bleu_metric, chrf_metric, macro_f1, rate,
    score_from_stats, sentence_stats,
)


def test_accuracy_and_rate_count_unparsed_answers():
    preds = ["yes", None, "no", "yes"]
    golds = ["yes", "no", "no", "no"]
    assert accuracy(preds, golds) == 50.0  # the unparsed answer is wrong
    assert rate(preds) == 75.0  # 3 of 4 start with yes or no
    assert accuracy([None, None], ["yes", "no"]) == 0.0
    assert rate([None, None]) == 0.0


def test_macro_f1_known_value():
    preds = ["yes", "yes", "no", None]
    golds = ["yes", "no", "no", "yes"]
    # yes: tp 1, fp 1, fn 1 -> 0.5; no: tp 1, fp 0, fn 1 -> 2/3
    assert macro_f1(preds, golds, ["no", "yes"]) == pytest.approx(100 * (0.5 + 2 / 3) / 2)
    assert macro_f1(golds, golds) == 100.0
    # a constant predictor gets F1 0 on the class it never predicts
    assert macro_f1(["yes"] * 4, ["yes", "yes", "no", "no"]) == pytest.approx(100 * (0 + 2 / 3) / 2)


def corpus_chrf(hyps, refs):
    """chrF++ of a corpus the way translation tasks compute it (from per-sentence statistics)."""
    m = chrf_metric()
    return score_from_stats(m, sentence_stats(m, hyps, refs))


def corpus_bleu(hyps, refs):
    m = bleu_metric()
    return score_from_stats(m, sentence_stats(m, hyps, refs))


def test_chrf_identical_is_100_and_disjoint_is_0():
    refs = ["the cat sat on the mat", "привет мир"]
    assert corpus_chrf(refs, refs) == pytest.approx(100.0)
    assert corpus_chrf(["xyz"], ["abc"]) == pytest.approx(0.0)
    assert corpus_bleu(refs, refs) == pytest.approx(100.0)


def test_chrf_plus_plus_is_sacrebleu_chrf_word_order_2():
    hyps = ["The cat is on the mat.", "Hello world", "a quick brown dog"]
    refs = ["The cat sat on the mat.", "Hello, world!", "the quick brown fox"]
    expected = CHRF(word_order=2).corpus_score(hyps, [refs]).score
    assert corpus_chrf(hyps, refs) == pytest.approx(expected)
    assert 0 < expected < 100
    # chrF ignores spaces; chrF++ also counts word 1- and 2-grams, so glued words cost only chrF++
    hyp, ref = ["thecat saton the mat"], ["the cat sat on the mat"]
    assert corpus_chrf(hyp, ref) < CHRF().corpus_score(hyp, [ref]).score
    # the per-sentence statistics used by the bootstrap sum back to the corpus score
    m = chrf_metric()
    assert score_from_stats(m, sentence_stats(m, hyps, refs)) == pytest.approx(expected)


def test_bootstrap_ci_contains_estimate_and_narrows_with_n():
    rng = np.random.default_rng(1)
    small = (rng.random(40) < 0.7) * 100.0
    large = (rng.random(4000) < 0.7) * 100.0
    lo_s, hi_s = bootstrap_mean_ci(small, n_boot=500, seed=0)
    lo_l, hi_l = bootstrap_mean_ci(large, n_boot=500, seed=0)
    assert lo_s <= small.mean() <= hi_s
    assert lo_l <= large.mean() <= hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 3
    assert bootstrap_mean_ci(small, n_boot=500, seed=0) == [lo_s, hi_s]  # seeded
    assert bootstrap_ci(1, lambda idx: 1.0) is None and bootstrap_mean_ci(small, n_boot=0) is None


def test_bits_per_char_formula():
    # 10 characters, each costing ln 4 nats -> exactly 2 bits per character
    assert bits_per_char(10 * math.log(4), 10) == pytest.approx(2.0)
