"""Pairwise win rate (issue 13, part 3): verdicts and their aggregation, the CI, the reference judge, the
target-language share, the endpoint client and API models against a stub server on 127.0.0.1, the local-model
judge, `lingotune eval --api-model`, and `lingotune judge` end to end."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lingotune import api, inference
from lingotune.cli import app
from lingotune.data.records import DataError
from lingotune.errors import UserError
from lingotune.eval import answers as ans
from lingotune.eval import judge as jd
from lingotune.files import FileFormatError

SECRET = "sk-test-SECRET-7731"
GOOD, BAD = "Хороший ответ на русском языке.", "An answer in English."


# ----------------------------------------------------------------------------------------- a stub endpoint

def _answer_b(text: str) -> str:
    return text.split("[Ответ B]\n", 1)[1].split("\n[Конец ответа B]", 1)[0]


def default_reply(model: str, messages: list[dict]) -> str:
    """Models 'good' and 'bad' answer in Russian and in English; 'fair' judges by the script of the answers,
    'biased' always prefers the answer shown first; anything else echoes the prompt."""
    text = messages[-1]["content"]
    if model == "good":
        return GOOD
    if model == "bad":
        return BAD
    if model == "fair":
        a_text = text.split("[Ответ A]\n", 1)[1]
        return "Ответ A лучше. [[A]]" if a_text.startswith("Хорош") else "[[B]]" if _answer_b(text).startswith("Хорош") else "[[C]]"
    if model == "biased":
        return "Первый ответ лучше: [[A]]"
    if model == "yesno":
        return "Да, конечно" if re.search(r"q[024]\?", text) else "Нет.\nПотому что"
    return f"echo: {text}"


class Stub:
    """A chat/completions server on 127.0.0.1. `fail_first`: so many 503s before answering; `hang`: a request
    whose last message contains it (or every request, for True) gets no answer for `hang_seconds` (the
    attribute may be changed while it runs)."""

    def __init__(self, fail_first: int = 0, hang: str | bool | None = None, hang_seconds: float = 2.0,
                 status: int | None = None, reply=default_reply):
        self.requests, self.auth, self.bodies, self.hang = 0, [], [], hang
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    outer.requests += 1
                    outer.auth.append(self.headers.get("Authorization"))
                    outer.bodies.append(body)
                last = body["messages"][-1]["content"]
                if outer.hang is True or (isinstance(outer.hang, str) and outer.hang in last):
                    time.sleep(hang_seconds)
                    return
                if status or outer.requests <= fail_first:
                    code = status or 503
                    self.send_response(code, f"Nope {self.headers.get('Authorization')}")
                    self.end_headers()
                    self.wfile.write(json.dumps({"error": f"bad key {self.headers.get('Authorization')}"}).encode())
                    return
                out = {"choices": [{"message": {"role": "assistant", "content": reply(body["model"], body["messages"])}}]}
                data = json.dumps(out, ensure_ascii=False).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(api, "DEFAULT_BACKOFF", 0.0)


def _no_secret_anywhere(root: Path, *texts: str) -> None:
    for t in texts:
        assert SECRET not in t
    for f in root.rglob("*"):
        if f.is_file():
            assert SECRET not in f.read_text(errors="replace"), f


def _jsonl(path: Path, *rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------- verdicts and counts

@pytest.mark.parametrize("text, verdict", [
    ("Answer A is more helpful.\n[[A]]", "A"), ("[[B]]", "B"), ("Both are fine. [[C]]", "tie"), ("[[tie]]", "tie"),
    ("Format: [[A]], [[B]] or [[C]]. My verdict: [[B]]", "B"),  # the last mark counts
    ("[[А]]", "A"), ("［［Ｂ］］", "B"), ("[[ С ]]", "tie"),  # Cyrillic and full-width look-alikes
    (" B. ", "B"), ("a", "A"), ("Tie", "tie"),  # a bare verdict
    ("A is better than B", None), ("", None), ("[[D]]", None),
])
def test_parse_verdict(text, verdict):
    assert jd.parse_verdict(text) == verdict


@pytest.mark.parametrize("a_first, b_first, final", [
    ("A", "B", "win"), ("B", "A", "loss"), ("tie", "tie", "tie"),
    ("A", "A", "tie"), ("B", "B", "tie"),  # position bias: the orders disagree
    ("A", "tie", "tie"), ("tie", "A", "tie"), (None, "B", "tie"), (None, None, "tie"),
])
def test_both_orders_make_one_outcome_and_disagreement_is_a_tie(a_first, b_first, final):
    assert jd.outcome(a_first, b_first) == final


def test_wilson_interval_on_known_counts():
    from scipy.stats import binomtest

    assert jd.wilson(5, 10) == pytest.approx([23.66, 76.34], abs=0.01)  # the textbook values
    assert jd.wilson(0, 10) == pytest.approx([0.0, 27.75], abs=0.01)
    assert jd.wilson(10, 10) == pytest.approx([72.25, 100.0], abs=0.01)
    assert jd.wilson(0, 0) is None
    for k, n in ((1, 10), (17, 40), (80, 80)):
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert jd.wilson(k, n) == pytest.approx([100 * ci.low, 100 * ci.high], abs=1e-3)


def test_summary_counts_rates_and_cis():
    s = jd.summarize(["win"] * 6 + ["tie"] * 3 + ["loss"])
    assert (s["n"], s["wins"], s["ties"], s["losses"]) == (10, 6, 3, 1)
    assert (s["win_rate"], s["tie_rate"], s["loss_rate"]) == (60.0, 30.0, 10.0)
    assert s["ci"]["win_rate"] == pytest.approx([31.27, 83.18], abs=0.01)
    assert s["ci"]["loss_rate"] == pytest.approx([1.79, 40.42], abs=0.01)
    assert "Wilson" in s["ci_method"]


# ----------------------------------------------------------------------------------------- reference judge, script share

def test_reference_judge_outcomes():
    from lingotune.eval.metrics import chrf_metric

    ref = "Москва — столица России, крупнейший город страны."
    judge = jd.ReferenceJudge("Cyrillic")
    assert judge.verdict(ref, "Москва.", ref)[0] == "A"
    assert judge.verdict("Москва.", ref, ref)[0] == "B"
    assert judge.verdict(ref, ref, ref)[0] == "tie"
    # the script rule beats chrF++: an English answer with more overlap loses to a Russian one with less
    latin_ref = "Ответ: Paris, France, Europe, the Earth"
    assert judge.verdict("Paris, France, Europe, the Earth", "Ответ", latin_ref) == (
        "B", "chrF++ " + f"{chrf_metric().sentence_score('Paris, France, Europe, the Earth', [latin_ref]).score:.2f}"
        f" vs {chrf_metric().sentence_score('Ответ', [latin_ref]).score:.2f}; target script no vs yes (script rule)")
    # both in the wrong script: chrF++ decides
    assert judge.verdict("Moscow is the capital", "Hello", "Moscow is the capital of Russia")[0] == "A"
    # the tie margin: a difference of at most `tie_margin` points is a tie
    x, y = ref, ref.replace("крупнейший", "крупный")
    diff = chrf_metric().sentence_score(x, [ref]).score - chrf_metric().sentence_score(y, [ref]).score
    assert 0 < diff
    assert jd.ReferenceJudge("Cyrillic", tie_margin=diff + 0.01).verdict(x, y, ref)[0] == "tie"
    assert jd.ReferenceJudge("Cyrillic", tie_margin=diff - 0.01).verdict(x, y, ref)[0] == "A"
    assert jd.ReferenceJudge("Cyrillic", tie_margin=0.0).verdict(x, x, ref)[0] == "tie"
    # an answer without letters does not fail the script rule
    assert judge.score("12000", "12000") == (100.0, True, 0)


def test_strip_echo_cuts_runs_copied_from_the_prompt_and_keeps_the_rest_as_written():
    prompt = "Напишите короткое письмо другу о поездке в Сеул, пожалуйста."
    answer = "Напишите короткое письмо другу о поездке! Привет, друг, Сеул прекрасен."
    own, n = jd.strip_echo(answer, prompt, 5)
    assert (own, n) == ("! Привет, друг, Сеул прекрасен.", 6)
    assert jd.strip_echo(answer, prompt, 7) == (answer, 0)  # the copied run is 6 words long
    assert jd.strip_echo(answer, prompt, 0) == (answer, 0)
    assert jd.strip_echo("НАПИШИТЕ КОРОТКОЕ ПИСЬМО ДРУГУ О", prompt, 5) == ("", 5)  # case-folded
    # four shared words in a row are not an echo at run 5
    assert jd.strip_echo("письмо другу о поездке было", prompt, 5)[1] == 4 - 4


def test_reference_judge_gives_no_credit_for_repeating_the_question():
    from lingotune.eval.metrics import chrf_metric

    prompt = "Расскажите, почему небо голубое и почему закат бывает красным."
    ref = "Небо голубое, потому что воздух рассеивает синий свет сильнее красного; закат бывает красным."
    echo = prompt  # the whole question repeated
    answer = "Воздух рассеивает синий свет."
    # scored whole, the echo wins on overlap with a reference that restates the question ...
    whole = jd.ReferenceJudge("Cyrillic", echo_run=0)
    assert chrf_metric().sentence_score(echo, [ref]).score > chrf_metric().sentence_score(answer, [ref]).score
    assert whole.verdict(echo, answer, ref, prompt)[0] == "A"
    # ... and with the echo cut it scores 0 and loses
    judge = jd.ReferenceJudge("Cyrillic")
    assert judge.score(echo, ref, prompt)[0] == 0.0 and judge.score(echo, ref, prompt)[2] == 9
    verdict, text = judge.verdict(echo, answer, ref, prompt)
    assert verdict == "B" and "echoed from the prompt, not scored: 9 vs 0" in text
    assert judge.identity["echo_run"] == 5 and "echo_run" not in whole.identity


def test_target_language_share():
    answers = ["Привет, мир!", "Hello world", "12345", "", "Привет world", "Hi мир", "Да"]
    # letters in Cyrillic: 1.0, 0.0, -, -, 6/11, 3/5 ("Hi мир": 3 of 5) -> in, out, -, -, in, in, in
    s = jd.target_share(answers, "Cyrillic")
    assert (s["in_script"], s["n"], s["no_letters"]) == (4, 5, 2)
    assert s["share"] == 80.0 and s["ci"] == pytest.approx(jd.wilson(4, 5))
    assert jd.in_script("ab вг", "Cyrillic") is True and jd.in_script("abc вг", "Cyrillic") is False
    assert jd.in_script("...", "Cyrillic") is None
    assert jd.target_share([], "Hangul")["share"] is None


# ----------------------------------------------------------------------------------------- the endpoint client

def test_client_answers_and_sends_the_key_only_in_the_header():
    with Stub() as srv:
        client = api.ChatClient(srv.url, "echo-model", SECRET, timeout=5)
        assert client.chat([{"role": "user", "content": "hi"}], 16) == "echo: hi"
    assert srv.auth == [f"Bearer {SECRET}"]
    assert srv.bodies[0] == {"model": "echo-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16,
                             "temperature": 0.0}
    assert SECRET not in repr(client) and SECRET not in json.dumps(client.identity)


def test_client_retries_a_server_that_fails_twice_then_succeeds():
    with Stub(fail_first=2) as srv:
        assert api.ChatClient(srv.url, "good", timeout=5, retries=3).chat([{"role": "user", "content": "q"}], 8) == GOOD
    assert srv.requests == 3


def test_client_backs_off_exponentially(monkeypatch):
    slept = []
    monkeypatch.setattr(api.time, "sleep", slept.append)
    with Stub(fail_first=3) as srv:
        assert api.ChatClient(srv.url, "good", timeout=5, retries=3, backoff=0.5).chat([{"role": "user", "content": "q"}], 8)
    assert slept == [0.5, 1.0, 2.0]


def test_client_gives_up_on_a_server_that_always_times_out():
    with Stub(hang=True, hang_seconds=1.0) as srv:
        client = api.ChatClient(srv.url, "good", SECRET, timeout=0.2, retries=2)
        with pytest.raises(api.ApiError) as e:
            client.chat([{"role": "user", "content": "q"}], 8)
    msg = str(e.value)
    assert "\n" not in msg and "timed out" in msg and "gave up after 3 attempts" in msg and srv.url in msg
    assert srv.requests == 3 and SECRET not in msg


def test_client_does_not_retry_a_refusal_and_blanks_the_echoed_key():
    with Stub(status=401) as srv, pytest.raises(api.ApiError) as e:
        api.ChatClient(srv.url, "good", SECRET, timeout=5).chat([{"role": "user", "content": "q"}], 8)
    assert srv.requests == 1 and "HTTP 401" in str(e.value) and SECRET not in str(e.value) and "***" in str(e.value)


def test_client_errors_are_one_line(monkeypatch):
    with Stub() as srv:
        url = srv.url
    with pytest.raises(api.ApiError, match="cannot connect.*gave up after 2 attempts"):
        api.ChatClient(url, "m", timeout=2, retries=1).chat([{"role": "user", "content": "q"}], 8)
    with pytest.raises(api.ApiError, match="not an http"):
        api.ChatClient("localhost:8000", "m")
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(api.ApiError, match="'NO_SUCH_KEY_VAR' is not set"):
        api.api_key_from_env("NO_SUCH_KEY_VAR")
    with Stub(reply=lambda m, msgs: None) as srv, pytest.raises(api.ApiError, match=r"no choices\[0\].message.content"):
        api.ChatClient(srv.url, "m", timeout=5).chat([{"role": "user", "content": "q"}], 8)  # content: null


# ----------------------------------------------------------------------------------------- API models in inference

def test_api_model_generates_through_the_one_inference_surface():
    with Stub() as srv:
        model = inference.ApiModel(api.ChatClient(srv.url, "echo", timeout=5))
        tok = model.tokenizer
        convs = [[{"role": "user", "content": f"line {i}\nmore"}] for i in range(5)]
        assert inference.generate_chat(model, tok, convs, 32, batch_size=2) == [f"echo: line {i}\nmore" for i in range(5)]
        assert inference.generate_chat(model, tok, convs[:2], 32, stop="line") == ["echo: line 0\n", "echo: line 1\n"]
        # the runners' path: chat template -> ids -> generate
        ids = [inference.encode(tok, inference.chat_text(tok, c)) for c in convs[:2]]
        assert inference.generate(model, tok, ids, [8, 8]) == ["echo: line 0\nmore", "echo: line 1\nmore"]
    assert [b["max_tokens"] for b in srv.bodies[-2:]] == [8, 8]
    assert inference.cut_after_first_line("\n\n  Да\nнет") == "\n\n  Да\n"
    for fn, args in ((inference.continuation_logprobs, ([([1], [2])],)), (inference.token_nlls, ([[1, 2]],)),
                     (inference.shared_continuation_logprobs, ([[1]], [[2]]))):
        with pytest.raises(inference.ApiModelError, match="an endpoint gives no"):
            fn(model, tok, *args)


def test_answers_are_cached_and_an_interrupted_run_keeps_the_finished_ones(tmp_path, monkeypatch):
    prompts = [ans.Prompt(str(i), f"вопрос {i}" + (" HANG" if i == 2 else "")) for i in range(4)]
    path = tmp_path / "answers.jsonl"
    with Stub(hang="HANG", hang_seconds=1.0) as srv:
        ep = ans.Endpoint(srv.url, timeout=0.2, retries=1)
        with pytest.raises(api.ApiError, match="timed out"):
            ans.answers_for(ans.ModelSpec("api:echo"), prompts, ans.JsonlCache(path), ep, 32, batch_size=1)
        assert srv.requests == 4  # prompts 0, 1, then prompt 2 twice
        assert len(ans.JsonlCache(path).items) == 2
        srv.hang = None  # the endpoint recovers; the rerun asks only for what is missing
        out = ans.answers_for(ans.ModelSpec("api:echo"), prompts, ans.JsonlCache(path), ep, 32, 2)
        assert out == [f"echo: вопрос {i}" + (" HANG" if i == 2 else "") for i in range(4)]
        assert srv.requests == 4 + 2
        monkeypatch.setattr(ans.ModelSpec, "load", lambda *a, **k: pytest.fail("all answers are cached: no load"))
        assert ans.answers_for(ans.ModelSpec("api:echo"), prompts, ans.JsonlCache(path), ep, 32, 2) == out
        monkeypatch.undo()
        # another model or another budget: other answers
        ans.answers_for(ans.ModelSpec("api:other"), prompts[:1], ans.JsonlCache(path), ep, 32, 2)
        ans.answers_for(ans.ModelSpec("api:echo"), prompts[:1], ans.JsonlCache(path), ep, 64, 2)
        assert srv.requests == 6 + 2
    with path.open("a") as fh:
        fh.write('{"key": "torn')  # a kill mid-write
    assert len(ans.JsonlCache(path).items) == 6


def test_local_model_answers_through_generate_chat(tiny_model_dir, tmp_path):
    prompts = [ans.Prompt("1", "Привет"), ans.Prompt("2", "Как дела?")]
    spec = ans.ModelSpec(str(tiny_model_dir))
    out = ans.answers_for(spec, prompts, ans.JsonlCache(tmp_path / "a.jsonl"), ans.Endpoint(), 4, 2)
    assert len(out) == 2 and all(isinstance(o, str) for o in out)
    ident = spec.identity(ans.Endpoint())
    assert ident["kind"] == "local" and ident["source"] == str(tiny_model_dir.resolve()) and ident["files"]


# ----------------------------------------------------------------------------------------- prompts

def test_prompt_files_and_their_errors(tmp_path):
    good = _jsonl(tmp_path / "p.jsonl", {"prompt": "Вопрос?", "reference": "Ответ."}, {"prompt": "Ещё", "id": "x"})
    ps = ans.load_prompts(str(good), "ru")
    assert [(p.id, p.prompt, p.reference) for p in ps] == [("1", "Вопрос?", "Ответ."), ("x", "Ещё", None)]
    assert ans.load_prompts(str(good), "ru", limit=1) == ps[:1]
    bad = {"empty.jsonl": ('{"prompt": "a"}\n\n{"prompt": "  "}\n', r"empty\.jsonl:3: empty prompt"),
           "nofield.jsonl": ('{"text": "a"}\n', r"nofield\.jsonl:1: no 'prompt' field"),
           "notjson.jsonl": ('{"prompt": "a"}\n{oops\n', r"notjson\.jsonl:2: malformed JSON"),
           "list.jsonl": ('["a"]\n', r"list\.jsonl:1: expected a JSON object, got str"),
           "ref.jsonl": ('{"prompt": "a", "reference": 3}\n', r"ref\.jsonl:1: field 'reference' must be a string"),
           "blank.jsonl": ("\n\n", r"blank\.jsonl: the file is empty")}
    for name, (text, message) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(UserError, match=message):
            ans.load_prompts(str(tmp_path / name), "ru")
    with pytest.raises(DataError, match="missing.jsonl: file not found"):
        ans.load_prompts(str(tmp_path / "missing.jsonl"), "ru")


def test_builtin_prompt_sources(shared_data):
    starter = ans.load_prompts("starter", "ru", limit=5)
    assert len(starter) == 5 and all(p.reference and p.prompt for p in starter)
    ru = ans.load_prompts("mt_bench", "ru", str(shared_data))
    ko = ans.load_prompts("mt_bench", "ko", str(shared_data))
    assert len(ru) == 80 and sum(p.reference is not None for p in ru) == 40
    assert len(ko) == 80 and all(p.reference for p in ko) and ko[0].id == "81"
    with pytest.raises(FileFormatError, match="no MT-Bench for language 'ar'"):
        ans.load_prompts("mt_bench", "ar", str(shared_data))


# ----------------------------------------------------------------------------------------- judges

def test_llm_judge_judges_both_orders_and_caches(tmp_path):
    prompts = [ans.Prompt(str(i), f"Вопрос {i}?") for i in range(3)]
    cache = ans.JsonlCache(tmp_path / "j.jsonl")
    template = jd.get_language("ru").judge_prompt
    with Stub() as srv:
        ep = ans.Endpoint(srv.url, timeout=5)
        judge = jd.ChatJudge("llm", ans.ModelSpec("api:fair"), ep, template, batch_size=2)
        first, second = jd.judge_both_orders(judge, prompts, [GOOD, BAD, GOOD], [BAD, GOOD, GOOD], cache, 2)
        assert [v["verdict"] for v in first] == ["A", "B", "A"] and [v["verdict"] for v in second] == ["B", "A", "A"]
        assert [jd.outcome(x["verdict"], y["verdict"]) for x, y in zip(first, second)] == ["win", "loss", "tie"]
        assert srv.requests == 6
        shown = [b["messages"] for b in srv.bodies]  # concurrent requests: in any order
        assert all(len(m) == 1 and m[0]["content"].startswith("Ты — беспристрастный судья") for m in shown)
        expected = jd.get_language("ru").judge_prompt.format(question="Вопрос 1?", answer_a=GOOD, answer_b=BAD)
        assert [{"role": "user", "content": expected}] in shown  # prompt 1 with B's answer shown first
        jd.judge_both_orders(judge, prompts, [GOOD, BAD, GOOD], [BAD, GOOD, GOOD], cache, 2)
        assert srv.requests == 6  # all from the cache


def test_local_model_judge_reads_known_verdict_texts(tiny_model_dir, tmp_path, monkeypatch):
    """A tiny random model as the judge; its generation is replaced by known verdict texts."""
    seen = []

    def scripted(model, tok, convs, max_new_tokens, batch_size=8, stop="eos", desc=""):
        seen.append(type(model).__name__)
        texts = [c[-1]["content"] for c in convs]
        return ["Не могу решить" if "\nвопрос 2\n" in t else "Ответ A лучше.\n[[A]]"
                if t.split("[Ответ A]\n")[1].startswith("хорошо") else "Лучше второй: [[B]]" for t in texts]

    monkeypatch.setattr(inference, "generate_chat", scripted)
    opts = jd.JudgeOptions(a=ans.ModelSpec("api:x"), b=ans.ModelSpec("api:y"), prompts="-", judge="local",
                           out=tmp_path, judge_model=str(tiny_model_dir))
    judge = jd.make_judge(opts)
    prompts = [ans.Prompt(str(i), f"вопрос {i}") for i in range(3)]
    first, second = jd.judge_both_orders(judge, prompts, ["хорошо", "плохо", "хорошо"], ["плохо", "хорошо", "плохо"],
                                         ans.JsonlCache(tmp_path / "j.jsonl"), 8)
    assert set(seen) == {"LlamaForCausalLM"}
    assert [v["verdict"] for v in first] == ["A", "B", None] and [v["verdict"] for v in second] == ["B", "A", None]
    recs = jd.audit_records(prompts, ["хорошо", "плохо", "хорошо"], ["плохо", "хорошо", "плохо"], first, second, "Cyrillic")
    assert [r["final"] for r in recs] == ["win", "loss", "tie"] and [r["consistent"] for r in recs] == [True, True, True]


# ----------------------------------------------------------------------------------------- the CLI

def _judge(args: list[str], url: str | None = None):
    extra = ["--base-url", url, "--api-key-env", "MY_KEY", "--api-timeout", "0.3", "--api-retries", "1"] if url else []
    return CliRunner().invoke(app, ["judge", *args, *extra])


def test_cli_judge_llm_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", SECRET)
    monkeypatch.chdir(tmp_path)
    p = _jsonl(tmp_path / "p.jsonl", *({"prompt": f"Вопрос {i}?"} for i in range(4)))
    with Stub() as srv:
        res = _judge(["--a", "api:good", "--b", "api:bad", "--prompts", str(p), "--judge", "llm", "--judge-model", "fair",
                      "--out", "out", "--lang", "ru"], srv.url)
        assert res.exit_code == 0, res.output
        assert srv.requests == 4 + 4 + 8 and set(srv.auth) == {f"Bearer {SECRET}"}
        s = json.loads(Path("out/summary.json").read_text())
        assert (s["n"], s["wins"], s["ties"], s["losses"], s["inconsistent"], s["unparsed"]) == (4, 4, 0, 0, 0, 0)
        assert s["ci"]["win_rate"] == pytest.approx(jd.wilson(4, 4))
        assert s["target_language_share"]["a"]["share"] == 100.0 and s["target_language_share"]["b"]["share"] == 0.0
        assert s["a"]["identity"] == {"kind": "api", "base_url": srv.url, "model": "good"}
        recs = [json.loads(line) for line in Path("out/judgements.jsonl").read_text().splitlines()]
        assert len(recs) == 4 and recs[0]["answer_a"] == GOOD and recs[0]["answer_b"] == BAD
        assert recs[0]["a_first"]["verdict"] == "A" and recs[0]["b_first"]["verdict"] == "B" and recs[0]["final"] == "win"
        assert "A wins" in res.output and "100.0" in res.output
        again = _judge(["--a", "api:good", "--b", "api:bad", "--prompts", str(p), "--judge", "llm", "--judge-model",
                        "fair", "--out", "out"], srv.url)
        assert again.exit_code == 2 and "--resume" in again.output
        again = _judge(["--a", "api:good", "--b", "api:bad", "--prompts", str(p), "--judge", "llm", "--judge-model",
                        "biased", "--out", "out", "--resume"], srv.url)
        assert again.exit_code == 0 and srv.requests == 16 + 8  # answers cached; the new judge judges
        s = json.loads(Path("out/summary.json").read_text())
        assert (s["ties"], s["inconsistent"]) == (4, 4)  # "always the first" disagrees with itself across orders
    _no_secret_anywhere(tmp_path, res.output, again.output)


def test_cli_judge_reference_with_starter_prompts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MY_KEY", raising=False)
    with Stub() as srv:
        res = _judge(["--a", "api:good", "--b", "api:echo", "--prompts", "starter", "--limit", "3", "--judge", "reference",
                      "--out", "out"], srv.url)
    assert res.exit_code == 2 and "'MY_KEY' is not set" in res.output and not Path("out").exists()
    monkeypatch.setenv("MY_KEY", SECRET)
    with Stub() as srv:
        res = _judge(["--a", "api:good", "--b", "api:echo", "--prompts", "starter", "--limit", "3", "--judge", "reference",
                      "--out", "out"], srv.url)
    assert res.exit_code == 0, res.output
    s = json.loads(Path("out/summary.json").read_text())
    assert s["n"] == 3 and s["judge"]["kind"] == "reference" and s["judge"]["tie_margin"] == 1.0
    recs = [json.loads(line) for line in Path("out/judgements.jsonl").read_text().splitlines()]
    assert all(r["reference"] and "chrF++" in r["a_first"]["text"] for r in recs)


def test_cli_judge_endpoint_that_times_out_keeps_finished_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", SECRET)
    monkeypatch.chdir(tmp_path)
    p = _jsonl(tmp_path / "p.jsonl", {"prompt": "Первый?"}, {"prompt": "Второй HANG?"})
    with Stub(hang="HANG", hang_seconds=1.0) as srv:
        res = _judge(["--a", "api:good", "--b", "api:bad", "--prompts", str(p), "--judge", "llm", "--judge-model", "fair",
                      "--out", "out", "--batch-size", "1"], srv.url)
        assert res.exit_code == 2 and "timed out" in res.output and "gave up after 2 attempts" in res.output
        assert "kept in out/cache: run the same command again" in res.output
        assert len(res.output.strip().splitlines()) == 1 and srv.requests == 3
        assert len(ans.JsonlCache(Path("out/cache/answers.jsonl")).items) == 1 and not Path("out/summary.json").exists()
        srv.hang = None  # the endpoint recovers: the same command finishes the run, asking only for what is missing
        again = _judge(["--a", "api:good", "--b", "api:bad", "--prompts", str(p), "--judge", "llm", "--judge-model",
                        "fair", "--out", "out", "--batch-size", "1"], srv.url)
        assert again.exit_code == 0, again.output
        assert srv.requests == 3 + 1 + 2 + 4  # A's second answer, B's two, four judgements
    _no_secret_anywhere(tmp_path, res.output, again.output)


def test_cli_judge_local_models(tiny_model_dir, tmp_path, monkeypatch):
    """A local model against an API model, judged offline; then a local model as the judge."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MY_KEY", raising=False)
    p = _jsonl(tmp_path / "p.jsonl", {"prompt": "Столица России?", "reference": GOOD}, {"prompt": "2+2?", "reference": "4"})
    args = ["--a", str(tiny_model_dir), "--b", "api:good", "--prompts", str(p), "--max-new-tokens", "4", "--out", "out"]
    with Stub() as srv:
        res = _judge([*args, "--judge", "reference"], srv.url)
        assert res.exit_code == 2 and "'MY_KEY' is not set" in res.output and not Path("out").exists()
        monkeypatch.setenv("MY_KEY", SECRET)
        res = _judge([*args, "--judge", "reference"], srv.url)
        assert res.exit_code == 0, res.output
        assert srv.requests == 2
    s = json.loads(Path("out/summary.json").read_text())
    assert s["n"] == 2 and s["a"]["identity"]["kind"] == "local" and s["wins"] + s["ties"] + s["losses"] == 2
    judged = []

    def judge_texts(model, tok, convs, *a, **k):
        judged.append(type(model).__name__)
        return ["[[C]]"] * len(convs)

    monkeypatch.setattr(inference, "generate_chat", judge_texts)
    res = _judge([*args, "--judge", "local", "--judge-model", str(tiny_model_dir), "--resume"], srv.url)
    assert res.exit_code == 0, res.output  # every answer from the cache: the (stopped) endpoint is not asked
    assert judged == ["LlamaForCausalLM"]  # one batch: 2 prompts x 2 orders
    s = json.loads(Path("out/summary.json").read_text())
    assert s["ties"] == 2 and s["judge"]["kind"] == "local" and s["judge"]["model"]["kind"] == "local"


@pytest.mark.parametrize("changes, message", [
    ({"--judge": "oracle"}, "option --judge: unknown judge 'oracle'; use one of llm, local, reference"),
    ({"--judge-model": None}, "option --judge-model: judge 'llm' needs a model"),
    ({"--prompts": "missing.jsonl"}, "missing.jsonl: file not found"),
    ({"--prompts": "empty.jsonl"}, "empty.jsonl:2: empty prompt"),
    ({"--prompts": "noref.jsonl", "--judge": "reference"}, "the prompts of noref.jsonl have no reference answers"),
    ({"--a": "api:"}, "option --a: 'api:' needs a model name"),
    ({"--b": "./no/such/dir"}, "model './no/such/dir': no such directory"),
    ({"--a": "bundled", "--a-adapter": "nowhere"}, "adapter 'nowhere': no adapter_config.json there"),
    ({"--lang": "xx"}, "unknown language 'xx'"),
    ({"--judge": "local", "--judge-model": "api:gpt"}, "use --judge llm --judge-model gpt"),
    ({"--judge": "reference", "--tie-margin": "-1"}, "option --tie-margin: must be >= 0"),
    ({"--out": "taken"}, "taken: exists and is not a lingotune run directory"),
])
def test_cli_judge_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, changes, message):
    monkeypatch.chdir(tmp_path)
    _jsonl(tmp_path / "ok.jsonl", {"prompt": "Вопрос?", "reference": "Ответ."})
    (tmp_path / "empty.jsonl").write_text('{"prompt": "a"}\n{"prompt": ""}\n')
    _jsonl(tmp_path / "noref.jsonl", {"prompt": "Вопрос?"})
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    args = {"--a": "api:good", "--b": "api:bad", "--prompts": "ok.jsonl", "--judge": "llm", "--judge-model": "fair",
            "--out": "out", "--base-url": "http://127.0.0.1:9/v1", **changes}
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    res = CliRunner().invoke(app, ["judge", *(x for k, v in args.items() if v is not None for x in (k, v))])
    assert res.exit_code == 2, res.output
    assert message in res.output and len(res.output.strip().splitlines()) == 1
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_cli_judge_refused_by_the_endpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", SECRET)
    monkeypatch.chdir(tmp_path)
    p = _jsonl(tmp_path / "p.jsonl", {"prompt": "Вопрос?"})
    with Stub(status=401) as srv:
        res = _judge(["--a", "api:good", "--b", "api:bad", "--prompts", str(p), "--judge", "llm", "--judge-model", "fair",
                      "--out", "out"], srv.url)
    assert res.exit_code == 2 and "HTTP 401" in res.output and len(res.output.strip().splitlines()) == 1
    _no_secret_anywhere(tmp_path, res.output)


# ----------------------------------------------------------------------------------------- lingotune eval --api-model

def _yesno_task(root: Path) -> Path:
    (root / "qa").mkdir()
    _jsonl(root / "qa" / "val.jsonl", *({"q": f"q{i}?", "label": i % 2 == 0} for i in range(6)))
    task = root / "qa.yaml"
    task.write_text("name: qa\nlang: ru\nkind: yesno\nformat: jsonl\nfile: qa/val.jsonl\n"
                    "prompts: ['{q} {answer_yes_no}']\nlabel_field: label\nlabels: {'true': 'yes', 'false': 'no'}\n")
    return task


def test_cli_eval_scores_an_api_model_on_a_generation_task(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", SECRET)
    monkeypatch.chdir(tmp_path)
    task = _yesno_task(tmp_path)
    common = ["eval", "--data-root", str(tmp_path), "--out", "out", "--label", "gpt", "--n-bootstrap", "0",
              "--api-key-env", "MY_KEY"]
    with Stub() as srv:
        res = CliRunner().invoke(app, [*common, "--api-model", "yesno", "--base-url", srv.url, "--tasks", str(task)])
        assert res.exit_code == 0, res.output
        assert srv.requests == 6 and set(srv.auth) == {f"Bearer {SECRET}"}
        sent = {b["messages"][0]["content"]: b for b in srv.bodies}  # concurrent requests: in any order
        assert sent["q0? Ответь да или нет."]["messages"] == [{"role": "user", "content": "q0? Ответь да или нет."}]
        assert {b["max_tokens"] for b in srv.bodies} == {8}
    scores = json.loads(Path("out/gpt/scores.json").read_text())
    assert scores["qa"]["accuracy"] == 100.0 and scores["qa"]["rate"] == 100.0 and scores["qa"]["n"] == 6
    recs = [json.loads(line) for line in Path("out/gpt/qa.jsonl").read_text().splitlines()]
    assert recs[1]["output"] == "Нет.\nПотому что" and recs[1]["parsed"] == "no"
    assert recs[0]["prompt"] == json.dumps(sent["q0? Ответь да или нет."]["messages"], ensure_ascii=False)  # the "chat template"
    refused = CliRunner().invoke(app, [*common, "--api-model", "yesno", "--base-url", srv.url,
                                       "--tasks", f"{task},flores_ru_bpc,kobest_copa"])
    assert refused.exit_code == 2 and len(refused.output.strip().splitlines()) == 1
    assert "flores_ru_bpc (perplexity)" in refused.output and "kobest_copa (multiple_choice)" in refused.output
    assert "qa" not in refused.output.split("log-likelihoods:")[1]
    both = CliRunner().invoke(app, [*common, "--api-model", "yesno", "--tasks", str(task), "--mode", "both"])
    assert both.exit_code == 2 and "qa (yes/no with --mode both)" in both.output
    _no_secret_anywhere(tmp_path, res.output)


# ----------------------------------------------------------------------------------------- win rates inside a compare grid

def test_judge_grid_pairs_seed_by_seed_and_the_untouched_model_with_every_seed(tmp_path):
    prompts = [ans.Prompt(str(i), f"q{i}", ref, "p.jsonl") for i, ref in
               enumerate(["Москва — столица России.", "Два плюс два — четыре.", "Солнце — звезда."])]
    good = [p.reference for p in prompts]
    bad = ["Moscow.", "Four.", "The Sun."]
    answers = {"sft": {0: good, 1: bad},
               "orpo": {0: good, 1: good},            # seed 0: ties with sft; seed 1: beats English answers
               "untouched": {None: bad}}              # loses to sft seed 0, ties with seed 1 (both English)
    summary, records = jd.judge_grid(jd.ReferenceJudge("Cyrillic"), prompts, answers, "sft", "Cyrillic",
                                     ans.JsonlCache(tmp_path / "c.jsonl"))
    orpo, untouched = summary["variants"]["orpo"], summary["variants"]["untouched"]
    assert (orpo["n"], orpo["wins"], orpo["ties"], orpo["losses"]) == (6, 3, 3, 0)
    assert (untouched["n"], untouched["wins"], untouched["ties"], untouched["losses"]) == (6, 0, 3, 3)
    assert untouched["seeds"] == [0, 1] and "sft" not in summary["variants"]
    assert summary["share"]["sft"]["share"] == 50.0 and summary["share"]["untouched"]["share"] == 0.0
    assert summary["share"]["orpo"]["n"] == 6
    assert {(r["variant"], r["seed"]) for r in records} == {("orpo", 0), ("orpo", 1), ("untouched", 0), ("untouched", 1)}
    assert all(r["consistent"] for r in records)
    # judged again from the cache: the same outcomes
    again, _ = jd.judge_grid(jd.ReferenceJudge("Cyrillic"), prompts, answers, "sft", "Cyrillic",
                             ans.JsonlCache(tmp_path / "c.jsonl"))
    assert again == summary


def test_compare_grid_reports_win_rates_and_shares_and_keeps_judged_prompts_out_of_training(tiny_model_dir, tmp_path):
    from helpers import make_recipe

    from lingotune import compare as cmp
    from lingotune.data.starter import generate
    from lingotune.recipe import RecipeError
    from lingotune.run import build_data

    stage2 = generate("ru").stage2
    judged = tmp_path / "judged.jsonl"
    judged.write_text("".join(json.dumps({"id": f"j{i}", "prompt": r.prompt, "reference": r.response},
                                         ensure_ascii=False) + "\n" for i, r in enumerate(stage2[:3])), encoding="utf-8")
    over = {
        "model.source": str(tiny_model_dir), "data.max_stage1": 8, "data.max_stage2": 8,
        "method.stage1.steps": 1, "method.stage2.steps": 1, "method.pref.sft": {"steps": 1},
        "train.max_len": 64, "train.batch_size": 2,
        "eval.tasks": ["starter_heldout"], "eval.limit": 2, "eval.n_bootstrap": 0, "output.sample_prompts": 1,
        "compare.methods": ["sft", "lora"], "compare.seeds": [0],
        "compare.judge": {"against": "sft", "prompts": str(judged), "max_new_tokens": 4},
    }
    recipe = make_recipe(**over)
    built = build_data(recipe, __import__("rich.console").console.Console(quiet=True))
    assert built.report["leakage_dropped"] >= 3  # the judged prompts are evaluation data
    assert not {r.messages[-2]["content"] for r in built.stage2} & {r.prompt for r in stage2[:3]}
    out = tmp_path / "grid"
    summary = cmp.compare(recipe, out)
    for cell in ("untouched", "sft-s0", "lora-s0"):
        rows = [json.loads(x) for x in (out / "data" / cell / "judge_answers.jsonl").read_text().splitlines()]
        assert [r["id"] for r in rows] == ["j0", "j1", "j2"]
    j = summary["judge"]["data"]
    assert j["against"] == "sft" and set(j["variants"]) == {"untouched", "lora"} and set(j["share"]) == {"untouched", "sft", "lora"}
    assert j["variants"]["lora"]["n"] == 3
    assert len((out / "data" / "judgements.jsonl").read_text().splitlines()) == 6
    assert "Pairwise win rate against `sft`" in (out / "report.md").read_text()
    with pytest.raises(RecipeError, match="compare.judge.against: 'orpo' is not one of compare.methods"):
        make_recipe(**{**over, "compare.judge": {"against": "orpo"}})
    with pytest.raises(RecipeError, match="judge 'local' needs 'judge_model'"):
        make_recipe(**{**over, "compare.judge": {"against": "sft", "judge": "local"}})
    no_ref = tmp_path / "noref.jsonl"
    no_ref.write_text(json.dumps({"prompt": "Привет"}) + "\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="compare.judge: .*no reference answers"):
        cmp.compare(make_recipe(**{**over, "compare.judge": {"against": "sft", "prompts": str(no_ref)}}), tmp_path / "g2")
    assert not (tmp_path / "g2").exists()
