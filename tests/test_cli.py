"""The CLI end to end on a tiny model: train one stage at a time, info, one-line errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from lingotune.cli import app

SMALL = ["--set", "data.max_stage1=8", "--set", "data.max_stage2=4", "--set", "method.stage1.steps=2",
         "--set", "method.stage2.steps=2", "--set", "train.batch_size=2", "--set", "train.max_len=64"]


def test_train_one_stage_at_a_time(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = CliRunner()
    args = ["train", "--out", "r", "--set", f"model.source={tiny_model_dir}", *SMALL]
    res = run.invoke(app, args + ["--stage", "stage2"])
    assert res.exit_code == 2 and "stage1 must be trained first" in res.output
    res = run.invoke(app, args + ["--stage", "stage1", "--overwrite"])
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert list(results["stages"]) == ["stage1"] and results["evals"] == {}
    assert (tmp_path / "r" / "dpart" / "stage1" / "embeddings.safetensors").exists()
    res = run.invoke(app, args + ["--stage", "stage2", "--resume"])
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert list(results["stages"]) == ["stage1", "stage2"]
    assert (tmp_path / "r" / "dpart" / "stage2" / "adapter" / "adapter_config.json").exists()
    assert results["stages"]["stage1"]["trainable_params"] == results["stages"]["stage1"]["groups"]["embeddings"]


def test_wrong_model_path_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["run", "--out", "r", "--set", "model.source=./no/such/model"])
    assert res.exit_code == 2
    lines = [l for l in res.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "no/such/model" in lines[0]
    assert not (tmp_path / "r").exists()
