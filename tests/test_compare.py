"""The compare grid: cells resume independently; statistics are right on known inputs."""

from __future__ import annotations

import json

import pytest

from lingotune import compare as cmp
from lingotune.compare import mean_ci, paired_permutation


def test_mean_ci_matches_the_t_interval():
    m, half = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0
    assert half == pytest.approx(4.302653 * 1.0 / 3 ** 0.5, rel=1e-5)  # t(0.975, 2) * sd / sqrt(n)
    assert mean_ci([5.0]) == (5.0, 0.0)


def test_paired_permutation_p_values():
    assert paired_permutation([0, 0, 0]) == 1.0
    # ten identical positive differences: only 2 of 1024 sign patterns are as extreme
    p = paired_permutation([1.0] * 10, n_perm=20000, seed=1)
    assert p == pytest.approx(2 / 1024, abs=0.002)
    # symmetric differences: no evidence
    assert paired_permutation([1, -1] * 10, n_perm=2000) > 0.5


def test_interrupted_grid_resumes_without_redoing_finished_cells(tiny_model_dir, tmp_path, monkeypatch):
    from helpers import make_recipe

    recipe = make_recipe(**{
        "model.source": str(tiny_model_dir),
        "data.max_stage1": 16, "data.max_stage2": 8,
        "method.stage1.steps": 2, "method.stage2.steps": 2,
        "train.max_len": 64, "train.batch_size": 2,
        "eval.tasks": ["starter_heldout"], "eval.limit": 4, "eval.n_bootstrap": 0,
        "output.sample_prompts": 1,
        "compare.methods": ["lora", "dpart"], "compare.seeds": [0, 1],
    })
    real = cmp.train_method
    calls = []

    def counting(model, tok, r, *a, **kw):
        calls.append((r.method.name, r.seed))
        if len(calls) == 3 and interrupt["on"]:
            raise KeyboardInterrupt
        return real(model, tok, r, *a, **kw)

    interrupt = {"on": True}
    monkeypatch.setattr(cmp, "train_method", counting)
    out = tmp_path / "grid"
    with pytest.raises(KeyboardInterrupt):
        cmp.compare(recipe, out)
    finished = {p.parent.name: p.read_text() for p in out.glob("data/*-s*/results.json")}
    assert sorted(finished) == ["lora-s0", "lora-s1"]
    interrupt["on"] = False
    calls.clear()
    summary = cmp.compare(recipe, out, resume=True)
    assert calls == [("dpart", 0), ("dpart", 1)]
    for name, text in finished.items():  # finished cells untouched
        assert (out / "data" / name / "results.json").read_text() == text
    rows = {r["method"] for r in summary["datasets"]["data"]}
    assert rows == {"untouched", "lora", "dpart"}
    assert (out / "report.md").exists() and (out / "table_data.csv").exists() and (out / "loss_data.png").exists()
    sig = summary["significance"]["data"]
    assert "starter_heldout" in sig and sig["starter_heldout"]["pairs"] == 8
    cell = json.loads((out / "data" / "dpart-s1" / "results.json").read_text())
    assert cell["stages"]["stage1"]["steps"] == 2 and cell["complete"]
