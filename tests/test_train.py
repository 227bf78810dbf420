"""The shared loop: resume after an interruption, NaN losses, logging."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import make_items, make_recipe
from lingotune import methods
from lingotune.train import TrainingError, TrainingInterrupted, lr_factor, train_stage


def _run(model, recipe, tmp_path, resume=False, on_step=None, steps=6, method="lora"):
    stage = methods.stages(method, recipe)[0]
    torch.manual_seed(0)
    model, groups = stage.setup(model)
    res = train_stage(
        model, groups, make_items(), steps=steps, cfg=recipe.train, seed=0, pad_id=0,
        stage_dir=tmp_path / "train", log_path=tmp_path / "metrics.jsonl", log_key={"stage": "train"},
        resume=resume, on_step=on_step,
    )
    return model, res


def _trained_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k or "embed_tokens" in k}


@pytest.mark.parametrize("method, fast", [("lora", True), ("dpart", True), ("dpart", False)])
def test_interrupted_run_resumes_and_matches_uninterrupted(tmp_path, method, fast):
    from conftest import tiny_llama_config
    from transformers import LlamaForCausalLM

    def fresh():
        torch.manual_seed(0)
        return LlamaForCausalLM(tiny_llama_config())

    recipe = make_recipe(**{"train.fast": fast})
    ref_model, ref = _run(fresh(), recipe, tmp_path / "ref", method=method)

    def interrupt(step, loss):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match="checkpoint at step 4"):
        _run(fresh(), recipe, tmp_path / "cut", on_step=interrupt, method=method)
    model, res = _run(fresh(), recipe, tmp_path / "cut", resume=True, method=method)
    assert res.resumed_from == 4 and res.steps == ref.steps == 6
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

    with pytest.raises(TrainingError, match=r"step 3: loss is nan.*intact"):
        _run(tiny_llama, recipe, tmp_path, on_step=poison)
    progress = json.loads((tmp_path / "train" / "checkpoint" / "progress.json").read_text())
    assert progress["step"] == 2


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
