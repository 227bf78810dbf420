"""The shared loop: resume after an interruption, NaN losses, logging."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from helpers import fresh_tiny, make_items, make_recipe, train_one
from lingotune import methods
from lingotune.train import TrainingError, TrainingInterrupted, lr_factor


def _run(model, recipe, tmp_path, resume=False, on_step=None, steps=6, method="lora", items=None):
    stage = methods.stages(method, recipe)[0]
    return train_one(model, stage, recipe, tmp_path, steps=steps, resume=resume, on_step=on_step, items=items)


def _paired_items() -> list[dict]:
    """make_items() as six DParT pairs (data.pair_batching: together): items 2k and 2k+1 share a pair id."""
    return [{**it, "pair": f"p{i // 2}"} for i, it in enumerate(make_items())]


def _trained_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k or "embed_tokens" in k}


@pytest.mark.parametrize("method, fast, paired", [("lora", True, False), ("dpart", True, False), ("dpart", False, False),
                                                  ("dpart", True, True)])
def test_interrupted_run_resumes_and_matches_uninterrupted(tmp_path, method, fast, paired):
    fresh = fresh_tiny

    recipe = make_recipe(**{"train.fast": fast})
    items = _paired_items() if paired else None
    ref_model, ref = _run(fresh(), recipe, tmp_path / "ref", method=method, items=items)

    def interrupt(step, loss):
        if step == 5:  # Ctrl-C: the step in flight finishes, is checkpointed, then the stage stops
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted, match="checkpoint at step 5 .*--resume"):
        _run(fresh(), recipe, tmp_path / "cut", on_step=interrupt, method=method, items=items)
    model, res = _run(fresh(), recipe, tmp_path / "cut", resume=True, method=method, items=items)
    assert res.resumed_from == 5 and res.steps == ref.steps == 6
    assert res.first_loss == ref.first_loss and res.tokens == ref.tokens  # the whole stage, not the resumed part
    before = json.loads(next((tmp_path / "cut").glob("*/checkpoint/step-00000005/meta.json")).read_text())
    assert res.seconds + 0.005 >= before["stats"]["seconds"] > 0  # the first 5 steps' time is counted too
    assert ("row-sparse embeddings, lazy row Adam" in res.fast_path) == (method == "dpart" and fast)
    a, b = _trained_state(ref_model), _trained_state(model)
    assert a and set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    steps = [json.loads(l)["step"] for l in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path, tiny_llama):
    recipe = make_recipe()

    def poison(step, loss):
        if step == 2:  # corrupt the model after the step-2 checkpoint
            with torch.no_grad():
                for p in tiny_llama.parameters():
                    p.fill_(float("nan"))

    with pytest.raises(TrainingError, match=r"step 3: loss is nan; stopped before the optimizer step; "
                                             r"the checkpoint at step 2 .* is kept"):
        _run(tiny_llama, recipe, tmp_path, on_step=poison)
    from lingotune.checkpoint import Checkpoints

    assert [s for s, _ in Checkpoints(tmp_path / "train" / "checkpoint").complete()] == [2]


def test_metrics_log_has_loss_lr_and_throughput(tmp_path, tiny_llama):
    recipe = make_recipe()
    _run(tiny_llama, recipe, tmp_path, steps=3)
    recs = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3]
    for r in recs:
        assert r["loss"] > 0 and r["tokens"] > 0 and r["tokens_per_s"] > 0 and r["lr"]["lora"] > 0


def test_lr_schedule_warms_up_then_decays_to_a_tenth():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10) == pytest.approx(0.1)
    assert lr_factor(55, 100, 10) == pytest.approx(0.55)


def _losses(path):
    return [json.loads(l)["loss"] for l in path.read_text().splitlines()]


@pytest.mark.parametrize("method, fast", [("lora", True), ("lora", False), ("dpart", True), ("full", False)])
def test_packed_rows_train_like_padded_rows(tmp_path, method, fast):
    """Packing changes the layout only: same examples per step, same losses, same weights."""
    out = {}
    for pack in (False, True):
        recipe = make_recipe(**{"train.pack": pack, "train.fast": fast, "train.batch_size": 4, "method.lora.dropout": 0.0})
        model, res = _run(fresh_tiny(), recipe, tmp_path / str(pack), method=method, steps=4)
        assert ("packed rows" in res.fast_path) == pack
        out[pack] = (model, res, _losses(tmp_path / str(pack) / "metrics.jsonl"))
    (m0, r0, l0), (m1, r1, l1) = out[False], out[True]
    from lingotune.data.batches import BatchPlan

    plan, items = BatchPlan(len(make_items()), 4, 0), make_items()
    assert r0.tokens == r1.tokens == sum(len(items[i]["input_ids"]) for s in range(4) for i in plan.indices(s))
    torch.testing.assert_close(torch.tensor(l1), torch.tensor(l0), rtol=1e-5, atol=1e-6)
    a, b, init = m0.state_dict(), m1.state_dict(), fresh_tiny().state_dict()
    assert any(k not in init or not torch.equal(a[k], init[k]) for k in a)  # something trained
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_training(tmp_path):
    out = {}
    for ckpt in (False, True):
        recipe = make_recipe(**{"train.gradient_checkpointing": ckpt})
        saved = [0]

        def count(t):
            saved[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):  # what forward keeps for backward
            model, res = _run(fresh_tiny(), recipe, tmp_path / str(ckpt), method="lora", steps=3)
        assert ("gradient checkpointing" in res.fast_path) == ckpt
        out[f"saved{ckpt}"] = saved[0]
        base = model.get_base_model()
        on = getattr(base, "is_activation_checkpointing", None)
        assert not (on if on is not None else base.is_gradient_checkpointing)  # switched off after the stage
        out[ckpt] = (_trained_state(model), _losses(tmp_path / str(ckpt) / "metrics.jsonl"))
    assert out["savedTrue"] < 0.6 * out["savedFalse"]  # activations are recomputed, not kept
    assert out[True][1] == pytest.approx(out[False][1], rel=1e-6)
    for k, v in out[False][0].items():
        torch.testing.assert_close(out[True][0][k], v, rtol=1e-5, atol=1e-6)


def test_stage1_fast_path_memory_follows_touched_rows(tmp_path):
    """Row gradients and lazy Adam state grow with the rows the batches touch, not the vocabulary;
    the frozen head gets no weight gradient, the embedding no dense one."""
    model = fresh_tiny(vocab_size=4096)
    recipe = make_recipe(**{"train.batch_size": 2})
    model, res = _run(model, recipe, tmp_path, method="dpart", steps=3)
    assert "row-sparse embeddings, lazy row Adam" in res.fast_path
    assert model.lm_head.weight.grad is None and not model.lm_head.weight.requires_grad
    assert model.get_input_embeddings().weight.grad is None
    from lingotune.data.batches import BatchPlan

    items, hidden = make_items(), model.config.hidden_size
    plan = BatchPlan(len(items), 2, 0)
    per_step = [{t for i in plan.indices(s) for t in items[i]["input_ids"]} for s in range(3)]
    touched = set().union(*per_step)
    assert res.grad_mb == pytest.approx(max(len(u) for u in per_step) * hidden * 4 / 2**20, abs=1e-3)
    # exp_avg + exp_avg_sq (fp32) + ids and step (int64) per touched row
    assert res.optimizer_state_mb == pytest.approx(len(touched) * (2 * hidden * 4 + 16) / 2**20, abs=1e-3)
    dense = 4096 * hidden * 4 / 2**20
    assert res.grad_mb + res.optimizer_state_mb < 0.1 * 3 * dense


def test_packing_falls_back_to_padded_rows_when_the_model_ignores_it(tmp_path, monkeypatch):
    """A model whose attention ignores restarting position_ids would let packed examples see each
    other; the loop detects that and trains on padded rows instead, and says so."""
    import transformers.masking_utils as mu

    from lingotune.train import packing_respected

    model = fresh_tiny()
    assert packing_respected(model)
    monkeypatch.setattr(mu, "find_packed_sequence_indices", lambda position_ids: None)
    assert not packing_respected(model)
    recipe = make_recipe(**{"train.pack": True, "train.batch_size": 4, "method.lora.dropout": 0.0})
    model, res = _run(model, recipe, tmp_path / "a", method="lora", steps=2)
    assert "packed rows" not in res.fast_path
    assert any("padded rows" in n for n in res.fast_path)
    ref, _ = _run(fresh_tiny(), make_recipe(**{"train.pack": False, "train.batch_size": 4, "method.lora.dropout": 0.0}),
                  tmp_path / "b", method="lora", steps=2)
    assert _losses(tmp_path / "a" / "metrics.jsonl") == _losses(tmp_path / "b" / "metrics.jsonl")


def test_stage1_fast_path_on_a_bf16_model_moves_only_touched_rows(tmp_path):
    """model.dtype: bfloat16 (how a 7B model is held on one GPU): the lazy optimizer keeps fp32
    master rows; untouched rows stay bit-identical, and updates too small for bf16 alone accumulate."""
    model = fresh_tiny().to(torch.bfloat16)
    with torch.no_grad():  # values in [1, 2): bf16 spacing 2**-7, so one 3.5e-3 step alone rounds away
        model.get_input_embeddings().weight.copy_(1 + torch.rand_like(model.get_input_embeddings().weight.float()))
    before = model.get_input_embeddings().weight.detach().clone()
    recipe = make_recipe(**{"train.embedding_lr": 3.5e-3, "train.warmup_steps": 0, "train.batch_size": 2})
    model, res = _run(model, recipe, tmp_path, method="dpart", steps=8)
    assert "row-sparse embeddings, lazy row Adam" in res.fast_path
    after = model.get_input_embeddings().weight.detach()
    from lingotune.data.batches import BatchPlan

    items, plan = make_items(), BatchPlan(12, 2, 0)
    touched = sorted({t for s in range(8) for i in plan.indices(s) for t in items[i]["input_ids"]})
    untouched = [r for r in range(after.shape[0]) if r not in set(touched)]
    assert after.dtype == torch.bfloat16
    assert torch.equal(after[untouched], before[untouched])
    # the accumulated updates show up (each one alone is below the rounding step)
    assert (after[touched] != before[touched]).float().mean() > 0.3


def _uneven_items(n: int = 8) -> list[dict]:
    """Examples whose answers are 1 to 15 tokens long: micro-batches hold very different label counts."""
    import random

    rng = random.Random(1)
    items = []
    for i in range(n):
        prompt = [rng.randrange(3, 60) for _ in range(rng.randint(4, 8))]
        answer = [rng.randrange(3, 60) for _ in range(1 + (i * 2) % 15)]
        items.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer})
    return items


@pytest.mark.parametrize("method", ["lora", "dpart"])
def test_gradient_accumulation_weights_every_label_token_equally(tmp_path, method):
    """batch_size 2 x grad_accum 4 gives the loss and gradients of batch_size 8 x grad_accum 1 on the same
    examples: each micro-batch's summed loss is divided by the label tokens of the whole step."""
    from lingotune.train import _micro_batches, accumulate, prepare_stage

    items, out = _uneven_items(), {}
    for bs, ga in ((8, 1), (2, 4)):
        recipe = make_recipe(**{"train.batch_size": bs, "train.grad_accum": ga, "method.lora.dropout": 0.0})
        stage = methods.stages(method, recipe)[0]
        torch.manual_seed(0)
        model, groups = stage.setup(fresh_tiny())
        run = prepare_stage(model, groups, items, steps=1, cfg=recipe.train, seed=0, pad_id=0,
                            stage_dir=tmp_path / f"{bs}", log_path=tmp_path / f"{bs}.jsonl", log_key={"stage": "s"},
                            row_sparse=stage.row_sparse, loss=stage.loss)
        loss, _ = accumulate(run, 0)
        if stage.row_sparse:
            ids, rows = model.get_input_embeddings().gathered_grad()
            grads = {"rows": rows[ids.argsort()].clone()}
        else:
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        run.cleanup()
        out[bs] = (loss, grads, [run.loss.count(b) for b in _micro_batches(run, 0)[0]])
    (l8, g8, _), (l2, g2, units) = out[8], out[2]
    assert len(set(units)) > 1  # the micro-batches really hold different numbers of label tokens
    assert l2 == pytest.approx(l8, rel=1e-5)
    assert set(g2) == set(g8) and g8
    for k in g8:
        torch.testing.assert_close(g2[k], g8[k], rtol=1e-4, atol=1e-7)


def test_resume_refuses_a_pair_batching_the_checkpoint_was_not_trained_with():
    """A checkpoint from before data.pair_batching was trained with shuffled batches: resuming it with
    together would change the batches mid-stage, so it is refused; with shuffled it resumes."""
    from lingotune.train import _fingerprint_diff

    old = {"train.lr": 0.01}
    assert _fingerprint_diff(old, {"train.lr": 0.01, "data.pair_batching": "together"}) == ["data.pair_batching"]
    assert _fingerprint_diff(old, {"train.lr": 0.01, "data.pair_batching": "shuffled"}) == []
    assert _fingerprint_diff({**old, "data.pair_batching": "together"},
                             {"train.lr": 0.01, "data.pair_batching": "shuffled"}) == ["data.pair_batching"]


# ----------------------------------------------------------------------------- fp32 master weights (dense, bf16)


def test_master_weights_accumulate_small_bf16_updates_as_fp32_adamw_does():
    """100 AdamW steps at 2e-5 on a bf16 weight: with fp32 masters the weight follows a pure fp32 AdamW on the
    same gradients (the master to float rounding, the weight to bf16's); plain AdamW on the bf16 weight loses
    every update (each is below half of bf16's spacing here) and drifts away from the reference."""
    from lingotune.train import MasterAdamW

    torch.manual_seed(0)
    start = (0.0625 + 0.0625 * torch.rand(64, 32)).to(torch.bfloat16)  # [1/16, 1/8): bf16 spacing 2**-11
    grads = [(0.5 + torch.randn(64, 32)).to(torch.bfloat16) for _ in range(100)]  # as a bf16 model's backward gives
    ref = torch.nn.Parameter(start.float())
    weights = {k: torch.nn.Parameter(start.clone()) for k in ("master", "plain")}
    opts = {"ref": torch.optim.AdamW([ref], lr=2e-5, weight_decay=0.0),
            "master": MasterAdamW([{"params": [weights["master"]], "lr": 2e-5, "name": "all"}], lr=2e-5,
                                  weight_decay=0.0),
            "plain": torch.optim.AdamW([weights["plain"]], lr=2e-5, weight_decay=0.0)}
    for g in grads:
        ref.grad, weights["master"].grad, weights["plain"].grad = g.float(), g.clone(), g.clone()
        for opt in opts.values():
            opt.step()
            opt.zero_grad()
    moved = (ref.detach() - start.float()).abs().mean()
    assert moved > 2 ** -11  # the reference moved more than one bf16 step
    torch.testing.assert_close(opts["master"].masters[0], ref.detach(), rtol=0, atol=1e-6)
    err_master = (weights["master"].detach().float() - ref.detach()).abs()
    err_plain = (weights["plain"].detach().float() - ref.detach()).abs()
    assert weights["master"].dtype == torch.bfloat16 and err_master.max() <= 2 ** -12  # ref rounded to bf16
    assert torch.equal(weights["plain"].detach(), start)  # every update lost
    assert err_plain.mean() > 4 * err_master.mean() and err_plain.mean() > 0.9 * moved


def test_full_fine_tuning_on_a_bf16_model_keeps_fp32_masters_and_resumes_exactly(tmp_path):
    """method full on model.dtype: bfloat16: every weight gets an fp32 master (noted), the checkpoint holds
    the masters, and a run interrupted at step 2 and resumed ends bit-identical to an uninterrupted one."""
    recipe = make_recipe(**{"train.full_lr": 1e-4})

    def fresh():
        return fresh_tiny().to(torch.bfloat16)

    ref_model, ref = _run(fresh(), recipe, tmp_path / "ref", method="full", steps=3)
    assert any(n.startswith("fp32 master weights for ") for n in ref.fast_path)

    def interrupt(step, loss):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        _run(fresh(), recipe, tmp_path / "cut", on_step=interrupt, method="full", steps=3)
    state = torch.load(next((tmp_path / "cut").glob("*/checkpoint/step-00000002/state.pt")), weights_only=True)
    assert len(state["optimizer"]["master"]) == len(list(ref_model.parameters()))
    assert all(m.dtype == torch.float32 for m in state["optimizer"]["master"])
    model, res = _run(fresh(), recipe, tmp_path / "cut", resume=True, method="full", steps=3)
    assert res.resumed_from == 2
    for (n, a), (_, b) in zip(ref_model.named_parameters(), model.named_parameters()):
        assert a.dtype == torch.bfloat16 and torch.equal(a, b), n


def test_lora_adapters_on_a_bf16_base_are_fp32_and_bf16_embeddings_beside_them_get_masters():
    """PEFT keeps adapters in fp32 on a bf16 base (autocast_adapter_dtype), so LoRA needs no master; the
    combined method's bf16 input embeddings, trained dense beside them, get one, and nothing else does."""
    from lingotune.train import MasterAdamW, make_optimizer

    recipe = make_recipe()
    model, groups = methods.stages("lora", recipe)[0].setup(fresh_tiny().to(torch.bfloat16))
    assert {p.dtype for g in groups for p in g["params"]} == {torch.float32}
    opt, _, notes = make_optimizer(model, groups, recipe.train, row_sparse=False)
    assert type(opt) is torch.optim.AdamW and notes == []
    model, groups = methods.stages("combined", recipe)[0].setup(fresh_tiny(tie=False).to(torch.bfloat16))
    opt, _, notes = make_optimizer(model, groups, recipe.train, row_sparse=False)
    emb = model.get_input_embeddings().weight
    assert isinstance(opt, MasterAdamW) and notes == [f"fp32 master weights for {emb.numel():,} bf16/fp16 "
                                                      f"parameters ({4 * emb.numel() / 2**20:.1f} MB)"]
    low = [m for p, m in zip(opt.weights, opt.masters) if m is not p]
    assert len(low) == 1 and low[0].dtype == torch.float32 and torch.equal(low[0], emb.detach().float())


def test_sharded_training_of_bf16_weights_is_refused_with_the_fix(tmp_path, monkeypatch):
    """FSDP/DeepSpeed own the weights, so no master copy can be kept: a one-line error says to load in fp32."""
    from lingotune import train

    monkeypatch.setattr(train, "_data_parallel", lambda accelerator: False)
    recipe = make_recipe()
    with pytest.raises(TrainingError, match=r"^train: FSDP/DeepSpeed .* \(model.dtype: float32\)"):
        _run(fresh_tiny().to(torch.bfloat16), recipe, tmp_path, method="full", steps=1)


def test_master_weights_follow_their_weight_to_another_device():
    """accelerate moves the model (to a GPU) after the optimizer is made: each fp32 master, and its Adam state,
    must follow its weight there (here: the meta device stands in for the GPU)."""
    from lingotune.train import MasterAdamW

    w = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    opt = MasterAdamW([{"params": [w], "lr": 1e-3}], lr=1e-3)
    w.grad = torch.ones_like(w)
    opt.step()  # Adam state exists on the CPU now
    moved = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16, device="meta"))  # the weight, moved
    opt.weights[0] = moved
    moved.grad = torch.ones(4, dtype=torch.bfloat16, device="meta")
    opt.step()
    master = opt.masters[0]
    assert master.device.type == "meta" and opt.state[master]["exp_avg"].device.type == "meta"


@pytest.mark.parametrize("method, tie", [("lora", True), ("dpart", False), ("dpart", True)])
def test_frozen_weights_held_in_bf16_train_bit_for_bit_like_autocast_and_come_back_exactly(tmp_path, method, tie):
    """Under bf16 autocast, frozen linear weights held in bf16 give the same losses and trained weights bit for
    bit; after the stage every frozen weight is its exact fp32 original, and nothing is left in the stage dir."""
    out = {}
    for held in (False, True):
        model = fresh_tiny(tie=tie)
        frozen = {k: v.clone() for k, v in model.state_dict().items()}
        recipe = make_recipe(**{"train.precision": "bf16", "train.frozen_bf16": held})
        model, res = _run(model, recipe, tmp_path / str(held), method=method, steps=3)
        assert ("frozen linear weights held in bf16" in " ".join(res.fast_path)) == held
        trained = _trained_state(model)
        out[held] = (trained, _losses(tmp_path / str(held) / "metrics.jsonl"))
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        for k, v in base.state_dict().items():
            if k in frozen and not any(t in k for t in ("lora_", "embed_tokens")) and not (tie and "lm_head" in k):
                assert v.dtype == torch.float32 and torch.equal(v, frozen[k]), k
        assert not list((tmp_path / str(held)).rglob(".frozen-fp32-*"))
    assert out[True][1] == out[False][1]
    assert set(out[True][0]) == set(out[False][0])
    for k, v in out[False][0].items():
        assert torch.equal(out[True][0][k], v), k


def test_frozen_linears_to_bf16_skips_trained_and_tied_weights_and_restores_from_the_spill_file(tmp_path):
    from lingotune.fast import frozen_linears_to_bf16

    model = fresh_tiny(tie=True)
    for p in model.parameters():
        p.requires_grad_(False)
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stale = tmp_path / ".frozen-fp32-rank0-killed"  # what a process killed mid-stage leaves
    stale.mkdir()
    (stale / "weights.safetensors").write_bytes(b"x" * 100)
    n, restore = frozen_linears_to_bf16(model, tmp_path)
    assert not stale.exists()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert n == sum(m.weight.numel() for m in linears) - model.model.layers[0].mlp.up_proj.weight.numel() \
        - model.lm_head.weight.numel()  # the trained one and the tied head stay fp32
    assert model.lm_head.weight.dtype == torch.float32 and model.model.layers[0].mlp.up_proj.weight.dtype == torch.float32
    q = model.model.layers[1].self_attn.q_proj.weight
    assert q.dtype == torch.bfloat16 and torch.equal(q, before["model.layers.1.self_attn.q_proj.weight"].to(torch.bfloat16))
    assert len(list(tmp_path.glob(".frozen-fp32-*/weights.safetensors"))) == 1
    restore()
    for k, v in model.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k
    assert not list(tmp_path.glob(".frozen-fp32-*"))
