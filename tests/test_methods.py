"""Which weights each method trains: analytic counts, frozen weights bit-identical after training."""

from __future__ import annotations

import copy

import pytest
import torch

from helpers import make_items, make_recipe, train_one
from lingotune import methods
from lingotune.models import count_parameters, is_tied

V, H, KV, LAYERS, INTER = 128, 32, 16, 2, 64
EMB = V * H
LORA_R4 = LAYERS * 4 * ((H + H) + (H + KV) + (H + KV) + (H + H))  # q, k, v, o
FULL = EMB + LAYERS * (H * H + H * KV * 2 + H * H + 3 * H * INTER + 2 * H) + H


def _train(model, stage, recipe, tmp_path, items=None):
    return train_one(model, stage, recipe, tmp_path, items=items)


@pytest.mark.parametrize(
    "name, expected",
    [("dpart", [EMB, LORA_R4]), ("lora", [LORA_R4]), ("combined", [LORA_R4 + EMB]), ("full", [FULL])],
)
def test_trainable_counts_are_analytic(name, expected, tiny_llama):
    recipe = make_recipe(**{"method.name": name})
    model = tiny_llama
    counts = []
    for stage in methods.stages(name, recipe):
        model, groups = stage.setup(model)
        counts.append(count_parameters(model)[0])
        assert sum(p.numel() for g in groups for p in g["params"]) == counts[-1]
    assert counts == expected


def test_stage1_changes_only_the_embedding_rows_it_saw(tiny_llama, tmp_path):
    recipe = make_recipe()
    before = copy.deepcopy(tiny_llama.state_dict())
    stage1 = methods.stages("dpart", recipe)[0]
    model, res = _train(tiny_llama, stage1, recipe, tmp_path)
    assert res.trainable_params == EMB and res.steps == 4
    after = model.state_dict()
    emb = "model.embed_tokens.weight"
    for k in before:
        if k == emb:
            continue
        assert torch.equal(before[k], after[k]), f"{k} changed"
    seen = sorted({i for item in make_items() for i in item["input_ids"]})
    unseen = [i for i in range(V) if i not in seen]
    changed = (before[emb] != after[emb]).any(dim=1)
    assert not changed[unseen].any(), "rows absent from every batch moved"
    assert changed[seen].float().mean() > 0.9
    # untie (default): the head keeps the original matrix
    assert not is_tied(model)
    assert torch.equal(after["lm_head.weight"], before[emb])


def test_stage1_tied_moves_the_head_with_the_embeddings(tiny_llama, tmp_path):
    recipe = make_recipe(**{"model.tie": "tied"})
    before = tiny_llama.lm_head.weight.detach().clone()
    model, _ = _train(tiny_llama, methods.stages("dpart", recipe)[0], recipe, tmp_path)
    assert is_tied(model)
    assert not torch.equal(model.lm_head.weight, before)


@pytest.mark.parametrize("emb_mode", ["frozen", "trainable"])
def test_stage2_changes_only_lora_and_optionally_embeddings(tiny_llama, tmp_path, emb_mode):
    recipe = make_recipe(**{"method.stage2_embeddings": emb_mode})
    s1, s2 = methods.stages("dpart", recipe)
    model, _ = _train(tiny_llama, s1, recipe, tmp_path)
    base_before = copy.deepcopy(model.state_dict())
    model, res = _train(model, s2, recipe, tmp_path)
    expected = LORA_R4 + (EMB if emb_mode == "trainable" else 0)
    assert res.trainable_params == expected
    base = model.get_base_model()
    after = {k.replace(".base_layer", ""): v for k, v in base.state_dict().items() if "lora_" not in k}
    lora_changed = any(not torch.equal(v, torch.zeros_like(v)) for k, v in base.state_dict().items() if "lora_B" in k)
    assert lora_changed
    for k, v in base_before.items():
        if k == "model.embed_tokens.weight" and emb_mode == "trainable":
            assert not torch.equal(v, after[k])
        else:
            assert torch.equal(v, after[k]), f"{k} changed"


def test_artefacts_load_back_in_the_ecosystem(tiny_llama, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM

    from helpers import tiny_llama_config

    recipe = make_recipe()
    s1, s2 = methods.stages("dpart", recipe)
    model, _ = _train(tiny_llama, s1, recipe, tmp_path)
    emb_path = s1.save(model, tmp_path / "s1")["embeddings"]
    model, _ = _train(model, s2, recipe, tmp_path)
    arts = s2.save(model, tmp_path / "s2")
    x = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        expected = model(input_ids=x).logits
    # a fresh base model + the embeddings file (head untouched) + the PEFT adapter reproduce the logits
    torch.manual_seed(0)
    fresh = LlamaForCausalLM(tiny_llama_config())
    fresh.lm_head.weight = torch.nn.Parameter(fresh.model.embed_tokens.weight.detach().clone())
    fresh.model.embed_tokens.weight = torch.nn.Parameter(load_file(emb_path)["model.embed_tokens.weight"])
    loaded = PeftModel.from_pretrained(fresh, arts["adapter"]).eval()
    with torch.no_grad():
        got = loaded(input_ids=x).logits
    torch.testing.assert_close(got, expected)


# The 7B shapes of the paper's Table 6 (the models' published configs), built on the meta device: no weights.
SEVEN_B = {
    "llama2": ("LlamaConfig", dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                   num_attention_heads=32, num_key_value_heads=32, vocab_size=32000)),
    "mistral": ("MistralConfig", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                      num_attention_heads=32, num_key_value_heads=8, vocab_size=32000)),
    "falcon": ("FalconConfig", dict(hidden_size=4544, num_hidden_layers=32, num_attention_heads=71,
                                    multi_query=True, new_decoder_architecture=False, vocab_size=65024)),
}


def _lora_count(shape: str, lora) -> int:
    import transformers
    from transformers import AutoModelForCausalLM

    from lingotune.methods.base import add_lora

    name, kw = SEVEN_B[shape]
    with torch.device("meta"):
        model = add_lora(AutoModelForCausalLM.from_config(getattr(transformers, name)(**kw)), lora)
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


@pytest.mark.parametrize("recipe_file, shape, table6", [
    ("paper_llama2_7b_alpaca_ru.yaml", "llama2", 67_108_864),   # Table 6: 67.1M
    ("paper_mistral7b_alpaca_ru.yaml", "mistral", 54_525_952),  # Table 6: 54.52M
    ("paper_mistral7b_openorca_ar.yaml", "mistral", 54_525_952),
])
def test_paper_recipes_lora_has_the_table6_trainable_count(recipe_file, shape, table6):
    """The paper recipes' LoRA (r=128 on PEFT's default targets q_proj, v_proj) on the Llama-2-7B and
    Mistral-7B shapes (Mistral's GQA makes v_proj 4096 -> 1024): exactly the paper's Table 6 counts."""
    from lingotune.recipe import DEFAULT_RECIPE, load_recipe

    lora = load_recipe(DEFAULT_RECIPE.parent / recipe_file).method.lora
    assert _lora_count(shape, lora) == table6


def test_only_r128_on_pefts_defaults_fits_falcon_too():
    """Falcon-7B's Table 6 count (37.74M) fits r=128 on query_key_value (PEFT's default for Falcon); the other
    reading, r=64 on every attention projection (query_key_value and dense), gives 37.49M."""
    from lingotune.recipe import LoraSettings

    assert _lora_count("falcon", LoraSettings(r=128, target_modules=["query_key_value"])) == 37_748_736
    assert _lora_count("falcon", LoraSettings(r=64, target_modules=["query_key_value", "dense"])) == 37_486_592
