"""Training methods. Each module says which weights train, on which data, with what learning rate.

A method is a list of `Stage`s; the one training loop (lingotune.train) runs them in order.
"""

from __future__ import annotations

from lingotune.methods import combined, dpart, dpo, full, lep, lora, orpo, sft
from lingotune.methods.base import Stage

METHODS = {"dpart": dpart, "lora": lora, "full": full, "combined": combined, "lep": lep, "sft": sft, "dpo": dpo,
           "orpo": orpo}


def stages(name: str, recipe) -> list[Stage]:
    """The stages of method `name` under `recipe`."""
    if name not in METHODS:
        raise ValueError(f"method {name!r}: unknown; known: {', '.join(METHODS)}")
    return METHODS[name].stages(recipe)


def check(name: str, recipe, model) -> None:
    """ValueError naming the recipe field when method `name` cannot train `model` as configured."""
    hook = getattr(METHODS[name], "check", None)
    if hook:
        hook(recipe, model)


__all__ = ["METHODS", "Stage", "check", "stages"]
