"""One process of the data-parallel test (tests/test_distributed.py), run under torchrun or alone.

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py OUT

Trains a tiny random Llama through the loop, on the same items and recipe in every process:
DParT stage 1 (row-sparse embeddings, lazy row Adam, label-only logits, packed rows), then DParT
stage 2 (LoRA) on its result, and the lora method on a fresh model; once with batch_size 1 x
grad_accum 4 (each of two processes runs two of the 1-process run's four micro-batches) and once
with batch_size 4 x grad_accum 1 (each holds half of its one micro-batch). Each process writes
OUT/rank<r>.pt: per variant and case the trained tensors, stage 1's optimizer state, the examples
the process's loss saw, and the stage results; checkpoints and metrics go to OUT/<variant>/<case>.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import fresh_tiny, make_items, make_recipe  # noqa: E402

STEPS = 4
SETTINGS = {"train.max_grad_norm": 1.0, "train.warmup_steps": 1, "method.lora.dropout": 0.0,
            "train.checkpoint_every": 2}
VARIANTS = {"accum": {"train.batch_size": 1, "train.grad_accum": 4},
            "split": {"train.batch_size": 4, "train.grad_accum": 1}}
CASES = ("stage1", "stage2", "lora")


def items():
    return make_items(n=12, seed=3)


class Recording:
    """The stage's loss, noting every example (its input ids) that a micro-batch holds."""

    def __init__(self, loss, seen: list):
        self.loss, self.seen = loss, seen
        self.name = loss.name

    def count(self, batch):
        return self.loss.count(batch)

    def __call__(self, model, batch, label_only):
        self.seen.extend(examples_in(batch))
        return self.loss(model, batch, label_only)


def examples_in(batch: dict) -> list[tuple[int, ...]]:
    """The examples of a padded or packed batch (pad id 0 never occurs in the items)."""
    out = []
    for r, row in enumerate(batch["input_ids"].tolist()):
        if batch.get("position_ids") is None:
            out.append(tuple(t for t, m in zip(row, batch["attention_mask"][r].tolist()) if m))
            continue
        pos, cur = batch["position_ids"][r].tolist(), []
        for t, p in zip(row, pos):
            if p == 0 and cur:
                out.append(tuple(cur))
                cur = []
            cur.append(t)
        out.append(tuple(cur))
    return [x for x in out if any(x)]


def trained(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n or "embed_tokens" in n}


def main(out: Path) -> dict:
    from lingotune import distributed

    result = {name: variant(make_recipe(**SETTINGS, **sets), out / name) for name, sets in VARIANTS.items()}
    result["rank"], result["world_size"] = distributed.rank(), distributed.world_size()
    return result


def variant(r, out: Path) -> dict:
    from lingotune import methods
    from lingotune.train import prepare_stage, train_stage, train_step

    result: dict = {"seen": {}, "results": {}}
    # DParT stage 1 step by step (the optimizer is kept for its state), then stage 2 through train_stage
    stage1, stage2 = methods.stages("dpart", r)
    seen: list = []
    torch.manual_seed(0)
    model, groups = stage1.setup(fresh_tiny())
    result["initial"] = trained(model)
    run = prepare_stage(model, groups, items(), steps=STEPS, cfg=r.train, seed=0, pad_id=0,
                        stage_dir=out / "stage1", log_path=out / "stage1" / "metrics.jsonl",
                        log_key={"stage": "stage1"}, row_sparse=True, loss=Recording(stage1.loss, seen))
    for step in range(STEPS):
        train_step(run, step)
    run.cleanup()
    result["stage1_notes"] = run.notes
    result["stage1_state"] = {k: v.clone() for st in run.optimizer.state.values() for k, v in st.items()}
    result["seen"]["stage1"] = seen
    result["stage1"] = trained(model)

    for case, stage, start in (("stage2", stage2, model), ("lora", methods.stages("lora", r)[0], fresh_tiny())):
        seen = []
        torch.manual_seed(0)
        m, groups = stage.setup(start)
        res = train_stage(m, groups, items(), steps=STEPS, cfg=r.train, seed=0, pad_id=0,
                          stage_dir=out / case, log_path=out / case / "metrics.jsonl",
                          log_key={"stage": stage.name}, row_sparse=stage.row_sparse,
                          loss=Recording(stage.loss, seen))
        result["seen"][case] = seen
        result[case] = trained(m)
        result["results"][case] = res.to_dict()
    return result


if __name__ == "__main__":
    out = Path(sys.argv[1])
    res = main(out)
    torch.save(res, out / f"rank{res['rank']}.pt")
