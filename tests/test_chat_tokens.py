"""`model.chat_tokens: chatml` (paper appendix A.6): ChatML's tokens and template for a base model."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from helpers import fresh_tiny, make_recipe, tiny_llama_config, train_one
from lingotune.cli import app
from lingotune.vocab import CHATML_TEMPLATE, CHATML_TOKENS, init_new_rows, with_chat_tokens

TEXTS = ["The cat sat on the mat and looked at the door.", "We went to the market on Sunday to buy bread.",
         "Кошка сидела на ковре и смотрела на дверь.", "В воскресенье мы ходили на рынок за хлебом и молоком.",
         "Да или нет? Ответь одним словом.", "Москва — столица России."] * 20


def base_tokenizer():
    """A small byte-level BPE of a base model: an end-of-text token, no ChatML tokens, no chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from lingotune.models import prepare_tokenizer

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(TEXTS, trainer)
    return prepare_tokenizer(PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>"))


@pytest.fixture(scope="module")
def base_model_dir(tmp_path_factory):
    """A tiny random Llama (tied embeddings) with `base_tokenizer`, saved as a base model is."""
    tok = base_tokenizer()
    tok.chat_template = None
    torch.manual_seed(0)
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(tiny_llama_config(vocab_size=len(tok), pad_token_id=0, eos_token_id=0, bos_token_id=0,
                                               max_position_embeddings=512))
    out = tmp_path_factory.mktemp("base")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_chatml_tokens_are_single_special_tokens_and_the_template_renders_them():
    old = base_tokenizer()
    new, report = with_chat_tokens(old)
    assert report["added"] == list(CHATML_TOKENS) and report["template"] == "chatml"
    n = len(old)
    assert len(new) == n + 2 and len(base_tokenizer()) == n  # the original is not changed
    ids = new.convert_tokens_to_ids(list(CHATML_TOKENS))
    assert ids == [n, n + 1] and all(t in new.all_special_tokens for t in CHATML_TOKENS)
    text = new.apply_chat_template([{"role": "user", "content": "Привет"}], add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nПривет<|im_end|>\n<|im_start|>assistant\n"
    enc = new(text, add_special_tokens=False)["input_ids"]
    assert enc.count(n) == 2 and enc.count(n + 1) == 1
    assert new.decode(enc, skip_special_tokens=True) == "user\nПривет\nassistant\n"


def test_a_template_is_kept_unless_chatml_is_asked(tmp_path):
    from lingotune.run import adapt_vocabulary

    built = SimpleNamespace(text=[])
    own = base_tokenizer()
    own.chat_template = "{% for m in messages %}### {{ m.role }}: {{ m.content }}\n{% endfor %}"
    assert adapt_vocabulary(make_recipe(), own, built) == (None, None)  # default: the model's own template
    fallback = base_tokenizer()
    assert fallback.init_kwargs.get("lingotune_fallback_template")
    assert adapt_vocabulary(make_recipe(), fallback, built) == (None, None)
    for tok in (own, fallback):  # chatml asked: a base model's template (own or lingotune's fallback) becomes ChatML
        new, report = adapt_vocabulary(make_recipe(**{"model.chat_tokens": "chatml"}), tok, built)
        assert new.chat_template == CHATML_TEMPLATE and report["template"] == "chatml"
        assert not new.init_kwargs.get("lingotune_fallback_template")
    chatml_own = with_chat_tokens(base_tokenizer())[0]
    chatml_own.chat_template = CHATML_TEMPLATE + "{# its own #}"
    again, report = with_chat_tokens(chatml_own)  # already ChatML, tokens and template: kept as they are
    assert report == {"chat_tokens": "chatml", "added": [], "template": "own"}
    assert again.chat_template == chatml_own.chat_template and len(again) == len(chatml_own)
    with pytest.raises(Exception, match="chat_tokens"):
        make_recipe(**{"model.chat_tokens": "alpaca"})


@pytest.mark.parametrize("tied", [True, False])
def test_new_rows_start_at_the_mean_of_the_old_rows(tied):
    old = base_tokenizer()
    new, _ = with_chat_tokens(old)
    model = fresh_tiny(vocab_size=len(old), tie_word_embeddings=tied)
    emb0 = model.get_input_embeddings().weight.detach().clone()
    head0 = model.get_output_embeddings().weight.detach().clone()
    counts = init_new_rows(model, old, new)
    assert counts["new_special_tokens"] == 2 and counts["set_to_mean"] == 0 and counts["unspellable"] == 0
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    n = len(old)
    assert emb.shape[0] == head.shape[0] == model.config.vocab_size == n + 2
    torch.testing.assert_close(emb[:n], emb0, rtol=0, atol=0)
    for i in (n, n + 1):  # the mean in float64, stored in the weight's dtype
        torch.testing.assert_close(emb[i], emb0.double().mean(0).float(), rtol=0, atol=0)
        torch.testing.assert_close(head[i], head0.double().mean(0).float(), rtol=0, atol=0)
    assert (head.data_ptr() == emb.data_ptr()) == tied


def test_stage1_trains_the_new_rows_and_nothing_else_moves(tmp_path):
    from lingotune import methods
    from lingotune.data.batches import tokenize_example
    from lingotune.data.records import Example

    old = base_tokenizer()
    new, _ = with_chat_tokens(old)
    model = fresh_tiny(vocab_size=len(old))
    init_new_rows(model, old, new)
    examples = [Example(messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a}])
                for q, a in [("Да или нет?", "Да."), ("Столица России?", "Москва."), ("Кошка?", "Сидела на ковре.")]]
    items = [tokenize_example(ex, new, 128) for ex in examples]
    before = copy.deepcopy(model.state_dict())
    recipe = make_recipe()
    stage1 = methods.stages("dpart", recipe)[0]
    assert stage1.row_sparse
    model, _ = train_one(model, stage1, recipe, tmp_path, items=items, steps=2)
    after = model.state_dict()
    emb = "model.embed_tokens.weight"
    for k in before:
        if k != emb:
            assert torch.equal(before[k], after[k]), f"{k} changed"
    changed = (before[emb] != after[emb]).any(dim=1)
    n = len(old)
    assert changed[n] and changed[n + 1]  # <|im_start|> and <|im_end|> trained
    used = {i for it in items for i in it["input_ids"]}
    assert not changed[[i for i in range(n + 2) if i not in used]].any()  # rows no batch used stay bit-identical


def test_generation_stops_at_im_end(monkeypatch):
    from lingotune import inference

    old = base_tokenizer()
    tok, _ = with_chat_tokens(old)
    model = fresh_tiny(vocab_size=len(tok), eos_token_id=0)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert inference.stop_ids(model, tok) == [0, im_end]  # the model's eos (<|endoftext|>) and <|im_end|>
    answer = tok("Да", add_special_tokens=False)["input_ids"]
    script = answer + [im_end] + tok(" и ещё много слов", add_special_tokens=False)["input_ids"]
    prompt = tok(inference.chat_text(tok, [{"role": "user", "content": "Да?"}]), add_special_tokens=False)["input_ids"]
    real_forward = model.forward

    def scripted(*args, **kw):  # the real forward, its last logits replaced: the model "says" `script`
        out = real_forward(*args, **kw)
        step = kw["attention_mask"].shape[1] - len(prompt)  # tokens generated so far
        forced = torch.full_like(out.logits[:, -1], -1e4)
        forced[:, script[min(step, len(script) - 1)]] = 1e4
        out.logits[:, -1] = forced
        return out

    monkeypatch.setattr(model, "forward", scripted)
    got = inference.generate(model, tok, [prompt], 12)
    assert got == ["Да"]
    streamed = inference.stream(model, tok, prompt, 12, lambda piece: None)  # a reply `lingotune chat` shows
    assert (streamed.text, streamed.new_tokens) == ("Да", len(answer) + 1)


def test_a_chatml_run_trains_saves_and_exports_with_the_tokens(base_model_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lingotune import chat, inference
    from lingotune.models import apply_adapter, apply_embeddings

    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, [
        "train", "--out", "r", "--set", f"model.source={base_model_dir}", "--set", "model.chat_tokens=chatml",
        "--set", "data.max_stage1=8", "--set", "data.max_stage2=4", "--set", "method.stage1.steps=2",
        "--set", "method.stage2.steps=2", "--set", "train.batch_size=2", "--set", "train.max_len=256"])
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["vocab"]["added"] == list(CHATML_TOKENS) and results["vocab"]["init"]["new_special_tokens"] == 2
    n = len(AutoTokenizer.from_pretrained(base_model_dir))
    saved = AutoTokenizer.from_pretrained(tmp_path / "r" / "tokenizer")
    assert saved.convert_tokens_to_ids(list(CHATML_TOKENS)) == [n, n + 1] and saved.chat_template == CHATML_TEMPLATE
    res = CliRunner().invoke(app, ["export", "r", "--out", "x"])
    assert res.exit_code == 0, res.output
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "x")
    tok = AutoTokenizer.from_pretrained(tmp_path / "x")
    assert len(tok) == n + 2 and tok.chat_template == CHATML_TEMPLATE and tok.convert_tokens_to_ids("<|im_end|>") == n + 1
    assert n + 1 in exported.generation_config.eos_token_id
    # the reference, built by hand: the base resized, the new rows at the mean of the old ones, the run's artefacts
    ref = AutoModelForCausalLM.from_pretrained(base_model_dir)
    mean = ref.model.embed_tokens.weight.detach().double().mean(0).float()  # in float64, stored in float32
    ref.resize_token_embeddings(n + 2, mean_resizing=False)
    with torch.no_grad():
        ref.model.embed_tokens.weight[n:] = mean
    apply_embeddings(ref, tmp_path / "r" / "dpart" / "stage2" / "embeddings.safetensors")
    ref = apply_adapter(ref, tmp_path / "r" / "dpart" / "stage2" / "adapter").eval()
    text = tok.apply_chat_template([{"role": "user", "content": "Столица России?"}, {"role": "assistant", "content":
                                    "Москва."}], tokenize=False)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    assert (ids == n).sum() == 2 and (ids == n + 1).sum() == 2
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, ref(ids).logits, rtol=0, atol=1e-4)
    assert not torch.equal(exported.model.embed_tokens.weight[n], mean)  # stage 1 trained the new rows
    torch.testing.assert_close(exported.lm_head.weight[n], mean, rtol=0, atol=0)  # untie: the head kept its init
    chatted = chat.load("r", "adapted")  # `lingotune chat r`: the same model and tokenizer as the export
    assert len(chatted.tok) == n + 2 and chatted.tok.chat_template == CHATML_TEMPLATE
    assert n + 1 in inference.stop_ids(chatted.model, chatted.tok)
    with torch.no_grad():
        torch.testing.assert_close(chatted.model(ids).logits, exported(ids).logits, rtol=0, atol=1e-5)


def test_old_rows_keep_their_values_even_where_the_old_model_spells_the_token_otherwise():
    """As in Gemma-3 (260 such tokens): 'bc' is in the vocabulary but no merge makes it, so the model spells it
    'b' 'c'; adding ChatML's tokens must not re-initialise its row."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(vocab={"<s>": 0, "a": 1, "b": 2, "c": 3, "ab": 4, "bc": 5}, merges=[("a", "b")]))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.decoder = decoders.BPEDecoder()
    old = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>")
    assert old.tokenize("bc") == ["b", "c"]
    new, _ = with_chat_tokens(old)
    model = fresh_tiny(vocab_size=6)
    before = model.get_input_embeddings().weight.detach().clone()
    counts = init_new_rows(model, old, new)
    after = model.get_input_embeddings().weight
    assert counts["set_to_mean"] == 0 and counts["new_special_tokens"] == 2
    torch.testing.assert_close(after[:6], before, rtol=0, atol=0)
    torch.testing.assert_close(after[6], before.double().mean(0).float(), rtol=0, atol=0)
