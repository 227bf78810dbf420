"""Embedding propagation (LEP step 4): known maps recovered, swap, copies, ties, dtypes, round trip, CLI.

The models are tiny random Llamas built in memory; the vocabularies are small byte-level BPEs trained
here: an English "old" one (base and instruct; the instruct adds two chat tokens) and a larger
"new" one trained on Russian and English (the adapted model), which also has a special token `<ru>`
the old vocabulary cannot spell.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

from helpers import fresh_tiny
from lingotune.cli import app
from lingotune.propagate import PropagationError, fit_map, mean_of_pieces, propagate, save_propagation
from lingotune.vocab import piece_map

EN = ["the cat sat on the mat and the dog sat on the log", "a quick brown fox jumps over the lazy dog",
      "there is a house in the middle of the town", "we went to the market to buy bread and milk",
      "the weather was cold and the wind was strong", "she reads a book every evening before sleep"]
RU = ["кошка сидела на ковре а собака сидела на бревне", "быстрая бурая лиса прыгает через ленивую собаку",
      "в середине города стоит дом", "мы пошли на рынок купить хлеба и молока",
      "погода была холодной и ветер был сильным", "она читает книгу каждый вечер перед сном", *EN[:2]]
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CHAT = ["<|im_start|>", "<|im_end|>"]


def _bpe(texts, size, specials=("<unk>", "<s>", "</s>")):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=size, special_tokens=list(specials), show_progress=False,
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def toks():
    """(old, instruct, new) tokenizers: the instruct one is the old one plus chat tokens and a template."""
    old = _bpe(EN, 300)
    instruct = copy.deepcopy(old)
    instruct.add_special_tokens({"eos_token": "<|im_end|>", "additional_special_tokens": CHAT})
    instruct.chat_template = TEMPLATE
    return old, instruct, _bpe(RU, 360, ("<unk>", "<s>", "</s>", "<ru>"))


def _well_conditioned(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q * torch.linspace(0.5, 2.0, d, dtype=torch.float64)


def _set(weight, values) -> None:
    with torch.no_grad():
        weight.copy_(values.to(weight.dtype))


def _trio(toks, tie=True, adapted_tie=None, noise=0.0, head_dtype=None, dtype=torch.float64):
    """(base, adapted, instruct, maps): E_instruct = E_base @ A (+ noise) over the old rows, per matrix.

    In float64 by default, so that the instruct rows hold E_base @ A without float32 rounding."""
    old, instruct_tok, new = toks
    base = fresh_tiny(vocab_size=len(old), tie=tie).to(dtype)
    g = torch.Generator().manual_seed(1)
    if not tie:
        _set(base.lm_head.weight, 0.02 * torch.randn(base.lm_head.weight.shape, generator=g))
    instruct = copy.deepcopy(base)
    instruct.resize_token_embeddings(len(instruct_tok), mean_resizing=False)
    maps = {"input": _well_conditioned(32, 2), "head": _well_conditioned(32, 3)}
    slots = ("input",) if tie else ("input", "head")
    for slot in slots:
        source = (base.lm_head if slot == "head" else base.model.embed_tokens).weight.detach().double()
        target = (instruct.lm_head if slot == "head" else instruct.model.embed_tokens).weight
        values = source @ maps[slot] + noise * torch.randn(source.shape, generator=g, dtype=torch.float64)
        _set(target[: len(old)], values)
    if head_dtype is not None:
        instruct.lm_head.to(head_dtype)
    adapted = fresh_tiny(vocab_size=len(new), tie=tie if adapted_tie is None else adapted_tie).to(dtype)
    for w in {adapted.model.embed_tokens.weight.data_ptr(): adapted.model.embed_tokens.weight,
              adapted.lm_head.weight.data_ptr(): adapted.lm_head.weight}.values():
        _set(w, 0.02 * torch.randn(w.shape, generator=g))
    return base, adapted, instruct, maps


def _run(toks, mode, copy_rows="special", **trio):
    old, instruct_tok, new = toks
    base, adapted, instruct, maps = _trio(toks, **trio)
    adapted_rows = {"input": adapted.model.embed_tokens.weight.detach().double().clone(),
                    "head": adapted.lm_head.weight.detach().double().clone()}
    instruct_rows = {"input": instruct.model.embed_tokens.weight.detach().double().clone(),
                     "head": instruct.lm_head.weight.detach().double().clone()}
    result = propagate(base, adapted, new, instruct, instruct_tok, mode=mode, copy=copy_rows)
    return result, maps, adapted_rows, instruct_rows


def _out(result, slot):
    model = result.model
    return (model.lm_head if slot == "head" else model.model.embed_tokens).weight.detach().double()


# ----------------------------------------------------------------------------- the maps


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("mode", ["overlap", "conversion"])
def test_a_known_map_is_recovered_to_float64_precision(toks, mode, tie):
    result, maps, adapted, instruct = _run(toks, mode, copy_rows="special", tie=tie)
    new = toks[2]
    assert set(result.fits) == ({"tied"} if tie else {"input", "head"})
    specials = {new.convert_tokens_to_ids(t) for t in ("<unk>", "<s>", "</s>")}
    for slot, fit in result.fits.items():
        a = maps["head" if slot == "head" else "input"]
        print(f"{mode} {slot}: residual {fit.residual:.3e} over {fit.rows} rows, "
              f"max |W - A| {(fit.map - a).abs().max():.3e}")
        torch.testing.assert_close(fit.map, a, rtol=0, atol=1e-10)
        assert fit.residual < 1e-12
        got, want = _out(result, slot), adapted["head" if slot == "head" else "input"] @ a
        mapped = [i for i in range(len(new)) if i not in specials]
        torch.testing.assert_close(got[mapped], want[mapped], rtol=0, atol=1e-14)
        old_ids = [toks[1].convert_tokens_to_ids(new.convert_ids_to_tokens(i)) for i in sorted(specials)]
        torch.testing.assert_close(got[sorted(specials)], instruct[slot if slot == "head" else "input"][old_ids])
    expected_rows = 359 if mode == "conversion" else len(set(toks[0].get_vocab()) & set(new.get_vocab()))
    assert {f.rows for f in result.fits.values()} == {expected_rows}


@pytest.mark.parametrize("scenario", ["unigram", "optimize"])
@pytest.mark.parametrize("mode", ["overlap", "conversion"])
def test_a_known_map_is_recovered_under_a_replacing_vocabulary(toks, mode, scenario):
    """The adapted vocabulary replaces the old one (issue 12's `unigram`: another model type, its tokens not
    a superset, at other ids; `optimize`: the old one cut and extended, at new ids): both fits still recover A."""
    from lingotune.vocab import optimize, train_vocab

    old, instruct_tok, _ = toks
    new = train_vocab(old, RU, "unigram", size=330)[0] if scenario == "unigram" else \
        optimize(old, RU, "ru", keep=280, n_new=20)[0]
    assert not set(old.get_vocab().items()) <= set(new.get_vocab().items())
    result, maps, adapted, _ = _run((old, instruct_tok, new), mode, tie=False)
    specials = {new.convert_tokens_to_ids(t) for t in ("<unk>", "<s>", "</s>")}
    mapped = [i for i in range(len(new)) if i not in specials]
    for slot, fit in result.fits.items():
        torch.testing.assert_close(fit.map, maps[slot], rtol=0, atol=1e-10)
        assert fit.residual < 1e-12 and fit.rows >= 32
        torch.testing.assert_close(_out(result, slot)[mapped], (adapted[slot] @ maps[slot])[mapped], rtol=0, atol=1e-14)


def test_the_error_of_w_grows_with_the_noise_as_least_squares_predicts(toks):
    """Overlap: W - A = (X'X)^-1 X'N, so E||W - A||_F = sigma * sqrt(d * tr((X'X)^-1)) over the fitted rows X."""
    old, instruct_tok, new = toks
    base = fresh_tiny(vocab_size=len(old))
    shared = sorted(old.get_vocab()[t] for t in set(old.get_vocab()) & set(new.get_vocab()))
    x = base.model.embed_tokens.weight.detach().double()[shared]
    errors = {"overlap": [], "conversion": []}
    for sigma in (1e-4, 1e-3, 1e-2):
        predicted = sigma * (32 * torch.linalg.inv(x.T @ x).trace()).sqrt().item()
        for mode in errors:
            result, maps, _, _ = _run(toks, mode, noise=sigma)
            fit = result.fits["tied"]
            errors[mode].append(torch.linalg.norm(fit.map - maps["input"]).item())
            assert fit.residual > 0
        assert 0.8 < errors["overlap"][-1] / predicted < 1.25, (errors, predicted)
    for mode, err in errors.items():
        assert err[0] < err[1] < err[2], (mode, err)


def test_fit_map_and_conversion_are_plain_least_squares():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 4, generator=g, dtype=torch.float64)
    a = _well_conditioned(4, 5)
    fit = fit_map(x.float(), (x @ a).float())  # float32 inputs are fitted in float64
    assert fit.map.dtype == torch.float64 and fit.rows == 50
    torch.testing.assert_close(fit.map, a, rtol=0, atol=1e-5)
    c = mean_of_pieces(x, [[0, 1], [2], [], [3, 3, 4]])
    torch.testing.assert_close(c, torch.stack([x[:2].mean(0), x[2], torch.zeros(4), (2 * x[3] + x[4]) / 3]))


def test_swap_gives_exactly_the_adapted_rows(toks):
    for tie in (True, False):
        result, _, adapted, instruct = _run(toks, "swap", copy_rows="none", tie=tie)
        n = len(toks[2])
        for slot in ("input", "head"):
            out = _out(result, slot)
            assert torch.equal(out[:n], adapted[slot])
            chat = [toks[1].convert_tokens_to_ids(t) for t in result.added_from_instruct]
            assert torch.equal(out[n:], instruct[slot][chat])
        assert all(f.map is None and f.residual is None for f in result.fits.values())


def test_copy_rows_take_the_instruct_row_where_asked(toks):
    old, instruct_tok, new = toks
    pieces = piece_map(new, instruct_tok)
    single = [i for i, p in enumerate(pieces) if len(p) == 1]
    result, maps, adapted, instruct = _run(toks, "conversion", copy_rows="single")
    out = _out(result, "input")
    torch.testing.assert_close(out[single], instruct["input"][[pieces[i][0] for i in single]])
    assert result.rows_copied == len(single) + len(CHAT)
    ru = new.convert_tokens_to_ids("<ru>")
    assert pieces[ru] == [] and result.rows_without_spelling == 1
    torch.testing.assert_close(out[ru], adapted["input"][ru] @ maps["input"])  # no old spelling: mapped row


# ----------------------------------------------------------------------------- models and tokenizers


@pytest.mark.parametrize("tie, adapted_tie, tied", [(True, True, True), (False, False, False), (True, False, False)],
                         ids=["tied", "untied", "tied-instruct-untied-adapted"])
def test_a_tied_model_stays_tied_and_an_untied_one_does_not_become_so(toks, tie, adapted_tie, tied):
    result, maps, adapted, _ = _run(toks, "conversion", tie=tie, adapted_tie=adapted_tie)
    model = result.model
    same = model.model.embed_tokens.weight.data_ptr() == model.lm_head.weight.data_ptr()
    assert same == tied == result.tied == model.config.tie_word_embeddings
    n = len(toks[1]) - len(toks[0]) + len(toks[2])
    assert model.model.embed_tokens.weight.shape[0] == model.lm_head.weight.shape[0] == model.config.vocab_size == n
    if not tied:  # the head comes from the adapted head, by the head's own fit
        head = _out(result, "head")[: len(toks[2])]
        rows = [i for i in range(len(toks[2])) if i > 2]
        torch.testing.assert_close(head[rows], (adapted["head"] @ result.fits["head"].map)[rows])


def test_a_head_of_another_dtype_keeps_its_dtype(toks):
    result, maps, adapted, _ = _run(toks, "conversion", tie=False, head_dtype=torch.float32)
    assert result.model.lm_head.weight.dtype == torch.float32
    assert result.model.model.embed_tokens.weight.dtype == torch.float64
    torch.testing.assert_close(result.fits["input"].map, maps["input"], rtol=0, atol=1e-10)
    torch.testing.assert_close(result.fits["head"].map, maps["head"], rtol=0, atol=1e-6)  # a float32 target
    rows = list(range(3, len(toks[2])))
    want = (adapted["head"] @ result.fits["head"].map)[rows].float()  # mapped in float64, stored in the head's dtype
    assert torch.equal(result.model.lm_head.weight[rows], want)


def test_the_tokenizer_is_the_adapted_one_with_the_instruct_chat_tokens_and_template(toks):
    old, instruct_tok, new = toks
    result, _, _, _ = _run(toks, "conversion")
    tok = result.tokenizer
    assert len(tok) == len(new) + 2 and sorted(result.added_from_instruct) == sorted(CHAT)
    assert all(tok.convert_ids_to_tokens(i) == new.convert_ids_to_tokens(i) for i in range(len(new)))
    assert tok.chat_template == TEMPLATE and tok.eos_token == "<|im_end|>" and tok.bos_token == "<s>"
    assert tok.eos_token_id == len(new) + result.added_from_instruct.index("<|im_end|>")
    assert result.model.config.eos_token_id == tok.convert_tokens_to_ids("</s>")  # the config's id, moved
    assert "<|im_start|>" in tok.all_special_tokens


def test_the_special_token_map_is_the_instruct_ones_even_where_it_has_none():
    from lingotune.propagate import merged_tokenizer

    adapted = _bpe(RU, 300, ("<unk>", "<s>", "</s>", "<sep>"))
    adapted.add_special_tokens({"sep_token": "<sep>"})
    instruct = _bpe(EN, 300)
    instruct.bos_token = None
    instruct.chat_template = TEMPLATE
    tok = merged_tokenizer(adapted, instruct)
    assert tok.special_tokens_map == {"eos_token": "</s>", "unk_token": "<unk>"} and len(tok) == len(adapted)
    assert tok.bos_token is None and tok.sep_token is None and tok.chat_template == TEMPLATE


def test_a_propagated_model_round_trips_with_identical_logits(toks, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for tie in (True, False):
        result, _, _, _ = _run(toks, "conversion", tie=tie)
        out = tmp_path / f"out-{tie}"
        record = save_propagation(result, out, {"base": "b", "adapted": "a", "instruct": "i"})
        model = AutoModelForCausalLM.from_pretrained(out).eval()
        tok = AutoTokenizer.from_pretrained(out)
        ids = tok.apply_chat_template([{"role": "user", "content": "кошка sat on the mat"}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        assert ids.max() >= len(toks[2])  # the chat tokens are the instruct's, appended
        # every weight bit for bit; the logits to float64 rounding (transformers 5.25 loads the rotary buffer
        # inv_freq in fp32 where the in-memory model has fp64: last-bit differences of ~1e-16)
        saved, kept = model.state_dict(), result.model.state_dict()
        assert set(saved) == set(kept) and all(torch.equal(saved[k], kept[k]) for k in saved)
        with torch.no_grad():
            assert torch.allclose(model(ids).logits, result.model.eval()(ids).logits, rtol=0, atol=1e-12)
        assert (model.model.embed_tokens.weight.data_ptr() == model.lm_head.weight.data_ptr()) == tie
        assert tok.chat_template == TEMPLATE and tok.eos_token == "<|im_end|>" and len(tok) == len(result.tokenizer)
        written = json.loads((out / "propagation.json").read_text())
        assert written == record and written["mode"] == "conversion" and written["sources"]["instruct"] == "i"
        assert set(written["fits"]) == ({"tied"} if tie else {"input", "head"})
        assert not out.with_name(out.name + ".tmp").exists()


def test_too_few_shared_tokens_for_overlap_is_an_error(toks):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"<unk>": 0, **{"ё" * k: k for k in range(1, 40)}}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    disjoint = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>")
    base, _, instruct, _ = _trio(toks)
    adapted = fresh_tiny(vocab_size=len(disjoint)).double()
    with pytest.raises(PropagationError, match="--mode overlap: only 1 rows"):  # <unk> alone
        propagate(base, adapted, disjoint, instruct, toks[1], mode="overlap")


# ----------------------------------------------------------------------------- the command


def _save(model, tok, path):
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def dirs(toks, tmp_path_factory):
    """Model directories: base, adapted, instruct, and the bad ones."""
    from transformers import MistralConfig, MistralForCausalLM

    old, instruct_tok, new = toks
    root = tmp_path_factory.mktemp("models")
    base, adapted, instruct, _ = _trio(toks, dtype=torch.float32)
    no_template = copy.deepcopy(instruct_tok)
    no_template.chat_template = None
    mistral = MistralForCausalLM(MistralConfig(vocab_size=len(instruct_tok), hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2))
    return {
        "base": _save(base, old, root / "base"),
        "adapted": _save(adapted, new, root / "adapted"),
        "instruct": _save(instruct, instruct_tok, root / "instruct"),
        "mistral": _save(mistral, instruct_tok, root / "mistral"),
        "wide": _save(fresh_tiny(vocab_size=len(instruct_tok), hidden_size=64), instruct_tok, root / "wide"),
        "short": _save(fresh_tiny(vocab_size=len(new) - 8), new, root / "short"),
        "no_template": _save(instruct, no_template, root / "no_template"),
    }


def _invoke(dirs, out, *extra, base="base", adapted="adapted", instruct="instruct"):
    return CliRunner().invoke(app, ["propagate", "--base", dirs[base], "--adapted", dirs[adapted],
                                    "--instruct", dirs[instruct], "--out", str(out), *extra])


def test_the_command_writes_a_loadable_model(dirs, tmp_path):
    from lingotune.models import load_model

    out = tmp_path / "lep"
    res = _invoke(dirs, out, "--mode", "overlap")
    assert res.exit_code == 0, res.output
    assert "propagated" in res.output and str(out) in res.output.replace("\n", "")
    model, tok = load_model(str(out))
    record = json.loads((out / "propagation.json").read_text())
    assert record["mode"] == "overlap" and record["fits"]["tied"]["residual"] < 1e-6
    assert model.config.vocab_size == len(tok) == record["vocab_size"]
    res = _invoke(dirs, out, "--mode", "swap", "--overwrite")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "propagation.json").read_text())["mode"] == "swap"


@pytest.mark.parametrize("case, args, kw, expected", [
    ("family", [], {"instruct": "mistral"}, "different families"),
    ("hidden size", [], {"instruct": "wide"}, "different hidden sizes"),
    ("adapted vocabulary", [], {"adapted": "short"}, "resize the model to its tokenizer"),
    ("no chat template", [], {"instruct": "no_template"}, "no chat template"),
    ("mode", ["--mode", "magic"], {}, "--mode 'magic'"),
    ("missing model", [], {"adapted": "missing"}, "no such directory"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(dirs, tmp_path, case, args, kw, expected):
    dirs = {**dirs, "missing": str(tmp_path / "no" / "model")}
    out = tmp_path / "out"
    res = _invoke(dirs, out, *args, **kw)
    errors = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(errors) == 1 and errors[0].startswith("error: "), res.output
    assert expected in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_existing_output_needs_overwrite_and_is_left_alone(dirs, tmp_path):
    out = tmp_path / "lep"
    assert _invoke(dirs, out).exit_code == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    res = _invoke(dirs, out)
    assert res.exit_code == 2 and "--overwrite" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    res = _invoke(dirs, foreign, "--overwrite")
    assert res.exit_code == 2 and "not a lingotune run directory" in res.stderr
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
