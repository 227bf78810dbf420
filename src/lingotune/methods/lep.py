"""LEP's embedding step (Learned Embedding Propagation, `../shared/papers/lep.txt`).

One stage trains only the input embeddings and the output head, everything else frozen, on plain
target-language text (the `text` set) with the loss on every token, at `embedding_lr`. A tied
model follows `model.tie`, as every method does: `tied` trains its one shared matrix, `untie`
(the default) gives the head its own copy first and trains both. Usually run on a vocabulary
adapted to the language (the recipe's `vocab:` section); the stage saves the whole model with its
tokenizer, which `lingotune propagate` takes as the adapted base model.
"""

from __future__ import annotations

from lingotune.methods.base import Stage, freeze_all, save_model
from lingotune.models import untie


def stages(recipe) -> list[Stage]:
    m, t = recipe.method, recipe.train

    def setup(model):
        freeze_all(model)
        if recipe.model.tie == "untie":
            untie(model)
        emb = model.get_input_embeddings().weight
        emb.requires_grad_(True)
        groups = [{"name": "embeddings", "params": [emb], "lr": t.embedding_lr}]
        head = model.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != emb.data_ptr():
            head.weight.requires_grad_(True)
            groups.append({"name": "head", "params": [head.weight], "lr": t.embedding_lr})
        return model, groups

    def save(model, out, tokenizer=None):
        return {"model": save_model(model, out, tokenizer)}

    return [Stage("embeddings", m.lep.data, m.lep.steps, setup, save,
                  {"trains": "input embeddings and output head", "tie": recipe.model.tie})]
