"""The training benchmark configures lingotune like its peer: a recipe drift here would make the
published ratios compare different things."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_train", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("pack, fast, fp32", [(True, True, False), (False, False, True)])
def test_bench_recipe_matches_the_peer_settings(pack, fast, fp32):
    bench = _bench()
    spec = dict(model="bundled", batch_size=8, seq_len=256, fp32=fp32, pack=pack, fast=fast, grad_ckpt=False)
    r = bench.bench_recipe(spec)
    t = r.train
    assert (t.batch_size, t.max_len, t.grad_accum, t.warmup_steps) == (8, 256, 1, 0)
    assert t.embedding_lr == bench.LR[1] and t.lr == bench.LR[2]
    assert (t.pack, t.fast, t.precision) == (pack, fast, "fp32" if fp32 else "auto")
    assert t.max_grad_norm == 1.0 and t.weight_decay == 0.0  # the Trainer's defaults
    assert r.method.lora.r == 8 and r.method.lora.alpha == 16 and r.method.lora.dropout == 0.0
    assert r.method.lora.target_modules == bench.LINEAR
    assert t.loss_on == "answer"
