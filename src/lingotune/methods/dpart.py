"""DParT (Double Partial Tuning).

Stage 1 trains only the input embeddings, on the bilingual pairs (the "stage1" set), at
`embedding_lr`. Stage 2 adds LoRA adapters on top of the stage-1 model and trains them on the
target-language instructions (the "stage2" set) at `lr`; the stage-1 embeddings stay frozen
or keep training at `embedding_lr`, as `method.stage2_embeddings` says.
"""

from __future__ import annotations

from lingotune.methods.base import (
    Stage, check_lora_targets, freeze_all, lora_groups, prepare_embeddings, save_adapter_and_embeddings, save_embeddings,
)


def stage1(recipe) -> Stage:
    """Stage 1: the input embeddings alone (row-sparse), on `method.stage1` (also orpo's `after_stage1`)."""
    m, t, tie = recipe.method, recipe.train, recipe.model.tie

    def setup1(model):
        freeze_all(model)
        w = prepare_embeddings(model, tie)
        return model, [{"name": "embeddings", "params": [w], "lr": t.embedding_lr}]

    def save1(model, out, tokenizer=None):
        return {"embeddings": save_embeddings(model, out)}

    return Stage("stage1", m.stage1.data, m.stage1.steps, setup1, save1, {"trains": "input embeddings", "tie": tie},
                 row_sparse=True)


def stages(recipe) -> list[Stage]:
    m, t, tie = recipe.method, recipe.train, recipe.model.tie
    also_embeddings = m.stage2_embeddings == "trainable"

    def setup2(model):
        return lora_groups(model, m.lora, t.lr, (tie, t.embedding_lr) if also_embeddings else None)

    return [
        stage1(recipe),
        Stage("stage2", m.stage2.data, m.stage2.steps, setup2, save_adapter_and_embeddings,
              {"trains": "LoRA" + (" + embeddings" if also_embeddings else ""), "tie": tie}),
    ]


def check(recipe, model) -> None:
    """Settings that can only be checked against the model: the LoRA target modules."""
    check_lora_targets(model, recipe.method.lora)
