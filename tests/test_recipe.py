"""Recipes: every shipped recipe validates; each bad one gives one line naming the field, and writes nothing."""

from __future__ import annotations


import pytest
from typer.testing import CliRunner

from lingotune.cli import app
from lingotune.recipe import DEFAULT_RECIPE, Recipe, RecipeError, load_recipe

RECIPES = sorted((DEFAULT_RECIPE.parent).rglob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    r = load_recipe(path)
    assert isinstance(r, Recipe)


def test_default_recipe_is_the_bundled_model_english_to_russian_dpart():
    r = load_recipe(None)
    assert (r.model.source, r.language, r.method.name) == ("bundled", "ru", "dpart")
    assert [s.format for s in r.data.sources] == ["starter"]


def test_embedding_lr_defaults_to_a_tenth_and_full_lr_to_the_embeddings():
    r = Recipe.model_validate({"train": {"lr": 3e-4}})
    assert r.train.embedding_lr == pytest.approx(3e-5)
    assert r.train.full_lr == pytest.approx(3e-5)
    assert r.method.single.steps == r.method.stage1.steps + r.method.stage2.steps


BAD = [
    ("train:\n  lr: -1\n", "train.lr"),
    ("train:\n  lrr: 0.1\n", "train.lrr"),
    ("language: xx\n", "language"),
    ("method:\n  name: qlora\n", "method.name"),
    ("method:\n  stage1: {steps: 0, data: [stage1]}\n", "method.stage1.steps"),
    ("eval:\n  tasks: [no_such_task]\n", "eval.tasks[0]"),
    ("data:\n  sources: [{format: alpacaa}]\n", "data.sources.0.format"),
    ("model:\n  tie: sometimes\n", "model.tie"),
    ("compare:\n  methods: [dpart, qlora]\n", "compare"),
    ("train: [1, 2\n", "not valid YAML"),
]


@pytest.mark.parametrize("text, field", BAD, ids=[b[1] for b in BAD])
def test_bad_recipe_one_line_error_names_field_and_writes_nothing(text, field, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text(text + "output:\n  dir: out\n" if not text.startswith("train: [") else text)
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert field in str(e.value) and "\n" not in str(e.value)
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and field in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_existing_run_dir_is_never_overwritten(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from lingotune.rundir import prepare

    prepare(tmp_path / "out", "fresh", "run")
    (tmp_path / "out" / "results.json").write_text("{}")
    result = CliRunner().invoke(app, ["run", "--out", "out"])
    assert result.exit_code == 2 and "--resume" in result.output
    assert (tmp_path / "out" / "results.json").read_text() == "{}"


def test_set_overrides_apply_and_are_validated():
    r = load_recipe(None, ["method.name=lora", "train.lr=1e-4"])
    assert r.method.name == "lora" and r.train.lr == 1e-4
    with pytest.raises(RecipeError, match="train.batch_size"):
        load_recipe(None, ["train.batch_size=zero"])
