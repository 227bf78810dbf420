"""Embeddings plus LoRA in one stage (the paper's "2 stages combined" ablation, Table 5).

LoRA trains at `lr`, the input embeddings at `embedding_lr`, together, on the same data.
"""

from __future__ import annotations

from lingotune.methods.base import (
    Stage, add_lora, check_lora_targets, freeze_all, lora_params, prepare_embeddings, save_adapter, save_embeddings,
)


def stages(recipe) -> list[Stage]:
    m, t = recipe.method, recipe.train
    tie = recipe.model.tie

    def setup(model):
        freeze_all(model)
        model = add_lora(model, m.lora)
        w = prepare_embeddings(model.get_base_model(), tie)
        return model, [
            {"name": "lora", "params": lora_params(model), "lr": t.lr},
            {"name": "embeddings", "params": [w], "lr": t.embedding_lr},
        ]

    def save(model, out):
        return {"adapter": save_adapter(model, out), "embeddings": save_embeddings(model, out)}

    return [Stage("train", m.single.data, m.single.steps, setup, save, {"trains": "LoRA + embeddings", "tie": tie})]


def check(recipe, model) -> None:
    """Settings that can only be checked against the model: the LoRA target modules."""
    check_lora_targets(model, recipe.method.lora)
