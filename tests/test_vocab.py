"""Vocabulary adaptation: `extend` keeps English ids, every new token is reachable, new rows are the
mean of the old rows that spell them (issue 12, LEP steps 1 and 2)."""

from __future__ import annotations

import random

import pytest
import torch

from helpers import fresh_tiny, require_bundled
from lingotune.vocab import (
    VocabError, bpe_segment, chars_per_token, check_extension, extend, init_new_rows, piece_map, with_merges,
)

ENGLISH = [
    "The cat sat on the mat and looked at the door.", "A quick brown fox jumps over the lazy dog.",
    "We went to the market on Sunday to buy bread and milk.", "Numbers like 42 and 1990 appear in text too.",
    "Translation is hard when the vocabulary is small.", "She said: the weather is nice today, isn't it?",
] * 20
RUSSIAN = [
    "Кошка сидела на ковре и смотрела на дверь.", "Быстрая рыжая лиса прыгает через ленивую собаку.",
    "В воскресенье мы ходили на рынок за хлебом и молоком.", "Перевод труден, когда словарь мал.",
    "Она сказала: сегодня хорошая погода, не правда ли?", "Москва и Санкт-Петербург большие города России.",
    "Числа вроде 42 и 1990 тоже встречаются в тексте.", "Мы читаем книги, пишем письма и говорим по-русски.",
] * 10


def english_bpe(vocab_size: int = 400):
    """A small byte-level BPE tokenizer trained on English only (an English-centric vocabulary), with
    special tokens and a chat template, as transformers loads real ones."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    raw.train_from_iterator(ENGLISH, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.chat_template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    return tok


@pytest.fixture(scope="module")
def base_tok():
    return english_bpe()


@pytest.fixture(scope="module")
def extended(base_tok):
    return extend(base_tok, RUSSIAN, "ru", n_new=60)


def _added(old, new) -> list[str]:
    return new.convert_ids_to_tokens(list(range(len(old), len(new))))


def test_extend_keeps_english_ids_and_every_new_token_is_reachable(base_tok, extended):
    new, report = extended
    added = _added(base_tok, new)
    assert report["new_tokens"] == len(added) == 60 and len(new) == len(base_tok) + 60
    check = check_extension(base_tok, new, ENGLISH + ["Digits 0123 and symbols #$% stay."], added)
    assert check["lines_changed"] == 0 and check["unreachable"] == []
    for token in added:  # as text too: a token of whole characters, alone, is that one token
        text = new.convert_tokens_to_string([token])
        if "\ufffd" not in text:
            assert new(text, add_special_tokens=False)["input_ids"] == [new.convert_tokens_to_ids(token)], token
    assert chars_per_token(new, RUSSIAN) > 1.5 * chars_per_token(base_tok, RUSSIAN)


def test_new_tokens_are_text_of_the_target_script(base_tok, extended):
    from lingotune.languages import letter_script

    for token in _added(base_tok, extended[0]):  # tokens of whole characters; part-characters are checked by bytes
        text = extended[0].convert_tokens_to_string([token])
        letters = [letter_script(c) for c in text.replace("\ufffd", "") if c.isalpha()]
        if "\ufffd" not in text:
            assert letters and sum(s == "Cyrillic" for s in letters) / len(letters) >= 0.5, token


def test_the_chat_template_and_special_tokens_are_kept(base_tok, extended):
    new = extended[0]
    assert new.chat_template == base_tok.chat_template
    for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert new.convert_tokens_to_ids(t) == base_tok.convert_tokens_to_ids(t)
    msgs = [{"role": "user", "content": "Hello there"}]
    assert new.apply_chat_template(msgs, tokenize=True) == base_tok.apply_chat_template(msgs, tokenize=True)


def test_our_bpe_is_the_tokenizers_librarys_bpe(base_tok, extended):
    """The reachability check simulates BPE; it must segment exactly as the library does."""
    import json

    from lingotune.vocab import _ranks, corpus_words

    new = extended[0]
    ranks = _ranks(json.loads(new.backend_tokenizer.to_str())["model"]["merges"])
    model = new.backend_tokenizer.model
    rng = random.Random(0)
    words = list(corpus_words(new, ENGLISH + RUSSIAN))
    words += ["".join(rng.sample(w, len(w))) for w in words]  # shuffled letters: unusual segmentations
    for w in words:
        assert bpe_segment(list(w), ranks) == [t.value for t in model.tokenize(w)], w


def test_a_corpus_in_the_wrong_script_is_refused_in_one_line(base_tok):
    with pytest.raises(VocabError, match=r"corpus: no text in the Cyrillic script of language 'ru'"):
        extend(base_tok, ENGLISH, "ru", n_new=10)


def test_extend_needs_a_bpe_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel(vocab={"<unk>": 0, "кот": 1}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>")
    with pytest.raises(VocabError, match="scenario extend needs a BPE tokenizer, this one is WordLevel"):
        extend(tok, RUSSIAN, "ru", n_new=5)


def test_piece_map_spells_new_tokens_with_old_ids(base_tok, extended):
    new = extended[0]
    pieces = piece_map(new, base_tok)
    assert pieces[:len(base_tok)] == [[i] for i in range(len(base_tok))]  # old tokens are themselves
    for i in range(len(base_tok), len(new)):
        token = new.convert_ids_to_tokens(i)
        assert len(pieces[i]) >= 2 and "".join(base_tok.convert_ids_to_tokens(pieces[i])) == token


@pytest.mark.parametrize("tied", [True, False])
def test_new_rows_are_exactly_the_mean_of_the_old_rows_that_spell_them(tied):
    """A hand-made vocabulary: old tokens 'a', 'b', 'c', 'ab'; the new one adds 'abc' and 'bc'."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "a": 1, "b": 2, "c": 3, "ab": 4}
    raw = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b")]))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.decoder = decoders.BPEDecoder()
    old = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>")
    new = with_merges(old, [("ab", "c"), ("b", "c")], ["abc", "bc"])
    assert new.convert_tokens_to_ids(["abc", "bc"]) == [5, 6] and new.tokenize("abc bc") == ["abc", "bc"]
    model = fresh_tiny(vocab_size=5, tie_word_embeddings=tied)
    emb_before = model.get_input_embeddings().weight.detach().clone()
    head_before = model.get_output_embeddings().weight.detach().clone()
    counts = init_new_rows(model, old, new)
    assert counts["set_to_mean"] == 2 and counts["tied"] == tied and model.config.vocab_size == 7
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    torch.testing.assert_close(emb[:5], emb_before, rtol=0, atol=0)  # old rows untouched
    torch.testing.assert_close(emb[5], (emb_before[4] + emb_before[3]) / 2, rtol=0, atol=0)  # abc = ab + c
    torch.testing.assert_close(emb[6], (emb_before[2] + emb_before[3]) / 2, rtol=0, atol=0)  # bc = b + c
    torch.testing.assert_close(head[6], (head_before[2] + head_before[3]) / 2, rtol=0, atol=0)
    assert (head.data_ptr() == emb.data_ptr()) == tied


@pytest.mark.bundled
@pytest.mark.shared_data
def test_extending_the_bundled_tokenizer_keeps_every_english_flores_line(shared_data):
    """The bundled SmolLM2 tokenizer, extended with Russian merges learned on lingotune's own starter
    text (not FLORES): all 1012 English FLORES devtest lines keep their ids."""
    require_bundled()
    from lingotune.data.starter import generate
    from lingotune.models import load_tokenizer

    tok = load_tokenizer("bundled")
    data = generate("ru", seed=0)
    texts = [r.prompt + " " + r.response for _, r in data.train_pairs] + [r.prompt + " " + r.response for r in data.stage2]
    new, report = extend(tok, texts, "ru", n_new=300)
    english = (shared_data / "flores200/devtest/eng_Latn.devtest").read_text(encoding="utf-8").splitlines()
    russian = (shared_data / "flores200/devtest/rus_Cyrl.devtest").read_text(encoding="utf-8").splitlines()
    check = check_extension(tok, new, english, _added(tok, new))
    assert report["new_tokens"] == 300 and check["lines"] == 1012
    assert check["lines_changed"] == 0 and check["unreachable"] == []
    assert chars_per_token(new, russian) > chars_per_token(tok, russian)


def test_vocab_extend_command_writes_a_loadable_model_and_tokenizer(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from typer.testing import CliRunner

    from lingotune.cli import app
    from lingotune.models import load_tokenizer

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ru.txt").write_text("\n".join(RUSSIAN), encoding="utf-8")
    res = CliRunner().invoke(app, ["vocab", "extend", "--model", str(tiny_model_dir), "--lang", "ru", "--corpus", "ru.txt",
                                   "--add", "20", "--out", "v", "--init-model"])
    assert res.exit_code == 0, res.output
    old = load_tokenizer(str(tiny_model_dir))
    tok = AutoTokenizer.from_pretrained(tmp_path / "v" / "model")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "v" / "model")
    assert len(tok) == len(old) + 20 == model.get_input_embeddings().num_embeddings == model.config.vocab_size
    assert tok(ENGLISH[0])["input_ids"] == old(ENGLISH[0])["input_ids"]
    report = __import__("json").loads((tmp_path / "v" / "vocab_report.json").read_text())
    assert report["new_tokens"] == 20 and report["init"]["set_to_mean"] == 20


@pytest.mark.parametrize("raw, script, ok", [
    ("привет".encode(), "Cyrillic", True),
    ("п".encode()[:1], "Cyrillic", True),  # D0: the first byte of U+0400..U+043F, all Cyrillic
    ("안".encode()[:2], "Hangul", True),  # EC 95: the first bytes of U+C540..U+C57F, all Hangul syllables
    ("안".encode()[:1], "Hangul", True),  # EC: U+C000..U+CFFF, all Hangul syllables
    ("힣".encode()[:1], "Hangul", False),  # ED: its completions include unassigned code points and surrogates
    ("안".encode()[1:], "Hangul", False),  # starts inside a character: 95 88 also ends the box drawing '═'
    ("é".encode()[:1], "Cyrillic", False),  # C3: Latin-1 letters
    (" 12".encode(), "Cyrillic", False),  # no letter of the script at all
    ("Москва is".encode(), "Cyrillic", True),  # 6 of 8 letters Cyrillic
    ("the Мо".encode(), "Cyrillic", False),  # 2 of 5 letters Cyrillic
])
def test_only_bytes_that_occur_in_the_script_alone_become_tokens(raw, script, ok):
    from lingotune.vocab import only_in_script

    assert only_in_script(raw, script, 0.5) is ok


def test_extend_learns_hangul_syllables_through_their_partial_bytes(base_tok):
    """Hangul syllables are 3 bytes: their first two bytes must merge first (not text yet), then the third."""
    korean = ["고양이가 매트 위에 앉아서 문을 바라보았다.", "우리는 일요일에 빵과 우유를 사러 시장에 갔다.",
              "번역은 어휘가 작을 때 어렵다.", "서울과 부산은 한국의 큰 도시이다."] * 10
    new, report = extend(base_tok, korean, "ko", n_new=60)
    added = _added(base_tok, new)
    assert report["new_tokens"] == 60
    assert check_extension(base_tok, new, ENGLISH, added) == {"lines": len(ENGLISH), "lines_changed": 0,
                                                              "new_tokens": 60, "unreachable": []}
    whole = [t for t in added if "\ufffd" not in new.convert_tokens_to_string([t])]
    assert len(whole) >= 20 and chars_per_token(new, korean) > 2 * chars_per_token(base_tok, korean)
