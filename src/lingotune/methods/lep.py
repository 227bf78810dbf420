"""LEP's embedding step (Learned Embedding Propagation, `../shared/papers/lep.txt`).

One stage trains only the input embeddings and the output head, everything else frozen, on plain
target-language text (the `text` set) with the loss on every token, at `embedding_lr`. A tied
model follows `model.tie`, as every method does: `tied` trains its one shared matrix, `untie`
(the default) gives the head its own copy first and trains both. Usually run on a vocabulary
adapted to the language (the recipe's `vocab:` section); the stage saves the whole model with its
tokenizer, which `lingotune propagate` takes as the adapted base model.

With `method.lep.rows: new`, only the rows the vocabulary adaptation computed train (the model's
`lingotune_new_rows`, set by `vocab.init_new_rows`): a gradient mask zeroes every other row's gradient, so
AdamW (no weight decay) leaves those rows bit-identical, and gradient clipping sees the new rows alone.
"""

from __future__ import annotations

import torch

from lingotune.methods.base import Stage, freeze_all, save_model
from lingotune.models import untie


def train_rows(weight: torch.nn.Parameter, rows: list[int]) -> None:
    """Only `rows` of `weight` get gradients (a mask on its gradient); the other rows' gradients are zero."""
    mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
    mask[rows] = 1
    weight.register_hook(lambda grad: grad * mask.to(grad.dtype))


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
        if m.lep.rows == "new":
            rows = getattr(model, "lingotune_new_rows", None)
            if rows is None:
                raise ValueError("method.lep.rows: 'new', but the model holds no rows of an adapted vocabulary "
                                 "(vocab.init_new_rows sets them)")
            for g in groups:
                train_rows(g["params"][0], rows)
        return model, groups

    def save(model, out, tokenizer=None):
        return {"model": save_model(model, out, tokenizer)}

    return [Stage("embeddings", m.lep.data, m.lep.steps, setup, save,
                  {"trains": "input embeddings and output head" + (", new rows only" if m.lep.rows == "new" else ""),
                   "tie": recipe.model.tie})]
