"""LoRA alone: adapters on the frozen model, one stage, at `lr`."""

from __future__ import annotations

from lingotune.methods.base import Stage, add_lora, check_lora_targets, freeze_all, lora_params, save_adapter


def stages(recipe) -> list[Stage]:
    m, t = recipe.method, recipe.train

    def setup(model):
        freeze_all(model)
        model = add_lora(model, m.lora)
        return model, [{"name": "lora", "params": lora_params(model), "lr": t.lr}]

    def save(model, out):
        return {"adapter": save_adapter(model, out)}

    return [Stage("train", m.single.data, m.single.steps, setup, save, {"trains": "LoRA"})]


def check(recipe, model) -> None:
    """Settings that can only be checked against the model: the LoRA target modules."""
    check_lora_targets(model, recipe.method.lora)
