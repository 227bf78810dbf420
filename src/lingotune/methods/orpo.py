"""ORPO (Odds Ratio Preference Optimization) on preference pairs: no reference model, no SFT stage.

One stage, "orpo", on the `prefs` set with `losses.ORPO` (lambda = `method.pref.orpo_lambda`; its NLL
term covers the chosen answer, or every token of the chosen conversation with `train.loss_on: all`).
What trains is `method.pref.weights` (LoRA or every weight).

With `method.pref.after_stage1`, DParT's stage 1 (`methods.dpart.stage1`: the input embeddings alone,
row-sparse, on the bilingual pairs) comes first and ORPO takes the place of stage 2: the stage-1
embeddings stay frozen, or keep training at `embedding_lr` beside the adapters, per
`method.stage2_embeddings`, and the orpo stage saves them with its adapter.
"""

from __future__ import annotations

from lingotune.losses import ORPO
from lingotune.methods import dpart
from lingotune.methods.base import Stage, check_tuned, tuned_groups, tuned_save


def stages(recipe) -> list[Stage]:
    m, p = recipe.method, recipe.method.pref
    after = p.after_stage1
    embeddings = (recipe.model.tie, recipe.train.embedding_lr) if after and m.stage2_embeddings == "trainable" else None

    def setup(model):
        return tuned_groups(model, recipe, embeddings)

    trains = ("LoRA" if p.weights == "lora" else "all weights") + (" + embeddings" if embeddings else "")
    orpo = Stage("orpo", p.orpo.data, p.orpo.steps, setup, tuned_save(recipe, embeddings=after),
                 {"trains": trains, "loss": "orpo"}, loss=ORPO(p.orpo_lambda, recipe.train.loss_on))
    return ([dpart.stage1(recipe)] if after else []) + [orpo]


check = check_tuned
