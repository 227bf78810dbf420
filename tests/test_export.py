"""`lingotune export`: plain transformers (or PEFT alone) on the export gives the run's logits; the card; safety."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from lingotune.cli import app

pytestmark = pytest.mark.bundled  # tiny_model_dir carries the bundled tokenizer

RUSSIAN = ["Привет, как дела?", "Москва — столица России.", "Я люблю читать книги по вечерам, когда идёт дождь."]
SMALL = ["--set", "data.max_stage1=8", "--set", "data.max_stage2=4", "--set", "method.stage1.steps=2",
         "--set", "method.stage2.steps=2", "--set", "method.single.steps=2", "--set", "train.batch_size=2",
         "--set", "train.max_len=64", "--set", "train.checkpoint_every=2"]
_RUNS: dict = {}


@pytest.fixture(scope="module")
def untied_model_dir(tmp_path_factory, tiny_model_dir):
    """The tiny Llama with its own output head (tie_word_embeddings false)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from helpers import tiny_llama_config

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=len(tok), pad_token_id=tok.pad_token_id, tie=False))
    out = tmp_path_factory.mktemp("untied")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def train_run(root, source, method: str, *sets: str):
    """A finished tiny run (cached per arguments): `lingotune train` into root/<name>."""
    key = (str(source), method, sets)
    if key not in _RUNS:
        out = root / f"run{len(_RUNS)}"
        extra = [x for s in sets for x in ("--set", s)]
        res = CliRunner().invoke(app, ["train", "--out", str(out), "--method", method,
                                       "--set", f"model.source={source}", *SMALL, *extra])
        assert res.exit_code == 0, res.output
        _RUNS[key] = out
    return _RUNS[key]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


def russian_logits(model, tok_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    tok.pad_token = tok.pad_token or tok.eos_token
    batch = tok(RUSSIAN, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model.eval()(**batch).logits
    return logits * batch["attention_mask"][..., None]  # padded positions do not count


def reference(run, source):
    """The run's model through `load_adapted`: the saved model, or the base with the last embeddings and adapter."""
    from lingotune.models import load_adapted

    results = json.loads((run / "results.json").read_text())
    names = {"model": "model", "adapter": "adapter", "embeddings": "embeddings.safetensors"}
    last = {kind: str(run / results["method"] / stage / names[kind])
            for stage, s in results["stages"].items() for kind in s["artefacts"]}
    if "model" in last:
        return load_adapted(last["model"])[0]
    return load_adapted(str(source), adapter=last.get("adapter"), embeddings=last.get("embeddings"))[0]


@pytest.mark.parametrize("method, sets, base", [
    ("dpart", (), "tied"), ("lora", (), "tied"), ("full", (), "tied"), ("combined", (), "tied"),
    ("dpart", ("model.tie=tied",), "tied"), ("dpart", ("method.stage2_embeddings=trainable",), "untied"),
])
def test_merged_export_loads_in_plain_transformers_with_the_runs_logits(method, sets, base, root, tmp_path,
                                                                        tiny_model_dir, untied_model_dir):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    source = tiny_model_dir if base == "tied" else untied_model_dir
    run = train_run(root, source, method, *sets)
    res = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "x")])
    assert res.exit_code == 0, res.output
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "x")
    want = russian_logits(reference(run, source), source)
    got = russian_logits(exported, tmp_path / "x")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    assert not (tmp_path / "x").with_name("x.tmp").exists()
    assert sorted(p.name for p in (tmp_path / "x").glob("*.safetensors")) == ["model.safetensors"]
    assert not list((tmp_path / "x").glob("*.bin")) and (tmp_path / "x" / "chat_template.jinja").exists()
    with safe_open(str(tmp_path / "x" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    base_model = AutoModelForCausalLM.from_pretrained(source)
    untied_head = base == "untied" or (method in ("dpart", "combined") and not sets)
    # the run untied the head (dpart/combined by default): it is saved as its own tensor, at the base values;
    # otherwise the one matrix is saved once and re-tied on load
    assert ("lm_head.weight" in keys) == untied_head
    assert exported.config.tie_word_embeddings == (not untied_head)
    if untied_head:
        torch.testing.assert_close(exported.lm_head.weight, base_model.lm_head.weight, rtol=0, atol=0)
    else:
        assert exported.lm_head.weight.data_ptr() == exported.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("method, sets, base", [
    ("dpart", (), "tied"), ("lora", (), "tied"), ("combined", (), "tied"), ("dpart", ("model.tie=tied",), "tied"),
    ("dpart", ("method.stage2_embeddings=trainable",), "untied"),
])
def test_adapter_only_export_reproduces_the_run_through_peft_alone(method, sets, base, root, tmp_path, tiny_model_dir,
                                                                   untied_model_dir):
    from peft import PeftConfig, PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    source = tiny_model_dir if base == "tied" else untied_model_dir
    run = train_run(root, source, method, *sets)
    res = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "a"), "--adapter-only"])
    assert res.exit_code == 0, res.output
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(source), tmp_path / "a")
    torch.testing.assert_close(russian_logits(loaded, tmp_path / "a"), russian_logits(reference(run, source), source),
                               rtol=0, atol=1e-4)
    cfg = PeftConfig.from_pretrained(tmp_path / "a")
    tensors = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    rows = [v for k, v in tensors.items() if "trainable_tokens_delta" in k and "embed_tokens" in k]
    if method == "lora":
        assert cfg.trainable_token_indices is None and not rows
    else:  # only the changed rows travel: the rows the data used, far fewer than the vocabulary (49,152), except
        # when the tied matrix trained as the head too (the softmax's gradient reaches every row)
        indices = cfg.trainable_token_indices
        changed = indices if isinstance(indices, list) else indices["embed_tokens"]
        assert rows and rows[0].shape == (len(changed), 32)
        assert len(changed) == 49152 if "model.tie=tied" in sets else 0 < len(changed) < 2000


def test_adapter_only_refuses_what_one_adapter_cannot_carry(root, tmp_path, tiny_model_dir):
    run = train_run(root, tiny_model_dir, "full")
    res = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "a"), "--adapter-only"])
    assert res.exit_code == 2 and "changed every weight" in res.output and "merged export" in res.output
    assert len([line for line in res.output.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "a").exists()


def test_export_never_overwrites_without_asking_and_refuses_unfinished_runs(root, tmp_path, tiny_model_dir):
    run = train_run(root, tiny_model_dir, "lora")
    out = tmp_path / "x"
    cli = CliRunner()
    assert cli.invoke(app, ["export", str(run), "--out", str(out)]).exit_code == 0
    first = (out / "model.safetensors").stat().st_mtime_ns
    res = cli.invoke(app, ["export", str(run), "--out", str(out)])
    assert res.exit_code == 2 and "--overwrite" in res.output and (out / "model.safetensors").stat().st_mtime_ns == first
    assert cli.invoke(app, ["export", str(run), "--out", str(out), "--overwrite"]).exit_code == 0
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    res = cli.invoke(app, ["export", str(run), "--out", str(other), "--overwrite"])
    assert res.exit_code == 2 and "not a lingotune export" in res.output and (other / "notes.txt").read_text() == "keep me"
    for bad, words in [(tmp_path / "nothing", "no such run directory"), (other, "not a lingotune run directory")]:
        res = cli.invoke(app, ["export", str(bad), "--out", str(tmp_path / "y")])
        assert res.exit_code == 2 and words in res.output and not (tmp_path / "y").exists()
    half = tmp_path / "half"  # stage 1 of dpart only: not finished
    res = cli.invoke(app, ["train", "--out", str(half), "--stage", "stage1", "--set", f"model.source={tiny_model_dir}", *SMALL])
    assert res.exit_code == 0, res.output
    res = cli.invoke(app, ["export", str(half), "--out", str(tmp_path / "y")])
    assert res.exit_code == 2 and "stage stage2 of dpart is not trained" in res.output and not (tmp_path / "y").exists()


def test_a_failed_export_leaves_the_earlier_one_intact(root, tmp_path, tiny_model_dir, monkeypatch):
    from lingotune import export as export_mod

    run = train_run(root, tiny_model_dir, "lora")
    out = tmp_path / "x"
    assert CliRunner().invoke(app, ["export", str(run), "--out", str(out)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_mod, "model_card", broken)
    res = CliRunner().invoke(app, ["export", str(run), "--out", str(out), "--overwrite"])
    assert res.exit_code == 2 and "no space left" in res.output.lower()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["x"]  # no temporary directory left behind


def test_model_card_holds_provenance_evaluation_and_commands(tmp_path, tiny_model_dir, monkeypatch):
    import hashlib

    import yaml

    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["run", "--out", "r", "--set", f"model.source={tiny_model_dir}", *SMALL,
                                   "--set", "eval.limit=2", "--set", "eval.limits={}", "--set", "output.sample_prompts=1"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["export", "r", "--out", "x", "--license", "apache-2.0"])
    assert res.exit_code == 0, res.output
    card = (tmp_path / "x" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "apache-2.0" and front["language"] == ["ru"] and front["library_name"] == "transformers"
    assert "dpart" in front["tags"] and "base_model" not in front  # a local base model has no hub id
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    for name in ("stage1", "stage2"):
        data = (tmp_path / "r" / "data" / f"{name}.jsonl").read_bytes()
        lines = data.count(b"\n")
        assert f"| {name} | {lines} | `{hashlib.sha256(data).hexdigest()}` |" in card
    src = results["data"]["sources"][0]
    assert f"| {src['pairs_read']} / {src['stage2_read']} | {src['pairs']} / {src['stage2']} |" in card
    from lingotune.report import eval_table

    assert "\n".join(eval_table(results["evals"])) in card  # before and after, with n and intervals
    assert "| task | metric | untouched |" in card and " dpart |" in card and "n / seconds" in card
    assert "lingotune export r --out x" in card and "lingotune run lingotune-recipe.yaml" in card
    assert (tmp_path / "x" / "lingotune-recipe.yaml").read_text() == (tmp_path / "r" / "recipe.yaml").read_text()


def test_an_lep_run_with_an_extended_vocabulary_exports_its_saved_model(root, tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = train_run(root, tiny_model_dir, "lep", "data.sources=[{format: starter, use: text, limit: 60}]",
                    "vocab.scenario=extend", "vocab.add=20")
    res = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "x")])
    assert res.exit_code == 0, res.output
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "x")
    assert len(AutoTokenizer.from_pretrained(tmp_path / "x")) == exported.config.vocab_size == 49152 + 20
    torch.testing.assert_close(russian_logits(exported, tmp_path / "x"),
                               russian_logits(reference(run, tiny_model_dir), run / "tokenizer"), rtol=0, atol=1e-4)
    res = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "a"), "--adapter-only"])
    assert res.exit_code == 2 and "changed every weight" in res.output and not (tmp_path / "a").exists()


def test_a_run_with_a_replaced_vocabulary_exports_merged_and_refuses_adapter_only(root, tmp_path, tiny_model_dir):
    """vocab.scenario optimize (1,020 tokens where the base has 49,152 rows): the merged export rebuilds the
    matrix as the run did; a PEFT adapter cannot carry it, though the vocabulary did not grow."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lingotune.models import apply_adapter, apply_embeddings, load_tokenizer
    from lingotune.vocab import init_new_rows

    run = train_run(root, tiny_model_dir, "dpart", "vocab.scenario=optimize", "vocab.keep=1000", "vocab.add=20",
                    "train.max_len=192", "data.sources=[{format: starter, limit: 60}, {format: starter, use: text, limit: 60}]")
    res = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "x")])
    assert res.exit_code == 0, res.output
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "x")
    assert len(AutoTokenizer.from_pretrained(tmp_path / "x")) == exported.config.vocab_size == 1020
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # by hand: rebuilt, then the run's artefacts
    assert init_new_rows(ref, load_tokenizer(str(tiny_model_dir)), load_tokenizer(str(run / "tokenizer")))["replaced"]
    apply_embeddings(ref, run / "dpart" / "stage2" / "embeddings.safetensors")
    ref = apply_adapter(ref, run / "dpart" / "stage2" / "adapter").eval()
    torch.testing.assert_close(russian_logits(exported, tmp_path / "x"), russian_logits(ref, run / "tokenizer"),
                               rtol=0, atol=1e-4)
    res = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "a"), "--adapter-only"])
    assert res.exit_code == 2 and "replaced the vocabulary (vocab.scenario optimize)" in res.output
    assert not (tmp_path / "a").exists()
