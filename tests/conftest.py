"""Shared fixtures: a tiny random Llama built in memory, the bundled model, the shared data root."""

from __future__ import annotations

import pytest
import torch

from helpers import fresh_tiny, require_bundled, tiny_llama_config
from lingotune.paths import data_root


@pytest.fixture
def tiny_llama():
    model = fresh_tiny()
    model.config.use_cache = False
    return model


@pytest.fixture(scope="session")
def shared_data():
    root = data_root()
    if root is None:
        pytest.skip("../shared/data not found (set LINGOTUNE_DATA to the shared data root)")
    return root


@pytest.fixture(scope="session")
def bundled():
    """(model, tokenizer) of the bundled SmolLM2-135M-Instruct; skipped when the package is absent."""
    require_bundled()
    from lingotune.models import load_model

    return load_model("bundled")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama saved with the bundled tokenizer (chat template included)."""
    require_bundled()
    from transformers import LlamaForCausalLM

    from lingotune.models import load_tokenizer

    tok = load_tokenizer("bundled")
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=len(tok), pad_token_id=tok.pad_token_id))
    out = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
