"""The replacing vocabulary scenarios of issue 12: `bpe` and `unigram` (a vocabulary trained on the target
corpus replaces the old one) and `optimize` (the old one cut to its most used tokens, then extended);
the whole matrix rebuilt as the mean of the old rows that spell each new token."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers.pre_tokenizers import ByteLevel
from typer.testing import CliRunner

from helpers import fresh_tiny
from lingotune.cli import app
from lingotune.vocab import (
    VocabError, byte_tokens, chars_per_token, init_new_rows, optimize, piece_map, prune, token_strings, token_use,
    train_vocab, with_merges,
)
from test_vocab import ENGLISH, RUSSIAN, english_bpe

ODD = "Кошка sat 日本 ☃!"  # Cyrillic, Latin, and characters no corpus here holds


@pytest.fixture(scope="module")
def base_tok():
    return english_bpe()


def _json(tok, part):
    return json.loads(tok.backend_tokenizer.to_str()).get(part)


# ----------------------------------------------------------------------------- bpe, unigram


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_a_trained_vocabulary_replaces_the_old_in_its_family(base_tok, kind):
    new, report = train_vocab(base_tok, RUSSIAN, kind, size=400)
    assert len(new) == report["vocab_after"] == 400 and report["model"] == ("BPE" if kind == "bpe" else "Unigram")
    assert _json(new, "model")["type"] == report["model"]
    for part in ("normalizer", "pre_tokenizer", "decoder", "post_processor"):  # byte-level stays byte-level
        assert _json(new, part) == _json(base_tok, part), part
    for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):  # special tokens at their old ids
        assert new.convert_tokens_to_ids(t) == base_tok.convert_tokens_to_ids(t)
    assert report["special_tokens_moved"] == {}
    assert new.chat_template == base_tok.chat_template and new.special_tokens_map == base_tok.special_tokens_map
    assert new.all_special_tokens == base_tok.all_special_tokens
    vocab = new.get_vocab()
    assert all(ch in vocab for ch in ByteLevel.alphabet())  # all 256 bytes
    for text in (ODD, *ENGLISH[:6], *RUSSIAN[:8]):  # no text is unknown: every one decodes back to itself
        assert new.decode(new(text, add_special_tokens=False)["input_ids"]) == text
    assert chars_per_token(new, RUSSIAN) > 1.5 * chars_per_token(base_tok, RUSSIAN)
    msgs = [{"role": "user", "content": "Привет"}]
    assert new.apply_chat_template(msgs, tokenize=False) == base_tok.apply_chat_template(msgs, tokenize=False)


def test_special_tokens_past_the_new_size_go_last_and_the_post_processor_follows():
    """'<s>' is added after training (id 300) and the post-processor puts it first: in a vocabulary of 280
    it goes to the last id, and the post-processor writes that id."""
    from tokenizers import processors

    old = english_bpe(300)
    assert len(old) == 300
    old.add_special_tokens({"bos_token": "<s>"})
    old.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 300)])
    assert old("the")["input_ids"][0] == 300
    new, report = train_vocab(old, RUSSIAN, "bpe", size=280)
    assert report["special_tokens_moved"] == {"<s>": [300, 279]} and len(new) == 280
    assert new.bos_token == "<s>" and new.bos_token_id == 279 and new("кошка")["input_ids"][0] == 279
    assert [new.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [0, 1, 2]


def _sentencepiece_style(byte_fallback: bool):
    """A Llama-2-style tokenizer: no pre-tokenizer, the normalizer writes '▁', BPE with byte fallback (the 256
    <0x..> tokens appended) or an unknown token, trained on English."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    raw.train_from_iterator(ENGLISH, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"],
                                                         show_progress=False))
    spec = json.loads(raw.to_str())
    spec["normalizer"] = json.loads(normalizers.Sequence([normalizers.Prepend("▁"),
                                                          normalizers.Replace(" ", "▁")]).__getstate__())
    spec["pre_tokenizer"] = None
    spec["decoder"] = json.loads(decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                                    decoders.Strip(" ", 1, 0)]).__getstate__())
    if byte_fallback:
        spec["model"]["byte_fallback"] = True
        n = len(spec["model"]["vocab"])
        spec["model"]["vocab"] |= {t: n + i for i, t in enumerate(byte_tokens())}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
@pytest.mark.parametrize("fallback", [True, False], ids=["byte-fallback", "unk"])
def test_a_sentencepiece_style_vocabulary_keeps_its_marker_and_byte_fallback(kind, fallback):
    old = _sentencepiece_style(fallback)
    assert old.tokenize("the cat")[0].startswith("▁")
    size = (259 if fallback else 3) + 60
    new, report = train_vocab(old, RUSSIAN, kind, size=size)
    assert len(new) == report["vocab_after"] == size
    for part in ("normalizer", "pre_tokenizer", "decoder"):
        assert _json(new, part) == _json(old, part), part
    assert [new.convert_tokens_to_ids(t) for t in ("<unk>", "<s>", "</s>")] == [0, 1, 2]
    assert all("▁" not in t[1:] for t in new.get_vocab())  # learned within words
    if fallback:  # the byte tokens right after the special tokens; unseen characters fall back to them
        assert _json(new, "model")["byte_fallback"] and new.convert_tokens_to_ids(byte_tokens()) == list(range(3, 259))
        assert new.decode(new(ODD, add_special_tokens=False)["input_ids"]) == ODD
    else:
        assert new.unk_token_id in new(ODD, add_special_tokens=False)["input_ids"]
    assert new.decode(new(RUSSIAN[0], add_special_tokens=False)["input_ids"]) == RUSSIAN[0]
    assert chars_per_token(new, RUSSIAN) > chars_per_token(old, RUSSIAN)


def test_a_size_below_the_special_tokens_and_bytes_is_one_line(base_tok):
    with pytest.raises(VocabError, match=r"^vocab.size: 258 is smaller than the 3 special tokens \+ 256 byte-level "
                                         r"symbols the vocabulary must hold \(259\)$"):
        train_vocab(base_tok, RUSSIAN, "bpe", size=258)
    with pytest.raises(VocabError, match=r"vocab.size: 2 is smaller than the 3 special tokens the vocabulary"):
        train_vocab(_sentencepiece_style(False), RUSSIAN, "unigram", size=2)


# ----------------------------------------------------------------------------- optimize


def test_prune_keeps_the_most_used_tokens_with_their_bpe_paths(base_tok):
    use = token_use(base_tok, ["the cat"] * 5 + ENGLISH[:6])
    new, report = prune(base_tok, 300, use)
    vocab, old_vocab = new.get_vocab(), base_tok.get_vocab()
    assert len(new) == report["kept"] == 300 and report["dropped"] == len(base_tok) - 300
    assert {"<|endoftext|>", "<|im_start|>", "<|im_end|>"} <= set(vocab)
    assert all(ch in vocab for ch in ByteLevel.alphabet())  # every base symbol
    model = new.backend_tokenizer.model
    regular = [t for t in vocab if t not in new.all_special_tokens]
    assert all([x.value for x in model.tokenize(t)] == [t] for t in regular)  # every kept token is reachable
    assert sorted(vocab, key=vocab.get) == sorted(vocab, key=old_vocab.get)  # the kept tokens keep their order
    merges = _json(new, "model")["merges"]
    assert all(a in vocab and b in vocab and a + b in vocab for a, b in merges) and len(merges) == report["merges_kept"]
    assert {"Ġcat", "Ġthe", "t", "he", "."} <= set(vocab)  # the five most used (6, 6, 5, 5, 5 times) survive
    # with room for most used tokens: a text segments into the same strings exactly when its old tokens all survive
    new, _ = prune(base_tok, 380, use)
    kept_ids = {old_vocab[t] for t in new.get_vocab()}
    survive = [set(ids) <= kept_ids for ids in base_tok(ENGLISH[:6], add_special_tokens=False)["input_ids"]]
    same = [a == b for a, b in zip(token_strings(base_tok, ENGLISH[:6]), token_strings(new, ENGLISH[:6]))]
    assert same == survive and 0 < sum(same) < 6


def test_optimize_cuts_then_extends_and_counts_the_english_lines_it_changes(base_tok):
    new, report = optimize(base_tok, RUSSIAN, "ru", keep=370, n_new=40, english=ENGLISH)
    assert report["scenario"] == "optimize" and report["kept"] == 370 and report["new_tokens"] == 40
    assert len(new) == report["vocab_after"] == 410
    changed = sum(a != b for a, b in zip(token_strings(base_tok, ENGLISH), token_strings(new, ENGLISH)))
    assert report["english_texts"] == len(ENGLISH) and report["english_texts_changed"] == changed
    assert chars_per_token(new, RUSSIAN) > 1.5 * chars_per_token(base_tok, RUSSIAN)
    for text in (ODD, *ENGLISH[:6]):
        assert new.decode(new(text, add_special_tokens=False)["input_ids"]) == text
    assert new.chat_template == base_tok.chat_template


def test_keep_below_the_special_tokens_and_base_symbols_is_one_line(base_tok):
    with pytest.raises(VocabError, match=r"^vocab.keep: 200 is smaller than the 3 special tokens \+ 256 base symbols "
                                         r"the vocabulary must keep \(259\)$"):
        optimize(base_tok, RUSSIAN, "ru", keep=200, n_new=10)


# ----------------------------------------------------------------------------- rows


def _hand_made():
    """Old: '<s>' 'a' 'b' 'c' 'ab' 'ca' (merges a+b, c+a), whitespace-split, BPE."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(vocab={"<s>": 0, "a": 1, "b": 2, "c": 3, "ab": 4, "ca": 5}, merges=[("a", "b"), ("c", "a")]))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.decoder = decoders.BPEDecoder()
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>")


def _replaced(old, scenario):
    """(new tokenizer, {new id: the old ids whose rows it is the mean of}), built by hand per scenario."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if scenario == "optimize":  # 'ca' is never used: cut (5 kept), then 'abc' = ab + c appended
        pruned, _ = prune(old, 5, token_use(old, ["ab c ab a b"]))
        assert pruned.convert_ids_to_tokens(list(range(5))) == ["<s>", "a", "b", "c", "ab"]
        return with_merges(pruned, [("ab", "c")], ["abc"]), {0: [0], 1: [1], 2: [2], 3: [3], 4: [4], 5: [4, 3]}
    if scenario == "bpe":  # 5 rows from 6: '<s>' moves to the end, 'bc' = b + c
        model = models.BPE(vocab={"c": 0, "b": 1, "a": 2, "bc": 3, "<s>": 4}, merges=[("b", "c")])
        want = {0: [3], 1: [2], 2: [1], 3: [2, 3], 4: [0]}
    else:  # unigram: 'abc' = ab + c
        model = models.Unigram([("<s>", 0.0), ("abc", -1.0), ("c", -2.0), ("b", -2.0), ("a", -2.0)], unk_id=None)
        want = {0: [0], 1: [4, 3], 2: [3], 3: [2], 4: [1]}
    raw = Tokenizer(model)
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.decoder = decoders.BPEDecoder()
    raw.add_special_tokens(["<s>"])
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>"), want


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("scenario", ["bpe", "unigram", "optimize"])
def test_the_whole_matrix_is_rebuilt_as_the_mean_of_the_old_rows(scenario, tied):
    old = _hand_made()
    new, want = _replaced(old, scenario)
    assert piece_map(new, old) == [want[i] for i in range(len(new))]
    model = fresh_tiny(vocab_size=6, tie=tied, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if not tied:  # a head unlike the embeddings
        torch.nn.init.normal_(model.lm_head.weight, generator=torch.Generator().manual_seed(3))
    emb0, head0 = model.get_input_embeddings().weight.detach().clone(), model.lm_head.weight.detach().clone()
    counts = init_new_rows(model, old, new)
    n = len(new)
    multi = [i for i in range(n) if len(want[i]) != 1]  # spelled by several old tokens: method.lep.rows new trains them
    assert counts == {"rows": n, "replaced": True, "kept": 0, "set_to_mean": n, "new_special_tokens": 0,
                      "unspellable": 0, "tied": tied, "new_rows": len(multi)}
    assert model.lingotune_new_rows == multi and multi
    emb, head = model.get_input_embeddings().weight, model.lm_head.weight
    assert emb.shape == head.shape == (n, 32) and model.config.vocab_size == n
    assert (emb.data_ptr() == head.data_ptr()) == tied == model.config.tie_word_embeddings
    for i, rows in want.items():  # by hand: the sum of the old rows in float64 over their count, stored in float32
        torch.testing.assert_close(emb[i], (sum(emb0[j].double() for j in rows) / len(rows)).float(), rtol=0, atol=0)
        torch.testing.assert_close(head[i], (sum(head0[j].double() for j in rows) / len(rows)).float(), rtol=0, atol=0)
    s = new.convert_tokens_to_ids("<s>")  # the special token's old row, and the config's ids follow it
    assert torch.equal(emb[s], emb0[0]) and torch.equal(head[s], head0[0])
    assert model.config.bos_token_id == model.config.eos_token_id == model.config.pad_token_id == s
    with torch.no_grad():
        assert model(torch.tensor([[s, n - 1]])).logits.shape == (1, 2, n)


def test_a_special_token_new_to_the_vocabulary_starts_at_the_mean_of_all_old_rows(base_tok):
    new, _ = train_vocab(base_tok, RUSSIAN, "bpe", size=300)
    new.add_special_tokens({"additional_special_tokens": ["<ru>"]}, replace_extra_special_tokens=False)
    model = fresh_tiny(vocab_size=len(base_tok))
    emb0 = model.get_input_embeddings().weight.detach().clone()
    counts = init_new_rows(model, base_tok, new)
    assert counts["new_special_tokens"] == 1 and counts["rows"] == 301 and counts["replaced"]
    torch.testing.assert_close(model.get_input_embeddings().weight[300], emb0.double().mean(0).float(), rtol=0, atol=0)


# ----------------------------------------------------------------------------- the command


def _vocab_train(tmp_path, model_dir, *args, corpus=RUSSIAN):
    (tmp_path / "corpus.txt").write_text("\n".join(corpus), encoding="utf-8")
    return CliRunner().invoke(app, ["vocab", "train", "--model", str(model_dir), "--lang", "ru", "--corpus",
                                    str(tmp_path / "corpus.txt"), "--out", str(tmp_path / "v"), *args])


@pytest.mark.parametrize("scenario, args, size", [("bpe", ["--size", "400"], 400), ("unigram", ["--size", "400"], 400),
                                                  ("optimize", ["--keep", "700", "--add", "30"], 730)])
def test_vocab_train_writes_a_loadable_model_and_tokenizer(tiny_model_dir, tmp_path, scenario, args, size):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    (tmp_path / "en.txt").write_text("\n".join(ENGLISH), encoding="utf-8")
    res = _vocab_train(tmp_path, tiny_model_dir, "--scenario", scenario, *args, "--english", str(tmp_path / "en.txt"),
                       "--init-model")
    assert res.exit_code == 0, res.output
    tok = AutoTokenizer.from_pretrained(tmp_path / "v" / "model")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "v" / "model")
    assert len(tok) == size == model.get_input_embeddings().num_embeddings == model.config.vocab_size
    report = json.loads((tmp_path / "v" / "vocab_report.json").read_text())
    assert report["scenario"] == scenario and report["init"]["replaced"] and report["init"]["rows"] == size
    assert report["english_corpus"] == [str(tmp_path / "en.txt")]
    assert tok.decode(tok(RUSSIAN[0], add_special_tokens=False)["input_ids"]) == RUSSIAN[0]


@pytest.mark.parametrize("args, corpus, expected", [
    (["--scenario", "bpe", "--size", "100"], RUSSIAN, "vocab.size: 100 is smaller than the 17 special tokens + 256 byte"),
    (["--scenario", "optimize", "--keep", "100"], RUSSIAN, "vocab.keep: 100 is smaller than the 17 special tokens"),
    (["--scenario", "magic"], RUSSIAN, "--scenario 'magic': use one of extend, bpe, unigram, optimize"),
    (["--scenario", "unigram"], ENGLISH, "corpus: no text in the Cyrillic script of language 'ru'"),
], ids=["size", "keep", "scenario", "script"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_model_dir, tmp_path, args, corpus, expected):
    res = _vocab_train(tmp_path, tiny_model_dir, *args, corpus=corpus)
    errors = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(errors) == 1 and expected in errors[0], res.output
    assert not (tmp_path / "v").exists()


def test_an_unknown_scenario_in_a_recipe_is_one_line_and_writes_nothing(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["run", "--out", "r", "--set", f"model.source={tiny_model_dir}",
                                   "--set", "vocab.scenario=wordpiece"])
    errors = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(errors) == 1 and "vocab.scenario" in errors[0], res.output
    assert "'extend', 'bpe', 'unigram' or 'optimize'" in errors[0] and not (tmp_path / "r").exists()


def test_a_corpus_mostly_in_another_script_is_refused():
    from lingotune.vocab import check_script

    check_script(RUSSIAN + ENGLISH[:10], "ru")
    with pytest.raises(VocabError, match=r"corpus: only \d+% of its letters are in the Cyrillic script of language 'ru'"):
        check_script(RUSSIAN[:8] + ENGLISH, "ru")


# ----------------------------------------------------------------------------- through the pipeline

SMALL = ["--set", "method.name=lep", "--set", "method.lep.steps=2", "--set", "train.batch_size=2",
         "--set", "train.max_len=64", "--set", "eval.tasks=[starter_heldout]", "--set", "eval.limit=2",
         "--set", "eval.max_new_tokens=2", "--set", "output.sample_prompts=0", "--set", "train.precision=fp32",
         "--set", "data.sources=[{format: starter, use: text, limit: 60}]"]


@pytest.mark.parametrize("scenario, sets, mode", [
    ("bpe", ["vocab.size=500"], "conversion"),
    ("unigram", ["vocab.size=500"], "overlap"),
    ("optimize", ["vocab.keep=600", "vocab.add=20"], "conversion"),
])
def test_lep_run_with_a_replaced_vocabulary_trains_and_propagates(tiny_model_dir, tmp_path, monkeypatch, scenario, sets,
                                                                  mode):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.chdir(tmp_path)
    sets = [x for s in sets for x in ("--set", s)]
    res = CliRunner().invoke(app, ["run", "--out", "r", "--set", f"model.source={tiny_model_dir}", *SMALL,
                                   "--set", f"vocab.scenario={scenario}", *sets, "--set", f"propagate.instruct={tiny_model_dir}",
                                   "--set", f"propagate.mode={mode}"])
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    vocab = results["vocab"]
    assert vocab["scenario"] == scenario and vocab["init"]["replaced"] and vocab["init"]["rows"] == vocab["vocab_after"]
    out = tmp_path / "r" / "lep" / "embeddings" / "model"
    tok, model = AutoTokenizer.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out)
    assert len(tok) == model.config.vocab_size == vocab["vocab_after"] < 49152
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "embed_tokens" not in k and "lm_head" not in k)
    assert set(results["evals"]) == {"untouched", "lep", "instruct", "propagated"}
    prop = results["propagation"]
    assert prop["mode"] == mode and prop["vocab_size"] == len(tok)
    assert all(f["residual"] is not None and f["rows"] >= 32 for f in prop["fits"].values())
    propagated = AutoModelForCausalLM.from_pretrained(tmp_path / "r" / "propagated")
    assert propagated.config.vocab_size == len(AutoTokenizer.from_pretrained(tmp_path / "r" / "propagated"))
