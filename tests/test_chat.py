"""`lingotune chat` and streaming: incremental decoding, run directories, the prompts file, a real terminal.

A tiny random Llama with a byte-level tokenizer (a Korean character is three tokens, a Cyrillic one two)
and a ChatML-like chat template, saved to a temporary directory; nothing here needs the bundled model
except the one test marked bundled. The pseudo-terminal tests drive tests/chat_driver.py through pexpect.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from helpers import fresh_tiny
from lingotune import inference
from lingotune.cli import app

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<pad>", "<s>", "<|im_end|>", "<|im_start|>", "<unk>"]  # ids 0, 1, 2 = the tiny config's pad, bos, eos
KOREAN_RUSSIAN = "안녕하세요! Привет, мир. 좋아요 спасибо"


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character map (what a byte-level BPE vocabulary is written in)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars)))


def byte_tokenizer():
    """Byte-level BPE without merges: printable ASCII, newline and the bytes of KOREAN_RUSSIAN, one token each."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = _byte_chars()
    raw = sorted(set(range(0x20, 0x7F)) | {0x0A} | set(KOREAN_RUSSIAN.encode()))
    core = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(SPECIALS + [chars[b] for b in raw])}, merges=[],
                                unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="<|im_end|>",
                                  unk_token="<unk>", additional_special_tokens=["<|im_start|>"])
    tok.chat_template = TEMPLATE
    return tok


def random_tiny(vocab_size: int, seed: int = 0):
    """A tiny Llama with larger random weights than the default init (its greedy replies vary more)."""
    model = fresh_tiny(vocab_size=vocab_size)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok):
    out = tmp_path_factory.mktemp("chat_model")
    random_tiny(len(tok)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def chat_ids(tok, messages):
    return inference.encode(tok, inference.chat_text(tok, messages))


def user(text):
    return {"role": "user", "content": text}


# ------------------------------------------------------------------------------------------ streaming

def feed(tok, ids: list[int]) -> list[str]:
    """The pieces TextPieces passes on when generate() hands it a prompt and then `ids` one at a time."""
    pieces: list[str] = []
    streamer = inference.TextPieces(tok, pieces.append)
    streamer.put(torch.tensor([[5, 6, 7]]))  # the prompt, never shown
    for i in ids:
        streamer.put(torch.tensor([i]))
    streamer.end()
    return pieces


def test_pieces_never_split_a_character(tok):
    ids = inference.encode(tok, KOREAN_RUSSIAN)
    assert len(ids) == len(KOREAN_RUSSIAN.encode())  # one token per byte: 안 is three tokens, п two
    # each character comes out whole, the moment its last byte arrives
    assert feed(tok, ids) == list(KOREAN_RUSSIAN)
    # special tokens (the end of the reply) add nothing
    assert feed(tok, ids + [tok.eos_token_id]) == list(KOREAN_RUSSIAN)


def test_an_unfinished_character_at_the_end_is_flushed(tok):
    ids = inference.encode(tok, "мир")[:-1]  # р cut after its first byte
    pieces = feed(tok, ids)
    assert pieces == ["м", "и", tok.decode(ids[-1:])] and pieces[-1] == "\ufffd"


@pytest.mark.bundled
def test_pieces_match_decoding_with_the_bundled_tokenizer():
    from helpers import require_bundled

    require_bundled()
    from lingotune.models import load_tokenizer

    smol = load_tokenizer("bundled")
    text = "안녕하세요, 세계! Привет, как дела? Hello: 12 345."
    ids = inference.encode(smol, text)
    pieces = feed(smol, ids)
    assert "".join(pieces) == text == smol.decode(ids)
    assert all("\ufffd" not in p for p in pieces) and len(pieces) > 10


@pytest.mark.parametrize("stop", ["eos", "line"])
def test_stream_equals_batched_generation(tok, stop):
    model = random_tiny(len(tok))
    prompt = chat_ids(tok, [user("hello, мир 안녕")])
    pieces: list[str] = []
    got = inference.stream(model, tok, prompt, 24, pieces.append, stop=stop)
    assert got.text == inference.generate(model, tok, [prompt], 24, stop=stop)[0]
    assert "".join(pieces) == got.text and len(pieces) > 1
    assert 1 <= got.new_tokens <= 24 and 0 < got.first_token_s <= got.seconds


def test_sampling_follows_the_seed(tok):
    model = random_tiny(len(tok))
    prompt = chat_ids(tok, [user("hi")])
    torch.manual_seed(3)
    streamed = inference.stream(model, tok, prompt, 16, lambda p: None, temperature=1.5).text
    torch.manual_seed(3)
    batched = inference.generate(model, tok, [prompt], 16, temperature=1.5)[0]
    greedy = inference.generate(model, tok, [prompt], 16)[0]
    assert streamed == batched != greedy


# ------------------------------------------------------------------------------------------ run directories

FAST = ["--set", "data.max_stage1=8", "--set", "data.max_stage2=4", "--set", "method.stage1.steps=3",
        "--set", "method.stage2.steps=3", "--set", "train.batch_size=2", "--set", "train.max_len=256",
        "--set", "train.lr=0.05", "--set", "train.embedding_lr=0.5"]


def train(out: Path, model_dir: Path, *args: str) -> Path:
    """`lingotune train` (dpart unless `args` say otherwise) of the tiny model into `out`: a real run directory."""
    res = CliRunner().invoke(app, ["train", "--out", str(out), "--set", f"model.source={model_dir}", *FAST, *args])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory, model_dir):
    """A finished dpart run of the tiny model (stage1: embeddings, stage2: embeddings and a LoRA adapter)."""
    return train(tmp_path_factory.mktemp("runs") / "dpart", model_dir)


def trained(run: Path, model_dir: Path):
    """The reference for a dpart run, built by hand: the base model, stage2's embeddings, stage2's adapter."""
    from lingotune.models import load_adapted

    return load_adapted(str(model_dir), adapter=str(run / "dpart" / "stage2" / "adapter"),
                        embeddings=str(run / "dpart" / "stage2" / "embeddings.safetensors"))[0]


def test_a_run_loads_as_it_was_trained_even_when_moved(tmp_path, model_dir, tok):
    from transformers import AutoModelForCausalLM

    from lingotune import chat

    moved = train(tmp_path / "a", model_dir).rename(tmp_path / "moved")  # results.json's artefact paths point
    # nowhere now: the artefacts are found under the run directory
    assert chat.check(str(moved)) == str(model_dir)  # the base model that --compare answers with
    got = chat.load(str(moved), "adapted")
    assert got.source == str(moved.resolve()) and len(got.tok) == len(tok)
    ids = torch.tensor([chat_ids(tok, [user("Привет, 안녕")])])
    with torch.no_grad():
        want, logits = trained(moved, model_dir)(input_ids=ids).logits, got.model(input_ids=ids).logits
        untouched = AutoModelForCausalLM.from_pretrained(model_dir)(input_ids=ids).logits
    torch.testing.assert_close(logits, want, atol=1e-5, rtol=1e-5)
    assert (logits - untouched).abs().max() > 1e-2  # the stages did change the model


def test_a_run_its_base_and_its_export_load_with_the_recipes_attention_and_remote_code(tmp_path, model_dir, monkeypatch):
    from rich.console import Console

    from lingotune import chat, models
    from lingotune.export import export

    run = train(tmp_path / "eager", model_dir, "--set", "model.attn_implementation=eager",
                "--set", "model.trust_remote_code=true")
    calls = []
    real = models.load_model

    def spy(source, **kw):
        calls.append((source, kw.get("attn_implementation"), kw.get("trust_remote_code")))
        return real(source, **kw)

    monkeypatch.setattr(models, "load_model", spy)
    monkeypatch.setattr("lingotune.export.load_model", spy)
    base, adapted = chat.load_all(str(run), compare=True, base=None, console=Console(quiet=True))
    assert base.model.config._attn_implementation == adapted.model.config._attn_implementation == "eager"
    export(run, tmp_path / "export")
    assert calls == [(str(model_dir), "eager", True)] * 3  # chat's base, chat's run, the export
    assert fresh_tiny().config._attn_implementation != "eager"  # not the default


def test_prompts_file_answers_equal_batched_generation(tmp_path, model_dir, tok):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Привет!\n\nhow are you?\n안녕하세요\n", encoding="utf-8")
    out = tmp_path / "answers.jsonl"
    res = CliRunner().invoke(app, ["chat", str(model_dir), "--prompts", str(prompts), "--out", str(out),
                                   "--system", "Be brief.", "--max-new-tokens", "12", "--batch-size", "2"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    model = type(random_tiny(len(tok))).from_pretrained(model_dir)
    convs = [[{"role": "system", "content": "Be brief."}, user(p)] for p in ["Привет!", "how are you?", "안녕하세요"]]
    want = inference.generate_chat(model, tok, convs, 12)
    assert [r["prompt"] for r in rows] == ["Привет!", "how are you?", "안녕하세요"]
    assert [r["answer"] for r in rows] == [w.strip() for w in want]
    assert rows[0]["model"] == str(model_dir.resolve()) and rows[0]["system"] == "Be brief."
    assert rows[0]["settings"] == {"max_new_tokens": 12, "greedy": True}


def test_compare_on_a_run_answers_with_its_base_and_the_adapted_model(tmp_path, run, model_dir, tok):
    adapted = trained(run, model_dir)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Привет"}, ensure_ascii=False) + "\n"
                       + json.dumps({"prompt": "hi", "system": "Answer in Russian."}) + "\n", encoding="utf-8")
    res = CliRunner().invoke(app, ["chat", str(run), "--compare", "--prompts", str(prompts), "--max-new-tokens", "10"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    convs = [[user("Привет")], [{"role": "system", "content": "Answer in Russian."}, user("hi")]]
    base = type(random_tiny(len(tok))).from_pretrained(model_dir)
    assert [r["base_answer"] for r in rows] == [a.strip() for a in inference.generate_chat(base, tok, convs, 10)]
    assert [r["answer"] for r in rows] == [a.strip() for a in inference.generate_chat(adapted, tok, convs, 10)]
    assert rows[0]["base_model"] == str(model_dir) and rows[0]["model"] == str(run.resolve())
    assert rows[0]["answer"] != rows[0]["base_answer"]


def one_error_line(res) -> str:
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), res.output
    return lines[0]


def test_bad_input_is_one_line(tmp_path, model_dir):
    cli = CliRunner()
    line = one_error_line(cli.invoke(app, ["chat", str(tmp_path / "no-such-run")]))
    assert "no-such-run" in line and "no such directory" in line
    (tmp_path / "empty").mkdir()
    line = one_error_line(cli.invoke(app, ["chat", str(tmp_path / "empty")]))
    assert "neither a run directory" in line
    line = one_error_line(cli.invoke(app, ["chat", str(model_dir), "--prompts", str(tmp_path / "missing.txt")]))
    assert "missing.txt: cannot read prompts" in line
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"prompt": "b"\n', encoding="utf-8")
    assert one_error_line(cli.invoke(app, ["chat", str(model_dir), "--prompts", str(bad)])).startswith(
        f"error: {bad} line 2: not valid JSON")
    bad.write_text('{"prompt": "a"}\n\n{"text": "b"}\n', encoding="utf-8")
    assert f"{bad} line 3: needs a non-empty string field 'prompt'" in one_error_line(
        cli.invoke(app, ["chat", str(model_dir), "--prompts", str(bad)]))
    assert "--base MODEL" in one_error_line(cli.invoke(app, ["chat", str(model_dir), "--compare"]))
    assert "go with --prompts" in one_error_line(cli.invoke(app, ["chat", str(model_dir), "--out", "a.jsonl"]))
    assert "is not a folder" in one_error_line(cli.invoke(app, ["chat", str(model_dir), "--transcript",
                                                                 str(tmp_path / "no" / "t.jsonl")]))
    half = train(tmp_path / "half", model_dir, "--stage", "stage1")  # stage 1 of dpart only: not finished
    assert "stage stage2 of dpart is not trained" in one_error_line(cli.invoke(app, ["chat", str(half)]))
    (half / "recipe.yaml").unlink()
    assert "not a finished run (no recipe.yaml)" in one_error_line(cli.invoke(app, ["chat", str(half)]))


# ------------------------------------------------------------------------------------------ a real terminal

ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[()][0-9A-B]|\r")


@pytest.fixture
def spawn(model_dir):
    """spawn(args, script, hold, go): tests/chat_driver.py's `lingotune chat ARGS` in a pseudo-terminal; every
    child still running at the test's end is killed."""
    pexpect = pytest.importorskip("pexpect")
    children = []

    def start(args: list[str], script: list[str], hold: int = -1, go: Path | None = None):
        env = {**os.environ, "CHAT_SCRIPT": json.dumps(script, ensure_ascii=False), "CHAT_HOLD": str(hold),
               "CHAT_GO": str(go or ""), "CHAT_TOKENIZER": str(model_dir),
               "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
        children.append(pexpect.spawn(sys.executable, [str(Path(__file__).with_name("chat_driver.py")), "chat", *args],
                                      env=env, encoding="utf-8", dimensions=(40, 200), timeout=60))
        return children[-1]

    yield start
    for child in children:
        if child.isalive():
            child.terminate(force=True)


def screen(child) -> str:
    """What the terminal received so far (through the last match), without escape codes and carriage returns."""
    return ANSI.sub("", child.before + (child.after if isinstance(child.after, str) else ""))


def test_terminal_streams_and_the_commands_change_the_conversation(tmp_path, model_dir, tok, spawn):
    import pexpect

    go, log = tmp_path / "go", tmp_path / "transcript.jsonl"
    replies = ["안녕하세요! Привет, мир.", "спасибо", "좋아요", "мир"]
    child = spawn([str(model_dir), "--transcript", str(log)], replies, hold=6, go=go)
    child.expect("you>")
    child.sendline("/system Be brief.")
    child.expect("system prompt set")
    child.expect("you>")
    child.sendline("hello")
    child.expect("안녕")  # the first six tokens (two Korean characters) are on the screen ...
    assert "하" not in screen(child)
    assert child.expect(["하", "tokens/s", pexpect.TIMEOUT], timeout=1) == 2  # ... while the reply is held unfinished
    assert child.isalive() and not log.exists()
    go.touch()
    child.expect("tokens/s")
    assert ANSI.sub("", child.before).startswith("하세요! Привет, мир.\n")  # the rest of the reply
    for text in ["and?", "/reset", "again", "/system", "more"]:
        child.expect("you>")
        child.sendline(text)
    child.expect("tokens/s")
    child.expect("you>")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    turns = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    sys_ = {"role": "system", "content": "Be brief."}

    def bot(text):
        return {"role": "assistant", "content": text}

    assert [t["answer"] for t in turns] == replies
    assert [t["input"] for t in turns] == [
        inference.chat_text(tok, [sys_, user("hello")]),
        inference.chat_text(tok, [sys_, user("hello"), bot(replies[0]), user("and?")]),  # the conversation goes on
        inference.chat_text(tok, [sys_, user("again")]),  # /reset forgot the turns, kept the system prompt
        inference.chat_text(tok, [user("again"), bot(replies[2]), user("more")]),  # /system alone removed it
    ]
    assert turns[0]["new_tokens"] == len(inference.encode(tok, replies[0])) + 1  # the reply, then <|im_end|>


def test_terminal_ctrl_c_stops_a_reply_and_ctrl_d_ends(tmp_path, model_dir, spawn):
    import pexpect

    go, log = tmp_path / "never", tmp_path / "t.jsonl"
    child = spawn([str(model_dir), "--transcript", str(log)], ["안녕하세요"], hold=4, go=go)
    child.expect("you>")
    child.sendline("hello")
    child.expect("안")
    child.sendintr()  # Ctrl-C while the reply is held
    child.expect("reply interrupted")
    child.expect("you>")
    assert child.waitnoecho(timeout=30)  # readline reads the terminal (else a Ctrl-D typed ahead is lost)
    child.sendeof()  # Ctrl-D at the prompt
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0 and not log.exists()


def test_terminal_compare_shows_both_answers_side_by_side(tmp_path, run, spawn):
    import pexpect

    log = tmp_path / "t.jsonl"
    child = spawn([str(run), "--compare", "--transcript", str(log)], ["Привет, мир", "안녕하세요"])
    child.expect("you>")
    child.sendline("hi")
    child.expect("you>")
    seen = screen(child)
    row = [line for line in seen.splitlines() if "Привет, мир" in line][-1]  # the final table
    assert "안녕하세요" in row and row.index("Привет") < row.index("안녕")  # one row: base left, adapted right
    assert re.search(r"base: .*adapted: ", seen)
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    turns = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert [(t["model"], t["answer"]) for t in turns] == [("base", "Привет, мир"), ("adapted", "안녕하세요")]
