"""Preference tuning in lingotune's own loop (issue 13, part 1): the DPO and ORPO losses equal TRL's (loss
and gradients) on the same tiny model and batch, pairs tokenize with labels on exactly the completion,
accumulation weighs every pair alike, and `sft`, `dpo`, `orpo` run end to end, resumable, with the
frozen weights bit-identical."""

from __future__ import annotations

import copy
import json
import os
import signal

import pytest
import torch
from typer.testing import CliRunner

from helpers import fresh_tiny, make_items, make_recipe
from lingotune import methods
from lingotune.cli import app
from lingotune.data.batches import IGNORE, collate, collate_pairs, tokenize_pair, tokenize_pairs
from lingotune.data.records import DataError, PrefRecord

PAIRS = [  # uneven lengths: the chosen conversations hold different numbers of tokens
    PrefRecord("What is two plus two?", "Four.", "Five, I think."),
    PrefRecord("Say yes", "da", "net net"),
    PrefRecord("hello there", "Hi! How are you?", "no", system="Be brief."),
]
EVEN = [  # every chosen conversation has 7 characters of prompt and answer: the same number of tokens
    PrefRecord("abcd", "xyz", "qq"),
    PrefRecord("ab", "vwxyz", "a b c d e"),
    PrefRecord("abcdef", "z", "yy yy"),
]


@pytest.fixture(scope="module")
def tok():
    from test_eval_run import tiny_tokenizer  # character-level, vocabulary < 128: fits fresh_tiny()

    return tiny_tokenizer()


@pytest.fixture
def clean_accelerate():
    """TRL's trainers create their own accelerate state; lingotune's loop gets a fresh one after them."""
    from accelerate.state import AcceleratorState

    import lingotune.train as train

    AcceleratorState._reset_state(reset_partial_state=True)
    train._ACCELERATOR = None
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    train._ACCELERATOR = None


def _stage(method: str, **sets):
    """(recipe, the method's last stage, model after that stage's setup with its trainable weights moved away
    from the start, so the policy differs from the reference)."""
    recipe = make_recipe(**{"method.name": method, "method.pref.dpo_after_sft": False, **sets})
    stage = methods.stages(method, recipe)[-1]
    torch.manual_seed(0)
    model, groups = stage.setup(fresh_tiny())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in (p for group in groups for p in group["params"]):
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return recipe, stage, model.train()


def _grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def _max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b) and a
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _trl_args(config, out, **kw):
    return config(output_dir=str(out), report_to=[], use_cpu=True, bf16=False, **kw)


def _dataset():
    from datasets import Dataset

    return Dataset.from_dict({"prompt": ["ab"], "chosen": ["cd"], "rejected": ["ef"]})  # TRL's init wants one


# ----------------------------------------------------------------------------- equal to TRL


@pytest.mark.parametrize("weights, label_only", [("lora", True), ("lora", False), ("full", True), ("full", False)])
def test_dpo_loss_and_gradients_equal_trl(weights, label_only, tok, clean_accelerate, tmp_path):
    """TRL's DPOTrainer.compute_loss on the same batch: LoRA against the adapters disabled (TRL wraps the model
    with the same LoraConfig, then takes lingotune's weights), full weights against the frozen copy."""
    pytest.importorskip("trl")
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    recipe, stage, model = _stage("dpo", **{"method.pref.weights": weights, "method.pref.beta": 0.3})
    assert (stage.loss.reference is None) == (weights == "lora")
    batch = collate_pairs(tokenize_pairs(PAIRS, tok, 64)[0], tok.pad_token_id)
    ours = stage.loss(model, batch, label_only) / stage.loss.count(batch)
    ours.backward()
    ours_grads = _grads(model)

    args = _trl_args(DPOConfig, tmp_path, beta=0.3)
    if weights == "lora":
        lc = recipe.method.lora
        peft = LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=lc.target_modules,
                          bias="none", task_type="CAUSAL_LM")
        trainer = DPOTrainer(fresh_tiny(), args=args, train_dataset=_dataset(), processing_class=tok, peft_config=peft)
        assert not trainer.model.load_state_dict(model.state_dict(), strict=False).missing_keys
    else:
        trainer = DPOTrainer(copy.deepcopy(model), ref_model=copy.deepcopy(stage.loss.reference), args=args,
                             train_dataset=_dataset(), processing_class=tok)
    trainer.model.train()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "completion_mask": (batch["labels"] != IGNORE).long()}
    theirs = trainer.compute_loss(trainer.model, inputs)
    theirs.backward()
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)
    assert abs(ours.item() - 0.6931) > 0.01  # the policy really differs from the reference
    assert _max_diff(ours_grads, _grads(trainer.model)) < 1e-5


def _orpo_inputs(items: list[dict], pad_id: int) -> dict:
    """TRL's ORPO batch layout: chosen_* and rejected_* tensors, each side padded on its own."""
    out = {}
    for side in ("chosen", "rejected"):
        b = collate([{"input_ids": x[f"{side}_ids"], "labels": x[f"{side}_labels"]} for x in items], pad_id)
        out.update({f"{side}_input_ids": b["input_ids"], f"{side}_attention_mask": b["attention_mask"],
                    f"{side}_labels": b["labels"]})
    return out


@pytest.mark.parametrize("weights, pairs", [("lora", "even"), ("lora", "uneven"), ("full", "even"), ("full", "uneven")])
def test_orpo_loss_and_gradients_equal_trl(weights, pairs, tok, clean_accelerate, tmp_path):
    """TRL's ORPOTrainer.compute_loss (NLL over prompt and answer: train.loss_on all). TRL pools the NLL tokens
    of its batch: with chosen conversations of equal length that is lingotune's per-pair mean, so the whole
    batch matches; with uneven ones lingotune's loss is the mean of TRL's loss on each pair alone."""
    pytest.importorskip("trl")
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    _, stage, model = _stage("orpo", **{"method.pref.weights": weights, "method.pref.orpo_lambda": 0.5,
                                        "train.loss_on": "all"})
    items = tokenize_pairs(EVEN if pairs == "even" else PAIRS, tok, 64)[0]
    if pairs == "even":
        assert len({len(x["chosen_ids"]) for x in items}) == 1
    batch = collate_pairs(items, tok.pad_token_id)
    ours = stage.loss(model, batch, True) / stage.loss.count(batch)
    ours.backward()
    ours_grads = _grads(model)

    trainer = ORPOTrainer(copy.deepcopy(model), args=_trl_args(ORPOConfig, tmp_path, beta=0.5, max_length=64),
                          train_dataset=_dataset(), processing_class=tok)
    trainer.model.train()
    if pairs == "even":
        theirs = trainer.compute_loss(trainer.model, _orpo_inputs(items, tok.pad_token_id))
    else:
        alone = [trainer.compute_loss(trainer.model, _orpo_inputs([x], tok.pad_token_id)) for x in items]
        theirs = sum(alone) / len(items)
    theirs.backward()
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)
    assert _max_diff(ours_grads, _grads(trainer.model)) < 1e-5


def test_orpo_on_the_answer_equals_trl_pieces(tok, clean_accelerate, tmp_path):
    """train.loss_on: answer keeps the NLL on the chosen answer: TRL's get_batch_logps (length-averaged) and
    odds_ratio_loss, with the NLL as minus the chosen answer's mean token log-probability."""
    pytest.importorskip("trl")
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    _, stage, model = _stage("orpo", **{"method.pref.weights": "full", "method.pref.orpo_lambda": 0.5})
    assert stage.loss.nll_on == "answer"
    batch = collate_pairs(tokenize_pairs(PAIRS, tok, 64)[0], tok.pad_token_id)
    ours = stage.loss(model, batch, True) / stage.loss.count(batch)
    trainer = ORPOTrainer(model, args=_trl_args(ORPOConfig, tmp_path, beta=0.5, max_length=64), train_dataset=_dataset(),
                          processing_class=tok)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps = ORPOTrainer.get_batch_logps(logits, batch["labels"], average_log_prob=True)
    n = len(PAIRS)
    odds, *_ = trainer.odds_ratio_loss(logps[:n], logps[n:])
    theirs = (-logps[:n] - odds).mean()
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)


# ----------------------------------------------------------------------------- tokenization and batches


@pytest.mark.bundled
def test_pair_labels_cover_exactly_each_completion():
    from helpers import require_bundled

    require_bundled()
    from lingotune.models import load_tokenizer

    tok = load_tokenizer("bundled")
    rec = PrefRecord("Какая валюта в Японии?", "Японская иена.", "The yen.", system="Ты полезный помощник.")
    t = tokenize_pair(rec, tok, max_len=512)
    for side, answer in (("chosen", rec.chosen), ("rejected", rec.rejected)):
        ids, labels = t[f"{side}_ids"], t[f"{side}_labels"]
        assert [x for x in labels if x != IGNORE] == tok(answer + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
        first = next(k for k, x in enumerate(labels) if x != IGNORE)
        assert all(x == i for x, i in zip(labels[first:], ids[first:]))  # one contiguous tail, equal to the inputs
        assert tok.decode(ids[:first]).endswith("assistant\n")
    first = next(k for k, x in enumerate(t["chosen_labels"]) if x != IGNORE)
    assert t["chosen_ids"][:first] == t["rejected_ids"][:first]  # the same prompt on both sides
    # truncation keeps the start: a long answer is cut at its end and kept; a prompt that fills max_len drops the pair
    n_prompt = first
    cut = tokenize_pair(PrefRecord(rec.prompt, rec.chosen, "very long " * 50, system=rec.system), tok, n_prompt + 3)
    assert cut and len(cut["rejected_ids"]) == n_prompt + 3 and cut["rejected_ids"][:first] == t["rejected_ids"][:first]
    items, dropped = tokenize_pairs([rec, rec], tok, n_prompt)
    assert items == [] and dropped == 2


def test_pair_batches_are_chosen_rows_then_rejected_rows(tok):
    items, dropped = tokenize_pairs(PAIRS, tok, 64)
    assert dropped == 0
    batch = collate_pairs(items, tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 2 * len(PAIRS)
    for i, x in enumerate(items):
        for row, side in ((i, "chosen"), (len(items) + i, "rejected")):
            k = len(x[f"{side}_ids"])
            assert batch["input_ids"][row, :k].tolist() == x[f"{side}_ids"]
            assert batch["labels"][row, :k].tolist() == x[f"{side}_labels"]
            assert int(batch["attention_mask"][row].sum()) == k and (batch["labels"][row, k:] == IGNORE).all()


def _pair_items(n: int = 8, seed: int = 1) -> list[dict]:
    """Random pairs: one prompt, answers of 1 to 15 tokens (micro-batches hold very different token counts)."""
    import random

    rng = random.Random(seed)
    items = []
    for i in range(n):
        prompt = [rng.randrange(3, 60) for _ in range(rng.randint(4, 8))]
        sides = {}
        for side, k in (("chosen", 1 + (i * 2) % 15), ("rejected", 1 + (i * 5) % 11)):
            answer = [rng.randrange(3, 60) for _ in range(k)]
            sides[f"{side}_ids"], sides[f"{side}_labels"] = prompt + answer, [IGNORE] * len(prompt) + answer
        items.append(sides)
    return items


@pytest.mark.parametrize("method, weights", [("dpo", "full"), ("dpo", "lora"), ("orpo", "lora")])
def test_gradient_accumulation_weighs_every_pair_alike(tmp_path, method, weights):
    """batch_size 2 x grad_accum 2 gives the loss and gradients of batch_size 4 x grad_accum 1 on the same pairs."""
    from lingotune.train import _micro_batches, accumulate, prepare_stage

    items, out = _pair_items(), {}
    for bs, ga in ((4, 1), (2, 2)):
        recipe = make_recipe(**{"method.name": method, "method.pref.weights": weights, "train.batch_size": bs,
                                "method.pref.dpo_after_sft": False, "train.grad_accum": ga})
        stage = methods.stages(method, recipe)[-1]
        torch.manual_seed(0)
        model, groups = stage.setup(fresh_tiny())
        run = prepare_stage(model, groups, items, steps=1, cfg=recipe.train, seed=0, pad_id=0,
                            stage_dir=tmp_path / f"{bs}", log_path=tmp_path / f"{bs}.jsonl", log_key={"stage": "s"},
                            loss=stage.loss)
        loss, tokens = accumulate(run, 0)
        batches = _micro_batches(run, 0)[0]
        run.cleanup()
        out[bs] = (loss, _grads(model), tokens, [int((b["labels"] != IGNORE).sum()) for b in batches])
    (l4, g4, t4, _), (l2, g2, t2, labelled) = out[4], out[2]
    assert labelled[0] != labelled[1] and t2 == t4  # the micro-batches hold different numbers of answer tokens
    assert l2 == pytest.approx(l4, rel=1e-5)
    for k in g4:
        torch.testing.assert_close(g2[k], g4[k], rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------- what trains


@pytest.mark.parametrize("method, sets", [
    ("sft", {"method.pref.weights": "full"}),
    ("dpo", {}),  # sft (LoRA), then dpo on top of the merged sft adapter
    ("dpo", {"method.pref.weights": "full", "method.pref.dpo_after_sft": False}),
    ("orpo", {"method.pref.after_stage1": True}),
])
def test_only_the_stage_weights_move_and_the_reference_stays(tmp_path, method, sets):
    from lingotune.train import train_stage

    recipe = make_recipe(**{"method.name": method, "method.pref.sft.steps": 2, "method.pref.dpo.steps": 2,
                            "method.pref.orpo.steps": 2, "method.stage1.steps": 2, **sets})
    model = fresh_tiny()
    for stage in methods.stages(method, recipe):
        torch.manual_seed(0)
        model, groups = stage.setup(model)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        reference = getattr(stage.loss, "reference", None)
        start = copy.deepcopy(reference.state_dict()) if reference is not None else None
        items = _pair_items() if stage.data == ["prefs"] else make_items()
        train_stage(model, groups, items, steps=2, cfg=recipe.train, seed=0, pad_id=0, stage_dir=tmp_path / stage.name,
                    log_path=tmp_path / "m.jsonl", log_key={"stage": stage.name}, row_sparse=stage.row_sparse,
                    loss=stage.loss)
        after = dict(model.named_parameters())
        moved = {n for n in before if not torch.equal(before[n], after[n])}
        assert moved and moved <= trained, (stage.name, moved - trained)
        if stage.name == "stage1":
            assert trained == {"model.embed_tokens.weight"}
        if start is not None:
            assert all(torch.equal(v, reference.state_dict()[k]) for k, v in start.items())
            assert all(torch.equal(v, before[k]) for k, v in start.items() if k in before)  # the stage's start


# ----------------------------------------------------------------------------- end to end

PREFS = [
    ("Какая столица Франции?", "Столица Франции — Париж.", "The capital of France is Paris."),
    ("Сколько дней в неделе?", "В неделе семь дней.", "A week has seven days."),
    ("Какого цвета небо днём?", "Днём небо обычно голубое.", "The sky is usually blue."),
    ("Назови любое время года.", "Например, весна.", "Spring, for example."),
    ("Что пьют из чашки?", "Из чашки обычно пьют чай или кофе.", "Tea or coffee."),
    ("Где живут рыбы?", "Рыбы живут в воде: в реках, озёрах и морях.", "In water."),
]
SMALL = ["--set", "train.batch_size=2", "--set", "train.max_len=96", "--set", "train.precision=fp32",
         "--set", "train.checkpoint_every=1", "--set", "data.max_stage1=16", "--set", "data.max_stage2=8",
         "--set", "eval.tasks=[starter_heldout]", "--set", "eval.limit=2", "--set", "output.sample_prompts=1",
         "--set", "method.stage1.steps=3", "--set", "method.pref.sft.steps=3", "--set", "method.pref.dpo.steps=3",
         "--set", "method.pref.orpo.steps=3",
         "--set", "data.sources=[{format: starter, limit: 40}, {format: prefs, path: prefs.jsonl}]"]


def _write_prefs(path, rows=PREFS) -> None:
    path.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}, ensure_ascii=False) + "\n"
                            for p, c, r in rows), encoding="utf-8")


def _tensors(out) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {f"{f.relative_to(out)}:{k}": v for f in sorted(out.rglob("*.safetensors"))
            if "checkpoint" not in f.parts for k, v in load_file(str(f)).items()}


def _interrupt_at(monkeypatch, stage: str, step: int) -> None:
    """Ctrl-C in the middle of `stage`'s step `step`: the step finishes, is checkpointed, the run stops."""
    import lingotune.train as train

    real = train.accumulate

    def accumulate(run, i):
        out = real(run, i)
        if run.name == stage and i + 1 == step:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(train, "accumulate", accumulate)


@pytest.mark.parametrize("method, stages, sets", [
    ("orpo", ["stage1", "orpo"], ["--set", "method.pref.after_stage1=true"]),
    ("dpo", ["sft", "dpo"], []),
])
def test_preference_run_completes_and_resumes_to_the_same_result(method, stages, sets, tiny_model_dir, tmp_path,
                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_prefs(tmp_path / "prefs.jsonl")
    args = ["run", "--set", f"model.source={tiny_model_dir}", "--set", f"method.name={method}", "--set",
            f"data.root={tmp_path}", *SMALL, *sets]
    res = CliRunner().invoke(app, args + ["--out", "ref"])
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "ref" / "results.json").read_text())
    assert list(results["stages"]) == stages and all(s["complete"] for s in results["stages"].values())
    assert results["stages"][stages[-1]]["examples"] == len(PREFS)
    assert set(results["evals"]) == {"untouched", f"{method}-{stages[0]}", method}  # eval.every_stage of the default
    assert results["data"]["prefs"] == len(PREFS) and (tmp_path / "ref" / "data" / "prefs.jsonl").exists()
    for name in stages:
        assert list((tmp_path / "ref" / method / name / "checkpoint").glob("step-*"))
    metrics = [json.loads(l) for l in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert [(m["stage"], m["step"]) for m in metrics] == [(s, i) for s in stages for i in (1, 2, 3)]

    _interrupt_at(monkeypatch, stages[-1], 2)
    cut = CliRunner().invoke(app, args + ["--out", "cut"])
    assert cut.exit_code == 130 and "--resume" in cut.output
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, args + ["--out", "cut", "--resume"])
    assert res.exit_code == 0, res.output
    resumed = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert resumed["stages"][stages[-1]]["resumed_from"] == 2
    ref, got = _tensors(tmp_path / "ref"), _tensors(tmp_path / "cut")
    assert set(ref) == set(got) and ref
    assert all(torch.equal(ref[k], got[k]) for k in ref)  # fp32: bit-identical to the uninterrupted run
    for s in stages:
        assert resumed["stages"][s]["final_loss"] == results["stages"][s]["final_loss"]
    if method == "orpo":  # ORPO in place of stage 2: the stage-1 embeddings stay frozen
        key = "model.embed_tokens.weight"
        emb = {s: ref[f"orpo/{s}/embeddings.safetensors:{key}"] for s in ("stage1", "orpo")}
        assert torch.equal(emb["orpo"], emb["stage1"])


def _pref_grid(tiny_model_dir, root, methods):
    return make_recipe(**{
        "model.source": str(tiny_model_dir), "data.root": str(root), "data.max_stage1": 16, "data.max_stage2": 8,
        "data.sources": [{"format": "starter", "limit": 40}, {"format": "prefs", "path": "prefs.jsonl"}],
        "method.pref.sft": {"steps": 3, "data": ["prefs"]}, "method.pref.dpo": {"steps": 3},
        "train.max_len": 96, "train.checkpoint_every": 1, "eval.tasks": ["starter_heldout"], "eval.limit": 2,
        "eval.n_bootstrap": 0, "eval.max_new_tokens": 2, "output.sample_prompts": 1,
        "compare.methods": methods, "compare.seeds": [0]})


def test_a_grid_trains_the_sft_stage_that_sft_and_dpo_share_once_and_dpo_ends_as_it_does_alone(
        tiny_model_dir, tmp_path, monkeypatch):
    """dpo's first stage is the sft variant's whole training: in a grid with both, the dpo cell takes that stage
    from the sft cell (its folder, record, loss-log lines) and trains only its dpo stage, even when it is cut in
    the middle of that stage and resumed; its adapters are bit-identical to a grid with dpo alone, and no stage
    checkpoint outlives the grid (compare.keep_checkpoints false)."""
    from lingotune import compare as cmp
    from lingotune.errors import TrainingInterrupted

    _write_prefs(tmp_path / "prefs.jsonl")
    grid, alone = tmp_path / "grid", tmp_path / "alone"
    _interrupt_at(monkeypatch, "dpo", 2)
    with pytest.raises(TrainingInterrupted):
        cmp.compare(_pref_grid(tiny_model_dir, tmp_path, ["sft", "dpo"]), grid)
    monkeypatch.undo()
    cmp.compare(_pref_grid(tiny_model_dir, tmp_path, ["sft", "dpo"]), grid, resume=True)
    cmp.compare(_pref_grid(tiny_model_dir, tmp_path, ["dpo"]), alone)
    sft, dpo, solo = (json.loads((d / "data" / c / "results.json").read_text())
                      for d, c in ((grid, "sft-s0"), (grid, "dpo-s0"), (alone, "dpo-s0")))
    assert dpo["stages"]["sft"]["shared_from"] == "sft-s0" and "shared_from" not in dpo["stages"]["dpo"]
    assert dpo["stages"]["dpo"]["resumed_from"] == 2
    assert not any("shared_from" in s for r in (sft, solo) for s in r["stages"].values())
    assert dpo["stages"]["sft"]["seconds"] == sft["stages"]["sft"]["seconds"]  # trained once
    assert dpo["stages"]["sft"]["artefacts"]["adapter"].endswith("dpo-s0/dpo/sft/adapter")
    assert dpo["stages"]["sft"]["share_key"] == sft["stages"]["sft"]["share_key"] != dpo["stages"]["dpo"]["share_key"]
    got, ref, first = (_tensors(d / "data" / c / m) for d, c, m in ((grid, "dpo-s0", "dpo"), (alone, "dpo-s0", "dpo"),
                                                                     (grid, "sft-s0", "sft")))
    assert set(got) == set(ref) and {k for k in got if k.startswith("sft/")} == set(first) and first
    assert all(torch.equal(got[k], first[k]) for k in first)
    assert all(torch.equal(got[k], ref[k]) for k in ref)  # sft adapter and dpo adapter alike
    log = [json.loads(x) for x in (grid / "data" / "dpo-s0" / "metrics.jsonl").read_text().splitlines()]
    first = [json.loads(x) for x in (grid / "data" / "sft-s0" / "metrics.jsonl").read_text().splitlines()]
    assert [{**x, "method": "sft"} for x in log if x["stage"] == "sft"] == first
    assert [x["step"] for x in log if x["stage"] == "dpo"] == [1, 2, 3]
    assert not list(grid.glob("data/*/*/*/checkpoint")) and not list(alone.glob("data/*/*/*/checkpoint"))
    assert "- `dpo-s0` took `sft` from `sft-s0`" in (grid / "report.md").read_text()


# ----------------------------------------------------------------------------- bad input


def _build(tmp_path, rows_text: str, **checks):
    from lingotune.data.build import build_datasets
    from lingotune.data.config import DataConfig

    (tmp_path / "p.jsonl").write_text(rows_text, encoding="utf-8")
    cfg = DataConfig(root=str(tmp_path), sources=[{"format": "prefs", "path": "p.jsonl"}], checks=checks)
    return build_datasets(cfg, "ru", 0)


def _row(prompt="Какая столица Франции?", chosen="Столица Франции — Париж.", rejected="Paris.", **extra) -> str:
    row = {"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}
    return json.dumps({k: v for k, v in row.items() if v is not None}, ensure_ascii=False) + "\n"


def test_beta_must_be_positive_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for beta in ("0", "-0.5"):
        res = CliRunner().invoke(app, ["run", "--set", "method.name=dpo", "--set", f"method.pref.beta={beta}"])
        assert res.exit_code == 2
        lines = [l for l in res.output.splitlines() if l.strip()]
        assert len(lines) == 1 and "method.pref.beta" in lines[0] and "greater than 0" in lines[0]
    assert not list(tmp_path.iterdir())


def test_prefs_only_train_preference_stages():
    from lingotune.recipe import RecipeError

    with pytest.raises(RecipeError, match=r"method.pref.dpo.data: a preference stage trains on \['prefs'\] alone"):
        make_recipe(**{"method.pref.dpo": {"steps": 2, "data": ["prefs", "stage2"]}})
    with pytest.raises(RecipeError, match="method.stage2.data: 'prefs'"):
        make_recipe(**{"method.stage2.data": ["prefs"]})
    make_recipe(**{"method.pref.sft": {"steps": 2, "data": ["stage2", "prefs"]}})  # sft: the chosen side, beside other sets
    from lingotune.data.config import SourceSpec

    with pytest.raises(ValueError, match="format prefs needs 'path' and is used as prefs only"):
        SourceSpec(format="prefs", path="p.jsonl", use="stage2")
    with pytest.raises(ValueError, match="format prefs needs 'path'"):
        SourceSpec(format="alpaca", path="a.json", use="prefs")


def test_sft_on_prefs_trains_on_exactly_the_chosen_conversations(tmp_path, tok):
    from lingotune.data.batches import pair_examples, tokenize_all
    from lingotune.run import select_stages, tokenize_stages

    built = _build(tmp_path, _row() + _row(prompt="Сколько будет 2+2?", chosen="Четыре.", rejected="Four."))
    r = make_recipe(**{"method.name": "dpo", "method.pref.sft": {"steps": 2, "data": ["prefs"]}})
    stages = select_stages(r, None, {})
    assert [s.name for s in stages] == ["sft", "dpo"]
    got = tokenize_stages(r, stages, built, tok)
    chosen = [pair_examples(p)[0] for p in built.prefs]
    want, _ = tokenize_all(chosen, tok, r.train.max_len, r.train.loss_on)
    assert [it["input_ids"] for it in got["sft"][0]] == [it["input_ids"] for it in want]
    assert [it["labels"] for it in got["sft"][0]] == [it["labels"] for it in want]
    assert all("Paris" not in tok.decode(it["input_ids"]) for it in got["sft"][0])  # never the rejected side
    assert all("chosen_ids" in it for it in got["dpo"][0])  # the dpo stage still gets pairs


def test_a_record_missing_chosen_names_file_line_and_field(tmp_path):
    with pytest.raises(DataError) as e:
        _build(tmp_path, _row() + _row(chosen=None))
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and f"{tmp_path / 'p.jsonl'}:2: field 'chosen' is missing" in msg
    assert msg.startswith("data.sources[0] (prefs):")


def test_an_empty_prompt_names_file_line_and_field(tmp_path):
    with pytest.raises(DataError) as e:
        _build(tmp_path, _row() + _row() + _row(prompt="  "))
    assert len(str(e.value).splitlines()) == 1 and f"{tmp_path / 'p.jsonl'}:3: field 'prompt' is empty" in str(e.value)


def test_missing_chosen_is_one_line_from_the_command(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prefs.jsonl").write_text(_row() + _row(chosen=None), encoding="utf-8")
    res = CliRunner().invoke(app, ["train", "--out", "r", "--set", f"model.source={tiny_model_dir}", "--set",
                                   "method.name=orpo", "--set", "data.sources=[{format: prefs, path: prefs.jsonl}]",
                                   "--set", f"data.root={tmp_path}"])
    assert res.exit_code == 2
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "prefs.jsonl:2: field 'chosen' is missing" in lines[0]
    assert not (tmp_path / "r").exists()


def test_chosen_equal_to_rejected_is_skipped_and_counted(tmp_path):
    same = "Столица Франции — Париж."
    built = _build(tmp_path, _row() + _row(prompt="Где Париж?", chosen=same, rejected=f" {same} ")
                   + _row(prompt="Что это?", chosen="Это Париж, столица.", rejected="Paris.", system="Отвечай кратко."))
    assert [p.prompt for p in built.prefs] == ["Какая столица Франции?", "Что это?"]
    assert built.prefs[1].system == "Отвечай кратко." and built.prefs[0].source.endswith("p.jsonl:1")
    assert built.report["prefs"] == 2 and built.report["prefs_identical"] == 1
    entry = built.report["sources"][0]
    assert entry["prefs_read"] == 3 and entry["identical"] == 1
    assert any("p.jsonl:2: field 'chosen' is identical" in x for x in entry["validation"]["examples"])


def test_prefs_are_validated_like_other_sources(tmp_path):
    built = _build(tmp_path, _row() + _row() + _row(prompt="Вопрос?", chosen="This answer is in English, wrongly.")
                   + _row(prompt="Ещё вопрос?", chosen="   "))
    v = built.report["validation"]
    assert (v["duplicates"], v["wrong_script"], v["empty_answer"], len(built.prefs)) == (1, 1, 1, 1)
    paths = built.write(tmp_path / "out")
    rows = [json.loads(l) for l in paths["prefs"].read_text(encoding="utf-8").splitlines()]
    assert rows[0]["chosen"] == "Столица Франции — Париж." and rows[0]["kind"] == "file"


@pytest.mark.parametrize("where", ["prompt", "chosen", "rejected"])
def test_the_leakage_check_covers_prompt_chosen_and_rejected(tmp_path, where):
    from lingotune.data.build import build_datasets
    from lingotune.data.config import DataConfig

    leak = {"prompt": "Какая столица Франции и где она находится на карте мира?",
            "chosen": "Столица Франции — Париж, он стоит на реке Сена с давних времён.",
            "rejected": "The capital of France is Paris, on the river Seine."}[where]
    (tmp_path / "p.jsonl").write_text(_row() + _row(**{where: leak}), encoding="utf-8")
    cfg = DataConfig(root=str(tmp_path), sources=[{"format": "prefs", "path": "p.jsonl"}])
    built = build_datasets(cfg, "ru", 0, eval_texts=[f"Вот текст оценки: {leak}"])
    assert built.report["leakage_dropped"] == 1 and len(built.prefs) == 1


def test_a_path_starting_with_dot_slash_is_read_from_the_current_directory(tmp_path, monkeypatch):
    from lingotune.data.build import build_datasets
    from lingotune.data.config import DataConfig

    root, here = tmp_path / "root", tmp_path / "here"
    root.mkdir(), here.mkdir()
    (here / "p.jsonl").write_text(_row(), encoding="utf-8")
    (root / "p.jsonl").write_text(_row(chosen="Париж."), encoding="utf-8")
    monkeypatch.chdir(here)
    for path, chosen in (("./p.jsonl", "Столица Франции — Париж."), ("p.jsonl", "Париж.")):
        cfg = DataConfig(root=str(root), sources=[{"format": "prefs", "path": path}])
        assert [p.chosen for p in build_datasets(cfg, "ru", 0).prefs] == [chosen]
