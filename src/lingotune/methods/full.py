"""Full fine-tuning: every weight trains, one stage, at `full_lr`.

The paper trained the full model at the embeddings' learning rate (10x below LoRA's);
`train.full_lr` defaults to `train.embedding_lr` for that reason.
"""

from __future__ import annotations

from lingotune.methods.base import Stage, full_groups, save_model


def stages(recipe) -> list[Stage]:
    m, t = recipe.method, recipe.train

    def setup(model):
        return full_groups(model, t.full_lr)

    def save(model, out, tokenizer=None):
        if not recipe.output.save_full_model:
            return {}
        return {"model": save_model(model, out, tokenizer)}

    return [Stage("train", m.single.data, m.single.steps, setup, save, {"trains": "all weights"})]
