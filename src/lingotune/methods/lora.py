"""LoRA alone: adapters on the frozen model, one stage, at `lr`."""

from __future__ import annotations

from lingotune.methods.base import Stage, check_lora_targets, lora_groups, save_adapter


def stages(recipe) -> list[Stage]:
    m, t = recipe.method, recipe.train

    def setup(model):
        return lora_groups(model, m.lora, t.lr)

    def save(model, out, tokenizer=None):
        return {"adapter": save_adapter(model, out)}

    return [Stage("train", m.single.data, m.single.steps, setup, save, {"trains": "LoRA"})]


def check(recipe, model) -> None:
    """Settings that can only be checked against the model: the LoRA target modules."""
    check_lora_targets(model, recipe.method.lora)
