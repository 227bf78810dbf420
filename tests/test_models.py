"""Model loading options."""

from __future__ import annotations

import pytest

from lingotune.models import ModelLoadError, load_model


def test_attention_kernel_is_chosen_by_the_recipe_and_changes_nothing_but_the_kernel(tiny_model_dir):
    import torch

    default, _ = load_model(str(tiny_model_dir))
    eager, _ = load_model(str(tiny_model_dir), attn_implementation="eager")
    assert default.config._attn_implementation == "sdpa"
    assert eager.config._attn_implementation == "eager"
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        torch.testing.assert_close(eager(ids).logits, default(ids).logits, rtol=1e-4, atol=1e-5)


def test_unavailable_attention_kernel_is_a_one_line_error(tiny_model_dir):
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    with pytest.raises(ModelLoadError) as e:
        load_model(str(tiny_model_dir), attn_implementation="flash_attention_2")
    assert "\n" not in str(e.value) and str(tiny_model_dir) in str(e.value)


def test_recipe_rejects_an_unknown_attention_kernel():
    from lingotune.recipe import RecipeError, parse_recipe

    assert parse_recipe({"model": {"attn_implementation": "eager"}}).model.attn_implementation == "eager"
    with pytest.raises(RecipeError, match="model.attn_implementation"):
        parse_recipe({"model": {"attn_implementation": "fast_please"}})
