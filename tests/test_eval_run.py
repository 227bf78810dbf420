"""The model paths: generation, log-likelihood, perplexity, evaluate() end to end, the CLI.

A tiny random Llama (tests/conftest.py) with a character-level tokenizer built in memory, so
nothing here needs the bundled model (except the one test marked bundled).
"""

from __future__ import annotations

import json
import math
import sys
import types

import pytest
import torch

from lingotune.eval import EvalConfig, evaluate, load_task
from lingotune import inference
from lingotune.eval.perplexity import line_ids, score_texts

SPECIALS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CHARS = list(" \nabcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,?!'\"-:#") + list("данетДН")
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer():
    """Character-level tokenizer (vocab < 128) with ChatML-like special tokens and a chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + ["<unk>"] + CHARS)}
    assert len(vocab) <= 128
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="<|im_end|>",
                                  unk_token="<unk>", additional_special_tokens=["<|im_start|>", "</s>"])
    tok.chat_template = TEMPLATE
    tok.padding_side = "right"
    return tok


@pytest.fixture
def tok():
    return tiny_tokenizer()


def test_tiny_tokenizer_roundtrip(tok):
    ids = inference.encode(tok, "<|im_start|>user\nда?<|im_end|>")
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert tok.decode(ids, skip_special_tokens=True) == "user\nда?"


def _tiny_gemma3():
    """Gemma-3's layout in miniature: a sliding-window layer (window 4, shorter than the prompts) and a global one."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    return Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=128, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, sliding_window=4, layer_types=["sliding_attention", "full_attention"]))


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_loglik_with_each_contexts_own_options_equals_pairs(tiny_llama, tok, arch):
    """Multiple choice: every context with its own options, of different lengths and counts, scored from one
    forward pass of the context (KV cache, right-padded options) equals scoring each (context, option) alone;
    also where the contexts outrun a sliding window (Gemma-3), whose cache must be cropped back each time."""
    tiny_llama = tiny_llama if arch == "llama" else _tiny_gemma3()
    enc = lambda t: inference.encode(tok, t)  # noqa: E731
    ctxs = [enc("The cat sat on the"), enc("x"), enc("Кошка сидела на ковре и смотрела")]
    opts = [[enc(" mat"), enc(" very long and winding road"), enc(" mat, and then on the chair")],  # a 3rd option
            # of several tokens beside a context with only 2 (they share a batch): the short row is masked out
            [enc(" y z"), enc(" w")],
            [enc(" в окно"), enc(" на дверь и на стены"), enc(" ."), enc(" долго")]]
    shared = inference.shared_continuation_logprobs(tiny_llama, tok, ctxs, opts, batch_size=2)
    pairs = inference.continuation_logprobs(tiny_llama, tok, [(c, o) for c, os in zip(ctxs, opts) for o in os],
                                            batch_size=1)
    assert [len(r) for r in shared] == [3, 2, 4]
    assert [x for row in shared for x in row] == pytest.approx(pairs, abs=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_generate_and_score_equals_generating_and_scoring_apart(tiny_llama, tok, arch):
    """One prefill per batch for both: the greedy texts equal `generate`'s and the scores equal
    `shared_continuation_logprobs`'s, for prompts of different lengths in one batch and continuations of
    several tokens, under both stopping rules; also with a sliding-window cache (Gemma-3)."""
    tiny_llama = tiny_llama if arch == "llama" else _tiny_gemma3()
    enc = lambda t: inference.encode(tok, t)  # noqa: E731
    prompts = [enc(inference.chat_text(tok, [{"role": "user", "content": q}]))
               for q in ["да?", "a much longer question, is it?", "Кошка сидела на ковре?"]]
    conts = [enc("да"), enc("Нет"), enc(" very long and winding")]
    for stop in ("eos", "line"):
        texts, scores = inference.generate_and_score(tiny_llama, tok, prompts, conts, 7, batch_size=2, stop=stop)
        assert texts == inference.generate(tiny_llama, tok, prompts, 7, batch_size=2, stop=stop)
        apart = inference.shared_continuation_logprobs(tiny_llama, tok, prompts, conts, batch_size=2)
        assert [x for row in scores for x in row] == pytest.approx([x for row in apart for x in row], abs=1e-5)
    assert tok.padding_side == "right" and tiny_llama.training is True  # restored


def test_a_yes_no_task_in_mode_both_scores_as_its_two_modes_apart(tiny_llama, tok):
    """Mode both (the generated sample's prompts run once for both) gives the records and metrics that mode
    generate and mode loglik give on their own, a generation limit included."""
    from lingotune.eval.config import EvalConfig
    from lingotune.eval.tasks import load_task
    from lingotune.eval.yesno import run_yesno

    rows = [{"id": f"q{i}", "question": q, "passage": "Текст.", "label": "yes" if i % 2 else "no"}
            for i, q in enumerate(["Это правда?", "Небо синее?", "Два больше трёх, не так ли?", "Да?", "Нет?"])]
    spec = load_task("danetqa")
    both = run_yesno(tiny_llama, tok, spec, rows, "ru", EvalConfig(mode="both", generate_limits={"danetqa": 3},
                                                                   max_new_tokens=4, batch_size=2))
    gen = run_yesno(tiny_llama, tok, spec, rows[:3], "ru", EvalConfig(mode="generate", max_new_tokens=4, batch_size=2))
    ll = run_yesno(tiny_llama, tok, spec, rows, "ru", EvalConfig(mode="loglik", batch_size=2))
    assert [r["output"] for r in both[0][:3]] == [r["output"] for r in gen[0]]
    assert "output" not in both[0][3]
    assert [r[k] for r in both[0] for k in ("logp_yes", "logp_no")] == pytest.approx(
        [r[k] for r in ll[0] for k in ("logp_yes", "logp_no")], abs=2e-4)
    assert both[1]["n_generated"] == 3 and both[1]["accuracy_ll"] == ll[1]["accuracy_ll"]
    assert both[1]["rate"] == gen[1]["rate"]


def test_generate_left_pads_and_matches_unbatched(tiny_llama, tok):
    prompts = [inference.encode(tok, inference.chat_text(tok, [{"role": "user", "content": q}])) for q in ["hi?", "a much longer question?"]]
    batched = inference.generate(tiny_llama, tok, prompts, 6, batch_size=2)
    single = [inference.generate(tiny_llama, tok, [p], 6, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert tok.padding_side == "right"  # restored
    assert tiny_llama.training is True  # restored (a fresh module is in training mode)


def test_loglik_cached_equals_pairs_and_unpadded(tiny_llama, tok):
    ctxs = [inference.encode(tok, "<|im_start|>user\nis it?<|im_end|>\n<|im_start|>assistant\n"), inference.encode(tok, "ab")]
    conts = [inference.encode(tok, "да"), inference.encode(tok, "Нет"), inference.encode(tok, "a")]
    shared = inference.shared_continuation_logprobs(tiny_llama, tok, ctxs, conts, batch_size=2)
    pairs = inference.continuation_logprobs(tiny_llama, tok, [(c, k) for c in ctxs for k in conts], batch_size=3)
    assert [x for row in shared for x in row] == pytest.approx(pairs, abs=1e-4)
    # against a plain unpadded forward pass
    with torch.no_grad():
        seq = torch.tensor([ctxs[1] + conts[1]])
        logp = torch.log_softmax(tiny_llama(seq).logits[0], -1)
        n = len(ctxs[1])
        want = sum(float(logp[n - 1 + j, t]) for j, t in enumerate(conts[1]))
    assert shared[1][1] == pytest.approx(want, abs=1e-4)


class Uniform(torch.nn.Module):
    """A stub causal LM whose next-token distribution is uniform over V tokens."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, **kw):
        return types.SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab) + self.w)


def test_bits_per_char_uniform_model_is_log2_vocab(tok):
    model = Uniform(len(tok))
    texts = ["abc da", "hello world?", "xy"]
    scores = score_texts(model, tok, texts, batch_size=2)
    # character-level tokenizer without BOS: c tokens, the first is context, c-1 cost ln V each
    for (nll, n, chars), t in zip(scores, texts):
        assert chars == len(t) and n == len(t) - 1
        assert nll == pytest.approx((len(t) - 1) * math.log(len(tok)), rel=1e-5)
    from lingotune.eval.perplexity import run_perplexity

    rows = [{"id": i, "text": t} for i, t in enumerate(texts)]
    _, m, ci = run_perplexity(model, tok, load_task("flores_ru_bpc"), rows, EvalConfig(n_bootstrap=50))
    c = sum(map(len, texts))
    assert m["bits_per_char"] == pytest.approx((c - len(texts)) * math.log2(len(tok)) / c, rel=1e-5)
    assert m["perplexity"] == pytest.approx(len(tok), rel=1e-4)
    lo, hi = ci["bits_per_char"]
    assert lo <= m["bits_per_char"] <= hi
    # a tokenizer that adds BOS: every character's token is scored, bits/char is exactly log2 V
    tok.add_bos_token = True
    tok._tokenizer.post_processor = __import__("tokenizers").processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    assert line_ids(tok, "ab")[0] == tok.bos_token_id
    _, m, _ = run_perplexity(model, tok, load_task("flores_ru_bpc"), rows, EvalConfig(n_bootstrap=0))
    assert m["bits_per_char"] == pytest.approx(math.log2(len(tok)), rel=1e-5)


def _write_data(root):
    (root / "qa").mkdir(parents=True)
    rows = [{"q": f"q{i}?", "label": i % 2 == 0} for i in range(6)]
    (root / "qa" / "val.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (root / "qa" / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (root / "src.txt").write_text("da net\nabc\n")
    (root / "tgt.txt").write_text("yes no\nabc\n")
    task = root / "qa.yaml"
    task.write_text(
        "name: qa\nlang: ru\nkind: yesno\nformat: jsonl\nfile: qa/val.jsonl\ntrain_file: qa/train.jsonl\n"
        "prompts: ['{q} {answer_yes_no}']\nlabel_field: label\nlabels: {'true': 'yes', 'false': 'no'}\nshots: [0, 2]\n")
    mt = root / "mt.yaml"
    mt.write_text("name: mt\nlang: ru\nkind: translation\nformat: parallel\nfile: src.txt\ntarget_file: tgt.txt\n"
                  "src_lang: ru\ntgt_lang: en\n")
    mc = root / "mc.yaml"
    mc.write_text("name: mc\nlang: ko\nkind: multiple_choice\nformat: jsonl\nfile: qa/val.jsonl\n"
                  "prompts: ['{q}']\nchoices: [' a', ' b']\nlabel_field: label\nlabels: {'true': 0, 'false': 1}\n")
    return task, mt, mc


def test_evaluate_end_to_end_tiny(tiny_llama, tok, tmp_path):
    task, mt, mc = _write_data(tmp_path)
    cfg = EvalConfig(tasks=[str(task), str(mt), str(mc), "danetqa"], mode="both", batch_size=4, n_bootstrap=20,
                     data_root=str(tmp_path), translation_max_new_tokens=8)
    out = tmp_path / "out"
    res = evaluate(tiny_llama, tok, cfg, out_dir=out, label="tiny", lang="ru")
    qa = res["qa"]
    assert qa["n"] == 6 and qa["skipped"] is None and qa["seconds"] >= 0
    for key in ["accuracy", "rate", "f1", "accuracy_ll", "f1_ll", "accuracy_2shot", "rate_2shot", "accuracy_ll_2shot"]:
        assert key in qa and key in qa["ci"]
    assert 0 <= qa["rate"] <= 100 and "rate_ll" not in qa
    assert qa["accuracy_ll"] in {100 * k / 6 for k in range(7)}
    # the result carries its declared metrics (qa.yaml declares none: the yes/no defaults, accuracy primary)
    assert qa["kind"] == "yesno" and qa["metrics"]["accuracy_ll_2shot"] == {
        "metric": "accuracy", "primary": True, "higher_is_better": True, "shots": 2, "per_example": "correct_ll"}
    assert set(qa["metrics"]) == {f"{m}{s}" for m in ("accuracy", "rate", "f1", "accuracy_ll", "f1_ll") for s in ("", "_2shot")}
    recs = [json.loads(l) for l in (out / "tiny" / "qa.jsonl").read_text().splitlines()]
    assert len(recs) == 12 and {r["shots"] for r in recs} == {0, 2}
    r0 = recs[0]
    assert r0["prompt"].endswith("q0? Ответь да или нет.<|im_end|>\n<|im_start|>assistant\n")
    assert {"output", "parsed", "label", "parsed_ll", "logp_yes", "logp_no"} <= set(r0)
    assert r0["parsed"] == lm_parse(r0["output"])
    two_shot = next(r for r in recs if r["shots"] == 2)
    assert two_shot["prompt"].count("<|im_start|>assistant\n") == 3  # two demo answers + the open turn
    assert res["mt"]["comet"] is None and "COMET" in res["mt"]["comet_skipped"]
    assert 0 <= res["mt"]["chrf++"] <= 100 and res["mt"]["n"] == 2
    assert "\n" not in json.loads((out / "tiny" / "mt.jsonl").read_text().splitlines()[0])["hypothesis"]
    assert set(res["mc"]) >= {"accuracy", "f1", "accuracy_norm"}
    assert res["danetqa"]["skipped"] and "not found" in res["danetqa"]["skipped"]
    saved = json.loads((out / "tiny" / "scores.json").read_text())
    assert set(saved) == {"qa", "mt", "mc", "danetqa"} and saved["mt"]["metrics"]["chrf++"]["primary"]
    assert tiny_llama.training is True and tok.padding_side == "right"


def lm_parse(text):
    from lingotune.languages import parse_yes_no

    return parse_yes_no(text, "ru")


def test_generation_parsing_with_a_scripted_model(tok, tmp_path, monkeypatch):
    """Accuracy/rate on answers we control: yes, no and an unparsed one."""
    task, _, _ = _write_data(tmp_path)
    answers = iter(["Да, это так", "Нет.", "Может быть", "да", "нет", "да"])
    monkeypatch.setattr(inference, "generate", lambda model, tok, prompts, *a, **k: [next(answers) for _ in prompts])
    res = evaluate(torch.nn.Linear(1, 1), tok, EvalConfig(tasks=[str(task)], shots=[0], n_bootstrap=0,
                                                          data_root=str(tmp_path)), lang="ru")
    # labels: yes, no, yes, no, yes, no; answers: yes, no, None, yes, no, yes
    assert res["qa"]["accuracy"] == pytest.approx(200 / 6, abs=1e-3)
    assert res["qa"]["rate"] == pytest.approx(500 / 6, abs=1e-3)


def test_starter_heldout_uses_the_run_language(tok, tiny_llama, monkeypatch):
    fake = types.ModuleType("lingotune.data.starter")
    items = [{"id": "s1", "question": "Is water wet?", "answer": "yes", "lang": "en", "fact": "f"},
             {"id": "s2", "question": "Is fire cold?", "answer": "no", "lang": "en", "fact": "g"}]
    fake.generate = lambda lang, seed=0: types.SimpleNamespace(heldout_yesno=items if lang == "en" else [])
    monkeypatch.setitem(sys.modules, "lingotune.data.starter", fake)
    res = evaluate(tiny_llama, tok, EvalConfig(tasks=["starter_heldout"], n_bootstrap=0), lang="en")
    assert res["starter_heldout"]["n"] == 2 and res["starter_heldout"]["lang"] == "en"


def test_cli_user_error_is_one_red_line_exit_2(tmp_path):
    from typer.testing import CliRunner

    from lingotune.cli import app

    result = CliRunner().invoke(app, ["eval", "--tasks", "nosuch", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown task 'nosuch'" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["eval", "--tasks", "danetqa", "--mode", "sample", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "option --mode" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_peft_model_is_evaluated(tiny_llama, tok, tmp_path):
    from peft import LoraConfig, get_peft_model

    task, _, _ = _write_data(tmp_path)
    model = get_peft_model(tiny_llama, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    model.train()
    res = evaluate(model, tok, EvalConfig(tasks=[str(task)], mode="both", shots=[0], n_bootstrap=0,
                                          data_root=str(tmp_path)), lang="ru")
    assert res["qa"]["n"] == 6 and "accuracy_ll" in res["qa"]
    assert model.training is True  # restored


@pytest.mark.bundled
@pytest.mark.shared_data
def test_bundled_russian_bits_per_char(bundled, shared_data):
    model, tokenizer = bundled
    res = evaluate(model, tokenizer, EvalConfig(tasks=["flores_ru_bpc"], limit=8, n_bootstrap=0), lang="ru")
    bpc = res["flores_ru_bpc"]["bits_per_char"]
    assert 1.5 < bpc < 4.5  # the lead measured about 2.9 on a larger sample


def test_per_task_limits_override_the_global_limit(tok, tmp_path, monkeypatch):
    task, _, _ = _write_data(tmp_path)
    monkeypatch.setattr(inference, "generate", lambda model, tok, prompts, *a, **k: ["да" for _ in prompts])
    cfg = EvalConfig(tasks=[str(task)], shots=[0], n_bootstrap=0, data_root=str(tmp_path), limit=5, limits={"qa": 2})
    assert evaluate(torch.nn.Linear(1, 1), tok, cfg, lang="ru")["qa"]["n"] == 2
    cfg = EvalConfig(tasks=[str(task)], shots=[0], n_bootstrap=0, data_root=str(tmp_path), limit=5)
    assert evaluate(torch.nn.Linear(1, 1), tok, cfg, lang="ru")["qa"]["n"] == 5


def test_stop_rule_line_ends_a_reply_after_its_first_non_blank_line(tok):
    rule = inference.StopAfterLine(tok, start=1)

    def stops(text: str) -> bool:
        ids = torch.tensor([[tok.eos_token_id or 0] + inference.encode(tok, text)])
        return bool(rule(ids, None)[0])

    assert not stops("\n\nда") and stops("\n\nда\n") and stops("да\nнет") and not stops("да нет")
    with pytest.raises(ValueError, match="stop must be one of eos, line"):
        inference.generate(None, tok, [[1]], 2, stop="paragraph")


def test_leakage_texts_cover_the_default_suite_when_no_tasks_are_named():
    """An empty `eval.tasks` evaluates the language's default suite; its texts must reach the leakage check."""
    from lingotune.data.starter import generate
    from lingotune.eval.runner import leakage_texts

    texts = leakage_texts(EvalConfig(), "ru", None)  # no data root: only the starter held-out questions load
    held = [q["question"] for q in generate("ru", seed=0).heldout_yesno]
    assert held and set(held) <= set(texts)


def test_generate_limits_generate_on_a_sample_and_score_every_example_by_loglik(tiny_llama, tok, tmp_path, monkeypatch):
    task, _, _ = _write_data(tmp_path)
    asked = []

    def fake_generate(model, tok, prompts, *a, **k):
        asked.append(len(prompts))
        return ["да"] * len(prompts)

    def fake_both(model, tok, prompts, conts, *a, **k):  # mode both: the generated prompts scored in the same pass
        return fake_generate(model, tok, prompts), inference.shared_continuation_logprobs(model, tok, prompts, conts)

    monkeypatch.setattr(inference, "generate", fake_generate)
    monkeypatch.setattr(inference, "generate_and_score", fake_both)
    cfg = EvalConfig(tasks=[str(task)], mode="both", shots=[0], n_bootstrap=0, data_root=str(tmp_path),
                     generate_limits={"qa": 4})
    out = tmp_path / "out"
    res = evaluate(tiny_llama, tok, cfg, out_dir=out, label="m", lang="ru")["qa"]
    assert asked == [4] and res["n"] == 6 and res["n_generated"] == 4
    assert res["accuracy"] == 50.0 and res["rate"] == 100.0  # labels yes, no, yes, no: "да" is right on 2 of 4
    recs = [json.loads(line) for line in (out / "m" / "qa.jsonl").read_text().splitlines()]
    assert [("correct" in r) for r in recs] == [True] * 4 + [False] * 2 and all("correct_ll" in r for r in recs)
    cfg = EvalConfig(tasks=[str(task)], mode="generate", shots=[0], n_bootstrap=0, data_root=str(tmp_path),
                     generate_limits={"qa": 4})  # only mode both splits the examples
    res = evaluate(tiny_llama, tok, cfg, lang="ru")["qa"]
    assert asked[-1] == 6 and "n_generated" not in res


def test_an_interrupted_evaluation_resumes_without_rescoring_finished_tasks(tiny_llama, tok, tmp_path, monkeypatch):
    from lingotune.eval import runner

    task, _, mc = _write_data(tmp_path)
    cfg = EvalConfig(tasks=[str(task), str(mc)], mode="loglik", shots=[0], n_bootstrap=0, data_root=str(tmp_path))
    out = tmp_path / "out"
    real, ran = runner.run_task, []

    def counting(model, tok_, spec, *a, **k):
        ran.append(spec.name)
        if spec.name == "mc" and cut["on"]:
            raise KeyboardInterrupt
        return real(model, tok_, spec, *a, **k)

    cut = {"on": True}
    monkeypatch.setattr(runner, "run_task", counting)
    with pytest.raises(KeyboardInterrupt):
        evaluate(tiny_llama, tok, cfg, out_dir=out, label="m", lang="ru")
    cut["on"], ran[:] = False, []
    first = json.loads((out / "m" / "scores.json").read_text())["qa"]
    res = evaluate(tiny_llama, tok, cfg, out_dir=out, label="m", lang="ru", resume=True)
    assert ran == ["mc"] and res["qa"] == first and res["mc"]["n"] == 6
    ran.clear()
    again = evaluate(tiny_llama, tok, cfg, out_dir=out, label="m", lang="ru", resume=True)
    assert ran == [] and again == res  # everything scored: nothing runs
    changed = cfg.model_copy(update={"limit": 4})  # other settings: scored again
    assert evaluate(tiny_llama, tok, changed, out_dir=out, label="m", lang="ru", resume=True)["qa"]["n"] == 4
    assert ran == ["qa", "mc"]
    ran.clear()
    evaluate(tiny_llama, tok, cfg, out_dir=out, label="m", lang="ru")  # without resume: everything runs
    assert ran == ["qa", "mc"]
    (out / "m" / "done.json").write_text("{}")  # a fresh evaluation cut before its first task ...
    evaluate(tiny_llama, tok, cfg, out_dir=out, label="m", lang="ru", tasks=[])
    assert not (out / "m" / "done.json").exists()  # ... leaves nothing a later resume would take as scored


def test_leakage_tasks_are_held_out_of_training_besides_the_evaluated_ones(monkeypatch):
    """A second grid that evaluates other tasks on the same training keeps the first grid's leakage check."""
    from helpers import make_recipe
    from rich.console import Console

    import lingotune.eval.runner as runner
    from lingotune.recipe import RecipeError, parse_recipe
    from lingotune.run import build_data

    asked = []
    monkeypatch.setattr(runner, "leakage_texts", lambda cfg, lang, root: asked.append(cfg.task_names(lang)) or [])
    for held in ([], ["danetqa", "transfer_facts_ll", "transfer_facts"]):
        build_data(make_recipe(**{"eval.tasks": ["transfer_facts_ll"], "data.checks.leakage_tasks": held,
                                  "data.max_stage1": 4, "data.max_stage2": 4}), Console(quiet=True))
    assert asked == [["transfer_facts_ll"], ["transfer_facts_ll", "danetqa", "transfer_facts"]]
    with pytest.raises(RecipeError, match=r"data.checks.leakage_tasks\[1\]: unknown task 'danetqaa'"):
        parse_recipe({"data": {"checks": {"leakage_tasks": ["terra", "danetqaa"]}}})
