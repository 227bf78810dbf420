"""Translation backends: the OpenAI-compatible HTTP backend against a real local server (with resume), the
causal-LM prompt, and the CLI's translate/starter/inspect commands."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from helpers import require_bundled
from typer.testing import CliRunner

from lingotune.data import translate as tr
from lingotune.data.cli import app
from lingotune.data.records import Record


class FakeServer:
    """A /v1/chat/completions server on 127.0.0.1 that 'translates' by upper-casing the text after the blank line."""

    def __init__(self, fail_after: int | None = None):
        self.requests = 0
        self.fail_after = fail_after
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                outer.requests += 1
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    self.send_response(404), self.end_headers()
                    return
                if outer.fail_after is not None and outer.requests > outer.fail_after:
                    self.send_response(503), self.end_headers()
                    return
                text = body["messages"][-1]["content"].split("\n\n", 1)[1]
                out = json.dumps({"choices": [{"message": {"role": "assistant", "content": f"RU[{text.upper()}]"}}]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(out.encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_http_translation_is_cached_and_resumed(tmp_path):
    texts = ["hello", "good night", "hello", ""]
    with FakeServer() as srv:
        t = tr.HTTPTranslator(srv.url, "fake-mt", timeout=10)
        out = tr.translate_texts(texts, t, "en", "ru", tmp_path, batch_size=2, progress=False)
        assert out == ["RU[HELLO]", "RU[GOOD NIGHT]", "RU[HELLO]", ""]
        assert srv.requests == 2  # duplicates and blanks are not sent
        again = tr.translate_texts(texts, t, "en", "ru", tmp_path, progress=False)
        assert again == out and srv.requests == 2  # second run: zero requests
        other = tr.translate_texts(["hello"], tr.HTTPTranslator(srv.url, "other-model"), "en", "ru", tmp_path, progress=False)
        assert other == ["RU[HELLO]"] and srv.requests == 3  # the cache key includes the model


def test_interrupted_job_resumes_without_redoing(tmp_path):
    texts = [f"sentence {i}" for i in range(6)]
    with FakeServer(fail_after=3) as srv:
        t = tr.HTTPTranslator(srv.url, "fake-mt", timeout=10, retries=0)  # retries: tests/test_judge.py
        with pytest.raises(tr.TranslationError, match="HTTP 503"):
            tr.translate_texts(texts, t, "en", "ru", tmp_path, batch_size=1, progress=False)
        assert srv.requests == 4
    with FakeServer() as srv2:
        t = tr.HTTPTranslator(srv2.url, "fake-mt", timeout=10)
        out = tr.translate_texts(texts, t, "en", "ru", tmp_path, batch_size=1, progress=False)
        assert out == [f"RU[SENTENCE {i}]" for i in range(6)]
        assert srv2.requests == 3  # only the three not finished before the failure


def test_translate_records_keeps_ids_and_system(tmp_path):
    recs = [Record("Say hi", "Hi!", "Be nice", "7", "en", "a.json:1")]
    with FakeServer() as srv:
        out = tr.translate_records(recs, tr.HTTPTranslator(srv.url, "m"), "ru", tmp_path, progress=False)
    assert out[0].prompt == "RU[SAY HI]" and out[0].system == "RU[BE NICE]" and out[0].id == "7" and out[0].lang == "ru"


def test_unreachable_server_is_one_line_error(tmp_path):
    with FakeServer() as srv:
        url = srv.url
    t = tr.HTTPTranslator(url, "m", timeout=2, retries=0)  # server is shut down now
    with pytest.raises(tr.TranslationError, match="cannot connect"):
        tr.translate_texts(["x"], t, "en", "ru", tmp_path, progress=False)


def test_torn_cache_line_is_ignored(tmp_path):
    cache = tr.TranslationCache(tmp_path)
    cache.put_many([("k1", "v1")])
    with cache.path.open("a") as fh:
        fh.write('{"key": "k2", "te')
    assert tr.TranslationCache(tmp_path).items == {"k1": "v1"}


def test_causal_prompt_building_and_generation(tiny_llama):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, 128)}}  # one id per token
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="</s>")  # <unk> decodes as text
    tok.chat_template = "{% for m in messages %}<{{ m.role }}> {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    from lingotune import inference

    t = tr.CausalTranslator("tiny", net=tiny_llama, tokenizer=tok, max_new_tokens=3)
    prompt = inference.chat_text(tok, tr.translation_messages("Good morning", "en", "ru"))
    assert "from English into Russian" in prompt and prompt.rstrip().endswith("Good morning\n<assistant>")
    texts = ["Good morning", "Hi", "t5 t6 t7 t8 t9"]
    out = t.translate(texts, "en", "ru")  # one left-padded batch
    alone = [t.translate([x], "en", "ru")[0] for x in texts]
    assert out == alone and all(o.split() for o in out)  # padding changes nothing; each got tokens
    assert tok.padding_side == "right"


runner = CliRunner()


def test_cli_translate_writes_pairable_file(tmp_path):
    src = tmp_path / "en.json"
    src.write_text(json.dumps([{"instruction": "Say hi", "input": "", "output": "Hi"}]))
    with FakeServer() as srv:
        args = ["translate", str(src), "--to", "ru", "--model", "m", "--base-url", srv.url, "--out",
                str(tmp_path / "ru.jsonl"), "--cache-dir", str(tmp_path / "cache")]
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        r2 = runner.invoke(app, args)
        assert r2.exit_code == 0 and srv.requests == 2
    row = json.loads((tmp_path / "ru.jsonl").read_text().splitlines()[0])
    assert row == {"id": "0", "prompt": "RU[SAY HI]", "completion": "RU[HI]"}


def test_cli_user_errors_exit_2(tmp_path):
    r = runner.invoke(app, ["translate", str(tmp_path / "none.json"), "--to", "ru", "--model", "m", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "file not found" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["starter", "--lang", "xx", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "unknown language" in r.output
    r = runner.invoke(app, ["build-pairs", "--out", str(tmp_path), "--format", "alpakka"])
    assert r.exit_code == 2 and "data.sources.0.format" in r.output


def test_cli_starter_and_build_and_inspect(tmp_path):
    r = runner.invoke(app, ["starter", "--lang", "ar", "--out", str(tmp_path / "st"), "--n-train", "30"])
    assert r.exit_code == 0, r.output
    assert len((tmp_path / "st" / "train_pairs.jsonl").read_text().splitlines()) == 30
    r = runner.invoke(app, ["build-pairs", "--out", str(tmp_path / "b"), "--lang", "ar"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["inspect", str(tmp_path / "b" / "stage1.jsonl"), "--model", "none", "--json"])
    assert r.exit_code == 0, r.output
    stats = json.loads(r.output)
    assert {s["lang"] for s in stats} == {"ar"} and sum(s["count"] for s in stats) == 800


@pytest.mark.bundled
@pytest.mark.shared_data
def test_inspect_flores_tokens_per_char(shared_data):
    require_bundled()
    r = runner.invoke(app, ["inspect", "--flores", "--json", "--data-root", str(shared_data)])
    assert r.exit_code == 0, r.output
    tpc = {s["lang"]: s["tokens_per_char"] for s in json.loads(r.output)}
    assert tpc["en"] < tpc["ru"] < tpc["ko"] and tpc["en"] < tpc["ar"]  # an English-centric tokenizer
