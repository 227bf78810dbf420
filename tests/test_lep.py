"""LEP's embedding step through the one pipeline: an adapted vocabulary, new rows initialised, only the
input embeddings and the output head train, on plain target-language text (issue 12, step 3)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from lingotune.cli import app
from lingotune.data.batches import tokenize_texts

SMALL = ["--set", "method.name=lep", "--set", "method.lep.steps=3", "--set", "train.batch_size=2",
         "--set", "train.max_len=64", "--set", "eval.tasks=[starter_heldout]", "--set", "eval.limit=2",
         "--set", "output.sample_prompts=1", "--set", "train.precision=fp32"]


def test_plain_text_is_cut_into_windows_with_the_loss_on_every_token(tiny_model_dir):
    from lingotune.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    text = "Кошка сидела на ковре и смотрела на дверь. " * 8
    ids = tok(text)["input_ids"] + [tok.eos_token_id]
    items, dropped = tokenize_texts([text, "a"], tok, max_len=16)
    assert [x for it in items[:-1] for x in it["input_ids"]] == ids  # the windows of the first text, in order
    assert all(it["labels"] == it["input_ids"] and len(it["input_ids"]) <= 16 for it in items)
    assert sum(len(it["input_ids"]) for it in items[:-1]) == len(ids) and dropped == 0


def test_lep_run_adapts_the_vocabulary_and_trains_only_embeddings_and_head(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.chdir(tmp_path)
    args = ["run", "--out", "r", "--set", f"model.source={tiny_model_dir}", *SMALL,
            "--set", "data.sources=[{format: starter, use: text, limit: 60}]",
            "--set", "vocab.scenario=extend", "--set", "vocab.add=20"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["vocab"]["new_tokens"] == 20 and results["vocab"]["init"]["set_to_mean"] == 20
    stage = results["stages"]["embeddings"]
    assert stage["data"] == ["text"] and stage["complete"] and stage["examples"] > 0
    out = tmp_path / "r" / "lep" / "embeddings" / "model"
    tok, model = AutoTokenizer.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out)
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert len(tok) == model.config.vocab_size == before.config.vocab_size + 20
    after_sd, before_sd = model.state_dict(), before.state_dict()
    changed = [k for k in before_sd if not torch.equal(before_sd[k], after_sd[k][:before_sd[k].shape[0]])]
    assert changed and all("embed_tokens" in k or "lm_head" in k for k in changed), changed
    assert set(results["evals"]) == {"untouched", "lep"}
    assert (tmp_path / "r" / "tokenizer" / "tokenizer.json").exists()


def test_a_lep_stage_without_text_is_one_line(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["run", "--out", "r", "--set", f"model.source={tiny_model_dir}", *SMALL])
    assert res.exit_code == 2
    assert "embeddings: the data section yields no examples for text (check a source used as text)" in res.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("bad, field", [
    ({"format": "text"}, "format text needs 'path'"),
    ({"format": "text", "path": "a.txt", "use": "stage2"}, "used as text only"),
])
def test_text_sources_are_validated(bad, field):
    from lingotune.data.config import SourceSpec

    with pytest.raises(ValueError, match=field):
        SourceSpec(**bad)


def test_dpart_on_an_adapted_vocabulary_trains_the_new_rows_in_stage_1(tiny_model_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.chdir(tmp_path)
    args = ["train", "--out", "r", "--set", f"model.source={tiny_model_dir}", "--set", "method.stage1.steps=3",
            "--set", "method.stage2.steps=1", "--set", "train.batch_size=4", "--set", "train.max_len=96",
            "--set", "train.precision=fp32", "--set", "data.max_stage1=24",
            "--set", "data.sources=[{format: starter, limit: 60}, {format: starter, use: text, limit: 60}]",
            "--set", "vocab.scenario=extend", "--set", "vocab.add=30"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    n_old = results["vocab"]["vocab_before"]
    emb = load_file(str(tmp_path / "r" / "dpart" / "stage1" / "embeddings.safetensors"))["model.embed_tokens.weight"]
    assert emb.shape[0] == n_old + 30
    from transformers import AutoModelForCausalLM

    from lingotune.models import load_tokenizer
    from lingotune.vocab import init_new_rows

    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    init_new_rows(start, load_tokenizer(str(tiny_model_dir)), load_tokenizer(str(tmp_path / "r" / "tokenizer")))
    moved = (emb[n_old:] != start.get_input_embeddings().weight[n_old:]).any(dim=1)
    assert moved.any()  # new tokens occur in the stage-1 pairs, and their rows trained


def test_lep_run_propagates_into_the_instruct_model_and_evaluates_both(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.chdir(tmp_path)
    args = ["run", "--out", "r", "--set", f"model.source={tiny_model_dir}", *SMALL,
            "--set", "data.sources=[{format: starter, use: text, limit: 60}]", "--set", "vocab.scenario=extend",
            "--set", "vocab.add=20", "--set", f"propagate.instruct={tiny_model_dir}"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert set(results["evals"]) == {"untouched", "lep", "instruct", "propagated"}
    prop = results["propagation"]
    assert prop["mode"] == "conversion" and prop["vocab_size"] == results["vocab"]["vocab_after"]
    out = tmp_path / "r" / "propagated"
    model, tok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == len(tok) == prop["vocab_size"] and tok.chat_template


def test_propagation_needs_the_lep_method():
    from helpers import make_recipe
    from lingotune.recipe import RecipeError

    with pytest.raises(RecipeError, match="method.name must be 'lep', not 'dpart'"):
        make_recipe(**{"propagate.instruct": "bundled"})


def test_text_sources_build_the_text_set(tmp_path):
    """Plain text files (one text a line, or a JSONL field) become the `text` set; wrong-script and
    repeated texts are dropped and counted like records."""
    from lingotune.data.build import build_datasets
    from lingotune.data.config import DataConfig

    (tmp_path / "a.txt").write_text("Кошка сидела на ковре и смотрела на дверь.\nThis line is English text only.\n"
                                    "Кошка сидела на ковре и смотрела на дверь.\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(json.dumps({"passage": "Москва и Санкт-Петербург большие города России."},
                                                 ensure_ascii=False) + "\n", encoding="utf-8")
    (tmp_path / "c.tsv").write_text("ID\tText\tLabel\n1\tВолга впадает в Каспийское море.\t1\n2\t\t0\n",
                                    encoding="utf-8")  # a TSV with a header (KoBEST's layout): text_field names the column
    cfg = DataConfig.model_validate({"root": str(tmp_path), "sources": [
        {"format": "text", "path": "a.txt"}, {"format": "text", "path": "b.jsonl", "text_field": "passage"},
        {"format": "text", "path": "c.tsv", "text_field": "Text"}]})
    built = build_datasets(cfg, "ru", seed=0)
    assert built.text == ["Кошка сидела на ковре и смотрела на дверь.", "Москва и Санкт-Петербург большие города России.",
                          "Волга впадает в Каспийское море."]
    v = built.report["sources"][0]["validation"]
    assert v["wrong_script"] == 1 and v["duplicates"] == 1 and built.report["text"] == 3
    assert not built.stage1 and not built.stage2


@pytest.mark.parametrize("scenario", ["extend", "bpe"])
def test_lep_rows_new_trains_only_the_rows_the_vocabulary_adaptation_computed(scenario, tiny_model_dir, tmp_path,
                                                                               monkeypatch):
    """`method.lep.rows: new`: every row that copies one old row (an old token, at its old id or a new one) stays
    bit-identical to its initial value, in the input embeddings and the head; the computed rows move; nothing
    else changes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lingotune.vocab import init_new_rows

    monkeypatch.chdir(tmp_path)
    vocab = ["--set", "vocab.scenario=extend", "--set", "vocab.add=20"] if scenario == "extend" else \
        ["--set", "vocab.scenario=bpe", "--set", "vocab.size=300"]
    args = ["run", "--out", "r", "--set", f"model.source={tiny_model_dir}", *SMALL, "--set", "method.lep.rows=new",
            "--set", "data.sources=[{format: starter, use: text, limit: 60}]", *vocab]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    out = tmp_path / "r" / "lep" / "embeddings" / "model"
    trained, new_tok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    init_new_rows(start, AutoTokenizer.from_pretrained(tiny_model_dir), new_tok)
    new = set(start.lingotune_new_rows)
    assert len(new) == results["vocab"]["init"]["new_rows"] and 0 < len(new) < len(new_tok)
    start.lm_head.weight = torch.nn.Parameter(start.lm_head.weight.detach().clone())  # untied, as the run did
    a, b = start.state_dict(), trained.state_dict()
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        moved = {i for i in range(a[name].shape[0]) if not torch.equal(a[name][i], b[name][i])}
        assert moved and moved <= new, (name, sorted(moved - new)[:5])
    assert all(torch.equal(a[k], b[k]) for k in a if "embed_tokens" not in k and "lm_head" not in k)
    assert results["stages"]["embeddings"]["trains"] == "input embeddings and output head, new rows only"


def test_lep_rows_new_needs_a_vocabulary_and_no_weight_decay():
    from helpers import make_recipe
    from lingotune.recipe import RecipeError

    with pytest.raises(RecipeError, match="method.lep.rows: 'new' trains the rows a vocabulary adaptation adds"):
        make_recipe(**{"method.name": "lep", "method.lep": {"steps": 2, "rows": "new"}})
    with pytest.raises(RecipeError, match="train.weight_decay 0.01 would shrink them"):
        make_recipe(**{"method.name": "lep", "method.lep": {"steps": 2, "rows": "new"}, "vocab.scenario": "extend",
                       "train.weight_decay": 0.01})
    make_recipe(**{"method.name": "lep", "method.lep": {"steps": 2, "rows": "new"}, "vocab.scenario": "extend"})
