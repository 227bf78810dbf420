"""Embeddings plus LoRA in one stage (the paper's "2 stages combined" ablation, Table 5).

LoRA trains at `lr`, the input embeddings at `embedding_lr`, together, on the same data.
"""

from __future__ import annotations

from lingotune.methods.base import Stage, check_lora_targets, lora_groups, save_adapter_and_embeddings


def stages(recipe) -> list[Stage]:
    m, t, tie = recipe.method, recipe.train, recipe.model.tie

    def setup(model):
        return lora_groups(model, m.lora, t.lr, (tie, t.embedding_lr))

    return [Stage("train", m.single.data, m.single.steps, setup, save_adapter_and_embeddings,
                  {"trains": "LoRA + embeddings", "tie": tie})]


def check(recipe, model) -> None:
    """Settings that can only be checked against the model: the LoRA target modules."""
    check_lora_targets(model, recipe.method.lora)
