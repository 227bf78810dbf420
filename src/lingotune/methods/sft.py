"""Supervised fine-tuning (the paper's SFT, `../shared/papers/sft-dpo-orpo-korean.txt`).

One stage, "sft", on the target-language instructions (`method.pref.sft`: the stage2 set by default),
next-token loss on the answer (or every token, per `train.loss_on`). What trains is `method.pref.weights`:
LoRA adapters at `train.lr`, or every weight at `train.full_lr`. dpo's first stage is this one.
"""

from __future__ import annotations

from lingotune.methods.base import Stage, check_tuned, tuned_groups, tuned_save


def sft_stage(recipe) -> Stage:
    p = recipe.method.pref

    def setup(model):
        return tuned_groups(model, recipe)

    trains = "LoRA" if p.weights == "lora" else "all weights"
    return Stage("sft", p.sft.data, p.sft.steps, setup, tuned_save(recipe), {"trains": trains, "loss": "causal_lm"})


def stages(recipe) -> list[Stage]:
    return [sft_stage(recipe)]


check = check_tuned
