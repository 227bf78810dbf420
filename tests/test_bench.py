"""The training benchmark configures lingotune like its peer: a recipe drift here would make the
published ratios compare different things. And the grids' per-cell table reads what each cell recorded."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest


def _script(name: str):
    """A script of benchmarks/ as a module."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _bench():
    return _script("bench_train")


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


def test_a_lingotune_variant_changes_only_its_overrides():
    bench = _bench()
    spec = dict(model="bundled", batch_size=8, seq_len=256, fp32=False, pack=True, fast=True, grad_ckpt=False)
    plain = bench.bench_recipe(dict(spec, setup="lingotune"))
    variant = bench.bench_recipe(dict(spec, setup="lingotune[train.frozen_bf16=false;train.pack=false]"))
    assert plain.train.frozen_bf16 and plain.train.pack
    assert not variant.train.frozen_bf16 and not variant.train.pack
    assert variant.model_copy(update={"train": plain.train}) == plain


def test_step_flops_of_a_tiny_config_by_hand():
    bench = _bench()
    shape = bench.model_shape({"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
                               "num_key_value_heads": 1, "head_dim": 4, "intermediate_size": 16, "vocab_size": 10})
    # linears per token: q 8x8, k 8x4, v 8x4, o 8x8, gate 8x16, up 8x16, down 16x8 = 576 weights
    # examples of 3 and 2 tokens: 5 tokens, 6 + 3 causal query-key pairs, 2 label positions
    # forward 2*576*5 + 4*2*4*9 (attention) + 2*8*10*2 (head) = 5760 + 288 + 320
    # activation backward: linears and head as the forward, attention twice: 5760 + 576 + 320
    one = bench.step_flops(shape, [3, 2], 2, stage=1)
    assert one == {"forward": 6368, "activation_backward": 6656, "weight_grads": 0, "total": 13024}
    # stage 2, LoRA r=2: 2 * (16 + 12 + 12 + 16 + 24 + 24 + 24) = 256 weights; forward, activation and weight
    # gradients: 3 * 2 * 256 per token
    two = bench.step_flops(shape, [3, 2], 2, stage=2, lora_r=2)
    assert two["weight_grads"] == 6 * 256 * 5 and two["total"] == 13024 + 7680


def test_sliding_window_attention_pairs():
    bench = _bench()
    assert bench.attended(5, None) == 15 and bench.attended(5, 8) == 15
    assert bench.attended(5, 2) == 1 + 2 + 2 + 2 + 2
    shape = bench.model_shape({"hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
                               "intermediate_size": 16, "vocab_size": 10, "sliding_window": 2,
                               "layer_types": ["sliding_attention", "full_attention"]})
    assert shape["windows"] == [2, None] and shape["head_dim"] == 4 and shape["kv_heads"] == 2
    full = dict(shape, windows=[None, None])
    diff = bench.step_flops(full, [5], 0, 1)["forward"] - bench.step_flops(shape, [5], 0, 1)["forward"]
    assert diff == 4 * 2 * 4 * (15 - 9)


def test_synthetic_items_are_seeded_and_split_prompt_from_answer():
    bench = _bench()
    a = bench.synthetic_items(50, 64, 100, seed=3)
    assert a == bench.synthetic_items(50, 64, 100, seed=3) and a != bench.synthetic_items(50, 64, 100, seed=4)
    for it in a:
        ids, labels = it["input_ids"], it["labels"]
        assert 8 <= len(ids) <= 64 and len(labels) == len(ids) and all(3 <= x < 100 for x in ids)
        k = labels.count(-100)
        assert 1 <= k < len(ids) and labels[:k] == [-100] * k and labels[k:] == ids[k:]
    assert len({len(it["input_ids"]) for it in a}) > 10  # lengths vary


def test_batch_stats_counts_real_tokens_padded_and_flattened():
    import torch

    bench = _bench()
    padded = {"input_ids": torch.zeros(2, 4, dtype=torch.long),
              "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]),
              "labels": torch.tensor([[-100, 5, 6, 7], [-100, 8, -100, -100]])}
    assert bench.batch_stats(padded) == (6, [4, 2], 4)
    flat = {"input_ids": torch.zeros(1, 6, dtype=torch.long), "position_ids": torch.tensor([[0, 1, 2, 3, 0, 1]]),
            "labels": torch.tensor([[-100, 5, 6, 7, -100, 8]])}
    assert bench.batch_stats(flat) == (6, [4, 2], 4)
    assert bench.label_positions([-100, 5, 6, 7]) == 3 and bench.label_positions([5, -100]) == 0


def test_random_gemma_shape_matches_the_bundled_gguf():
    import json

    from lingotune.models import cache_dir

    configs = sorted((cache_dir() / "models").glob("gemma3-270m-*/config.json"))
    if not configs:
        pytest.skip("the bundled Gemma-3-270M was never materialized here")
    real = json.loads(configs[-1].read_text())
    fields = _bench().random_config("gemma3-270m")
    for k, v in fields.items():
        if k in real:
            assert real[k] == pytest.approx(v) if isinstance(v, float) else real[k] == v, k
    assert _bench().model_shape(fields) == _bench().model_shape(real)


def test_tiny_random_models_build_and_count():
    bench = _bench()
    for name in bench.RANDOM_MODELS:
        spec = {"model": f"random:{name}", "tiny": True, "attn": None, "seed": 0, "device": "cpu"}
        model, tok = bench.load_bench_model(spec)
        shape = bench.model_shape(model.config)
        assert shape["hidden"] == 64 and tok.pad_token_id == 0
        linear = sum(m.weight.numel() for n, m in model.named_modules()
                     if n.split(".")[-1] in bench.LINEAR)
        assert linear == shape["layers"] * sum(a * b for a, b in bench.linear_shapes(shape))


def _cell(grid: Path, name: str, res: dict, losses: list[tuple[str, int, float]] = ()) -> None:
    (grid / "data" / name).mkdir(parents=True)
    (grid / "data" / name / "results.json").write_text(json.dumps(res))
    if losses:
        (grid / "data" / name / "metrics.jsonl").write_text("\n".join(
            json.dumps({"stage": s, "step": i, "loss": v}) for s, i, v in losses))


def test_grid_table_reads_an_arabic_grid_with_its_own_tasks(tmp_path):
    table = _script("grid_table")
    probe = {"transfer": 25.0, "n_known": 8, "accuracy_en": 40.0, "ci": {"accuracy_en": [30.0, 50.0]}}
    _cell(tmp_path, "untouched", {"complete": True, "method": "untouched", "language": "ar", "evals": {
        "untouched": {"idat_dev": {"accuracy_ll": 51.25, "ci": {"accuracy_ll": [48.0, 54.5]}},
                      "flores_ar_bpc": {"bits_per_char": 2.5}, "transfer_facts": probe}}})
    _cell(tmp_path, "lora-s1", {"complete": True, "method": "lora", "seed": 1, "language": "ar", "cell_seconds": 1234.4,
                                "evals": {"lora": {"idat_dev": {"accuracy_ll": 60.0}, "danetqa": {"skipped": "absent"}}}},
          [("train", 1, 9.0)] + [("train", i, 1.0) for i in range(1, 22)] + [("train", 22, 0.0)])  # step 1 resumed
    _cell(tmp_path, "dpart-s0", {"complete": False, "method": "dpart", "language": "ar", "evals": {}})  # cut: left out
    head, body = table.rows(tmp_path)
    assert head == ["model", "IDAT ll", "bits/char", "probe EN", "transfer", "loss per 20 steps", "cell s"]
    assert body == [["lora, seed 1", "60.0", "–", "–", "–", "train: 1.00, 0.50", "1,234"],
                    ["untouched", "51.2 [48.0, 54.5]", "2.500", "40.0 [30.0, 50.0]", "2 of 8", "–", ""]]
    _cell(tmp_path, "lora-s2", {"complete": True, "method": "lora", "seed": 2, "language": "ru", "evals": {}})
    with pytest.raises(SystemExit, match="more than one language"):
        table.rows(tmp_path)
