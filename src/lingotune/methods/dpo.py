"""DPO (Direct Preference Optimization) on preference pairs, after SFT as in the paper, or alone.

Stages: "sft" (`methods.sft`, when `method.pref.dpo_after_sft`), then "dpo" on the `prefs` set with
`losses.DPO` (beta = `method.pref.beta`). What trains is `method.pref.weights` (LoRA or every weight).

The reference is the dpo stage's starting weights, so after SFT it is the SFT result:
- LoRA: the SFT adapters are merged into the weights when the dpo stage starts, fresh adapters are
  added on top, and the reference is the model with those adapters disabled. The dpo stage's adapter
  therefore applies to the base model with the sft adapter merged (load the base, apply and merge
  sft/adapter, then apply dpo/adapter).
- Full weights: a frozen copy of the model taken when the stage starts (one more model in memory, until
  the stage is saved).
"""

from __future__ import annotations

from lingotune.losses import DPO
from lingotune.methods import sft
from lingotune.methods.base import Stage, check_tuned, frozen_copy, merge_adapters, tuned_groups, tuned_save


def dpo_stage(recipe) -> Stage:
    p = recipe.method.pref
    loss = DPO(p.beta)

    def setup(model):
        model, groups = tuned_groups(merge_adapters(model), recipe)
        loss.reference = None if p.weights == "lora" else frozen_copy(model)
        return model, groups

    def save(model, out, tokenizer=None):
        loss.reference = None  # the frozen copy is not needed past training
        return tuned_save(recipe)(model, out, tokenizer)

    trains = "LoRA" if p.weights == "lora" else "all weights"
    return Stage("dpo", p.dpo.data, p.dpo.steps, setup, save, {"trains": trains, "loss": "dpo"}, loss=loss)


def stages(recipe) -> list[Stage]:
    return ([sft.sft_stage(recipe)] if recipe.method.pref.dpo_after_sft else []) + [dpo_stage(recipe)]


check = check_tuned
