"""`lingotune eval --export-lm-eval`: lingotune's log-likelihood tasks as lm-evaluation-harness tasks.

A tiny random Llama with a byte-level BPE tokenizer (merges learned here on the tasks' own words, so a token
boundary in the wrong place changes the tokens) and a ChatML template, saved as a model directory. The tests
without lm-eval check what the export writes; `test_lm_eval_scores_what_lingotune_scores` (the `lm-eval` extra:
`pip install 'lingotune[lm-eval]'`) runs lm-eval on the export and compares it with lingotune's evaluation.
"""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from typer.testing import CliRunner

from helpers import fresh_tiny
from lingotune import inference
from lingotune.eval import EvalConfig, evaluate
from lingotune.eval.lm_eval_export import export_lm_eval, lm_eval_pair
from lingotune.models import load_adapted

SPECIALS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = ("кошка собака дом река лес город море небо снег дождь солнце луна поле гора сад мост окно стол "
         "cat dog house river forest city sea sky snow rain sun moon field hill garden bridge").split()


def bpe_tokenizer():
    """Byte-level BPE (GPT-2 style) with merges learned on the test's words and the yes/no words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator([" ".join(WORDS), "да Да нет Нет Ответь да или нет.", "user assistant system"] * 20, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="<|im_end|>",
                                  additional_special_tokens=["<|im_start|>", "</s>"])
    tok.chat_template = TEMPLATE
    return tok


def write_tasks(root):
    """A yes/no task (two prompts, 0- and 2-shot) and a three-option multiple-choice task (0- and 1-shot), 10
    evaluation rows and 6 demonstration rows each, under data root `root`; their task files' paths."""
    rng = random.Random(0)
    phrase = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    (root / "yn").mkdir(parents=True)
    (root / "mc").mkdir(parents=True)
    for split, n in (("test", 10), ("train", 6)):
        (root / "yn" / f"{split}.jsonl").write_text("".join(
            json.dumps({"idx": f"{split}{i}", "q": phrase(3) + "?", "label": rng.choice(["yes", "no"])},
                       ensure_ascii=False) + "\n" for i in range(n)), encoding="utf-8")
        (root / "mc" / f"{split}.jsonl").write_text("".join(
            json.dumps({"idx": i, "ctx": phrase(4), "a": phrase(1), "b": phrase(2), "c": phrase(1),
                        "answer": rng.randrange(3)}, ensure_ascii=False) + "\n" for i in range(n)), encoding="utf-8")
    yn, mc = root / "yn.yaml", root / "mc.yaml"
    yn.write_text("name: yn\nlang: ru\nkind: yesno\nformat: jsonl\nfile: yn/test.jsonl\ntrain_file: yn/train.jsonl\n"
                  "prompts: ['{q} {answer_yes_no}', 'Вопрос: {q}']\nlabel_field: label\nshots: [0, 2]\n", encoding="utf-8")
    mc.write_text("name: mc\nlang: ru\nkind: multiple_choice\nformat: jsonl\nfile: mc/test.jsonl\ntrain_file: mc/train.jsonl\n"
                  "prompts: ['{ctx}']\nchoices: [' {a}', ' {b}', ' {c}']\nlabel_field: answer\nshots: [0, 1]\n",
                  encoding="utf-8")
    return str(yn), str(mc)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(model directory, tokenizer, data root, yes/no task file, multiple-choice task file)."""
    base = tmp_path_factory.mktemp("lm_eval")
    tok = bpe_tokenizer()
    model = fresh_tiny(vocab_size=len(tok), max_position_embeddings=4096, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(2)
    with torch.no_grad():  # larger random weights than the default init: the model's choices vary (yes 10 of 14)
        for p in model.parameters():
            p.normal_(0, 0.6)
    model.save_pretrained(base / "model")
    tok.save_pretrained(base / "model")
    yn, mc = write_tasks(base / "data")
    return base / "model", tok, base / "data", yn, mc


def config(setup, **kw):
    _, _, root, yn, mc = setup
    return EvalConfig(**{"tasks": [yn, mc], "mode": "loglik", "data_root": str(root), "limit": 7, "sample": True,
                         "seed": 3, "n_bootstrap": 0, **kw})


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_the_export_holds_the_examples_and_prompts_lingotune_scores(setup, tmp_path):
    model_dir, tok, *_ = setup
    cfg = config(setup)
    summary = export_lm_eval(tok, cfg, "ru", tmp_path / "lm", model=str(model_dir))
    assert [(w["name"], w["n"], w["differ"]) for w in summary["tasks"]] == [
        ("lingotune_yn", 7, 0), ("lingotune_yn_2shot", 7, 0), ("lingotune_mc", 7, 0), ("lingotune_mc_1shot", 7, 0)]
    model, mtok = load_adapted(str(model_dir))
    evaluate(model, mtok, cfg, out_dir=tmp_path / "ev", label="m", lang="ru")
    records = {t: read_jsonl(tmp_path / "ev" / "m" / f"{t}.jsonl") for t in ("yn", "mc")}
    for task, k, name in (("yn", 0, "lingotune_yn"), ("yn", 2, "lingotune_yn_2shot"), ("mc", 0, "lingotune_mc"),
                          ("mc", 1, "lingotune_mc_1shot")):
        docs = read_jsonl(tmp_path / "lm" / f"{name}.jsonl")
        recs = [r for r in records[task] if r["shots"] == k]
        assert [d["id"] for d in docs] == [str(r["id"]) for r in recs]  # the sampled 7 of 10, in order
        assert [d["context"] for d in docs] == [r["prompt"] for r in recs]
        if task == "yn":
            assert all(d["choices"] == ["да", "Да", "нет", "Нет"] and d["answers"] == ["yes", "yes", "no", "no"]
                       and d["label"] == r["label"] and d["choices"][d["gold"]] == {"yes": "да", "no": "нет"}[r["label"]]
                       for d, r in zip(docs, recs))
        else:
            assert [(d["choices"], d["gold"]) for d in docs] == [(r["choices"], r["label"]) for r in recs]
    yaml_text = (tmp_path / "lm" / "lingotune_mc.yaml").read_text()
    assert 'target_delimiter: ""' in yaml_text and "output_type: multiple_choice" in yaml_text
    assert (tmp_path / "lm" / "lingotune.yaml").read_text().count("  - lingotune_") == 4
    readme = (tmp_path / "lm" / "README.md").read_text()
    assert f"pretrained={model_dir},dtype=float32 --include_path {(tmp_path / 'lm').resolve()}" in readme
    assert "without `--apply_chat_template`" in readme


def test_lm_eval_pair_moves_the_trailing_whitespace_and_splits_the_whole(setup):
    _, tok, *_ = setup
    context = "<|im_start|>user\nкошка?<|im_end|>\n<|im_start|>assistant\n"
    ctx, cont = lm_eval_pair(tok, context, "да")
    ids = inference.encode(tok, context)
    # lm-eval scores lingotune's whole sequence, the newline that ends the prompt as part of the continuation
    assert ctx + cont == ids + inference.encode(tok, "да") and ctx == ids[:-1]
    assert tok.decode(cont) == "\nда"
    # a context ending in a space: lm-eval scores " дом" as one token where lingotune scores " ", then "дом" alone
    ctx, cont = lm_eval_pair(tok, "кошка ", "дом")
    assert len(cont) == 1 and tok.decode(cont) == " дом" and tok.decode(ctx) == "кошка"
    ours = inference.encode(tok, "кошка ") + inference.encode(tok, "дом")
    assert tok.decode(ours) == "кошка дом" and tok.decode(inference.encode(tok, "кошка ")[-1:]) == " "
    assert ours != ctx + cont


def test_the_export_counts_examples_lm_eval_would_tokenize_differently(setup, tmp_path):
    _, tok, root, _, _ = setup
    task = root / "mc_space.yaml"  # the context ends in a space, the options have none
    task.write_text("name: mc_space\nlang: ru\nkind: multiple_choice\nformat: jsonl\nfile: mc/test.jsonl\n"
                    "prompts: ['{ctx} ']\nchoices: ['{a}', '{b}', '{c}']\nlabel_field: answer\n", encoding="utf-8")
    summary = export_lm_eval(tok, config(setup, tasks=[str(task)], limit=None), "ru", tmp_path / "lm", model="m")
    assert [(w["name"], w["n"], w["differ"]) for w in summary["tasks"]] == [("lingotune_mc_space", 10, 10)]
    assert "| lingotune_mc_space | mc_space | 0 | 10 | 10 |" in (tmp_path / "lm" / "README.md").read_text()


def test_export_cli_writes_once_refuses_overwrite_and_bad_input_in_one_line(setup, tmp_path):
    from lingotune.cli import app

    model_dir, _, root, yn, mc = setup
    out = tmp_path / "lm"
    args = ["eval", "--model", str(model_dir), "--tasks", f"{yn},{mc},flores_ru_bpc", "--mode", "loglik",
            "--data-root", str(root), "--limit", "3", "--export-lm-eval", str(out)]
    cli = CliRunner()
    res = cli.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "left out flores_ru_bpc: a perplexity task" in res.output
    first = (out / "lingotune_yn.jsonl").stat().st_mtime_ns
    assert len(read_jsonl(out / "lingotune_yn.jsonl")) == 3 and not (tmp_path / "runs").exists()
    res = cli.invoke(app, args)
    assert res.exit_code == 2 and "--overwrite" in res.output and (out / "lingotune_yn.jsonl").stat().st_mtime_ns == first
    assert cli.invoke(app, args + ["--overwrite"]).exit_code == 0
    for extra, words in [(["--adapter", str(tmp_path)], "not --adapter"),
                         (["--tasks", yn, "--mode", "generate"], "no log-likelihood task to export")]:
        res = cli.invoke(app, args[:-2] + extra + ["--export-lm-eval", str(tmp_path / "other")])
        assert res.exit_code == 2 and words in res.output and len(res.output.strip().splitlines()) == 1, res.output
        assert not (tmp_path / "other").exists()


def test_lm_eval_scores_what_lingotune_scores(setup, tmp_path):
    """lm-eval's accuracy equals lingotune's log-likelihood accuracy on the same model and examples, and so does
    every choice's log-likelihood (lm-eval's, less the trailing newline it moves out of a chat prompt)."""
    pytest.importorskip("lm_eval", reason="lm-eval is an optional extra: pip install 'lingotune[lm-eval]'")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    model_dir, tok, *_ = setup
    cfg = config(setup)
    summary = export_lm_eval(tok, cfg, "ru", tmp_path / "lm", model=str(model_dir))
    model, mtok = load_adapted(str(model_dir))
    ours = evaluate(model, mtok, cfg, out_dir=tmp_path / "ev", label="m", lang="ru")
    records = {t: read_jsonl(tmp_path / "ev" / "m" / f"{t}.jsonl") for t in ("yn", "mc")}
    names = [w["name"] for w in summary["tasks"]]
    theirs = simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32", tasks=names,
                             task_manager=TaskManager(include_path=str(tmp_path / "lm")), log_samples=True,
                             device="cpu", batch_size=4)
    for name, task, k in (("lingotune_yn", "yn", 0), ("lingotune_yn_2shot", "yn", 2), ("lingotune_mc", "mc", 0),
                          ("lingotune_mc_1shot", "mc", 1)):
        sfx = "" if k == 0 else f"_{k}shot"
        got = theirs["results"][name]
        if task == "yn":
            pairs = [("acc,none", f"accuracy_ll{sfx}"), ("f1,none", f"f1_ll{sfx}")]
        else:
            pairs = [("acc,none", f"accuracy{sfx}"), ("acc_norm,none", f"accuracy_norm{sfx}"), ("f1,none", f"f1{sfx}")]
        for lm_key, key in pairs:
            assert 100 * got[lm_key] == pytest.approx(ours[task][key], abs=1e-3), (name, key)
        recs = [r for r in records[task] if r["shots"] == k]
        samples = sorted(theirs["samples"][name], key=lambda s: s["doc_id"])
        assert [s["doc"]["id"] for s in samples] == [str(r["id"]) for r in recs]
        for s, r in zip(samples, recs):
            lls = [float(x[0]) for x in s["filtered_resps"]]
            if task == "yn":  # lm-eval scored "\n" + word: take off log P("\n" | the prompt before it)
                ctx_ids = inference.encode(tok, r["prompt"])
                lm_ctx, _ = lm_eval_pair(tok, r["prompt"], "да")
                newline = inference.continuation_logprobs(model, mtok, [(lm_ctx, ctx_ids[len(lm_ctx):])])[0]
                yes = math.log(math.exp(lls[0] - newline) + math.exp(lls[1] - newline))
                no = math.log(math.exp(lls[2] - newline) + math.exp(lls[3] - newline))
                # records hold 4 decimals: 5e-5 of rounding on top of 1e-4
                assert (yes, no) == pytest.approx((r["logp_yes"], r["logp_no"]), abs=1.5e-4)
            else:
                assert lls == pytest.approx(r["logprobs"], abs=1.5e-4)
    preds = {t: {r.get("parsed_ll", r.get("pred")) for r in records[t]} for t in records}
    assert len(preds["yn"]) == 2 and len(preds["mc"]) == 3  # the model's choices vary, so equality means something
