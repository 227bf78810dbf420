"""The compare grid: cells resume independently; statistics are right on known inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lingotune import compare as cmp
from lingotune.stats import paired_permutation, t_interval


def test_t_interval_over_seeds():
    m, half = t_interval([1.0, 2.0, 3.0])
    assert m == 2.0
    assert half == pytest.approx(4.302653 * 1.0 / 3 ** 0.5, rel=1e-5)  # t(0.975, 2) * sd / sqrt(n)
    assert t_interval([5.0]) == (5.0, 0.0)


def test_paired_permutation_p_values():
    assert paired_permutation([0, 0, 0]) == 1.0
    # ten identical positive differences: only 2 of 1024 sign patterns are as extreme
    p = paired_permutation([1.0] * 10, n_perm=20000, seed=1)
    assert p == pytest.approx(2 / 1024, abs=0.002)
    # symmetric differences: no evidence
    assert paired_permutation([1, -1] * 10, n_perm=2000) > 0.5


def test_paired_t_over_seeds():
    from lingotune.stats import paired_t_pvalue

    assert paired_t_pvalue([1.0], [0.0]) == 1.0 and paired_t_pvalue([1.0, 2.0], [1.0, 2.0]) == 1.0
    assert paired_t_pvalue([1.0, 2.0], [0.0, 1.0]) == 0.0  # the same difference on every seed, no warning
    # differences 1, 2, 3: t = 2 / (1 / sqrt 3) = 3.464 on 2 degrees of freedom
    assert paired_t_pvalue([1.0, 2.0, 3.0], [0.0, 0.0, 0.0]) == pytest.approx(0.0742, abs=1e-3)


def test_interrupted_grid_resumes_without_redoing_finished_cells(tiny_model_dir, tmp_path, monkeypatch):
    from helpers import make_recipe

    recipe = make_recipe(**{
        "model.source": str(tiny_model_dir),
        "data.max_stage1": 16, "data.max_stage2": 8,
        "method.stage1.steps": 2, "method.stage2.steps": 2,
        "train.max_len": 64, "train.batch_size": 2,
        "eval.tasks": ["starter_heldout"], "eval.limit": 4, "eval.n_bootstrap": 0,
        "output.sample_prompts": 1,
        "compare.methods": ["lora", "dpart"], "compare.seeds": [0, 1],
    })
    real = cmp.train_method
    calls = []

    def counting(model, tok, r, *a, **kw):
        calls.append((r.method.name, r.seed))
        if len(calls) == 3 and interrupt["on"]:
            raise KeyboardInterrupt
        return real(model, tok, r, *a, **kw)

    interrupt = {"on": True}
    monkeypatch.setattr(cmp, "train_method", counting)
    out = tmp_path / "grid"
    with pytest.raises(KeyboardInterrupt):
        cmp.compare(recipe, out)
    finished = {p.parent.name: p.read_text() for p in out.glob("data/*-s*/results.json")}
    assert sorted(finished) == ["lora-s0", "lora-s1"]
    interrupt["on"] = False
    calls.clear()
    summary = cmp.compare(recipe, out, resume=True)
    assert calls == [("dpart", 0), ("dpart", 1)]
    for name, text in finished.items():  # finished cells untouched
        assert (out / "data" / name / "results.json").read_text() == text
    rows = {r["method"] for r in summary["datasets"]["data"]}
    assert rows == {"untouched", "lora", "dpart"}
    assert (out / "report.md").exists() and (out / "table_data.csv").exists() and (out / "loss_data.png").exists()
    sig = summary["significance"]["data"]
    assert sig["starter_heldout/accuracy"]["pairs"] == 8
    cell = json.loads((out / "data" / "dpart-s1" / "results.json").read_text())
    assert cell["stages"]["stage1"]["steps"] == 2 and cell["complete"]


def test_a_grid_run_in_parts_records_each_part_and_its_wall_time(tiny_model_dir, tmp_path):
    from helpers import make_recipe

    settings = {"model.source": str(tiny_model_dir), "data.max_stage1": 8, "data.max_stage2": 4,
                "method.stage1.steps": 1, "method.stage2.steps": 1, "train.max_len": 64, "train.batch_size": 2,
                "eval.tasks": ["starter_heldout"], "eval.limit": 2, "eval.n_bootstrap": 0, "output.sample_prompts": 0,
                "compare.methods": ["lora"], "compare.seeds": [0]}
    old = tmp_path / "old"  # a grid summarised by an earlier lingotune: its wall time, no parts
    old.mkdir()
    (old / "summary.json").write_text(json.dumps({"wall_seconds": 12.5}))
    first = cmp.compare(make_recipe(**settings), tmp_path / "fresh")
    assert [p["cells_run"] for p in first["parts"]] == [["data/lora-s0"]]
    assert first["wall_seconds_all_parts"] == first["parts"][0]["wall_seconds"] == first["wall_seconds"] > 0
    env = first["parts"][0]["environment"]
    assert {"cpu", "commit", "command", "torch"} <= set(env)
    second = cmp.compare(make_recipe(**{**settings, "compare.seeds": [0, 1]}), tmp_path / "fresh", resume=True)
    assert [p["cells_run"] for p in second["parts"]] == [["data/lora-s0"], ["data/lora-s1"]]
    assert second["parts"][1]["seeds"] == [0, 1] and second["parts"][0] == first["parts"][0]
    assert second["wall_seconds_all_parts"] == pytest.approx(sum(p["wall_seconds"] for p in second["parts"]))
    report = (tmp_path / "fresh" / "report.md").read_text()
    assert "## How this grid was run" in report and "| 2 | " in report and "data/lora-s1" in report
    assert report.count(" min | ") == 2  # both parts' wall times, the latest one's too
    assert cmp._parts(old) == [{"wall_seconds": 12.5, "note": "written before lingotune recorded a grid's parts"}]


def test_loglik_yes_no_task_is_in_the_significance_test(tiny_model_dir, tmp_path):
    """A yes/no task scored by log-likelihood (accuracy_ll, correct_ll; no rate) is tested like any other."""
    from helpers import make_recipe

    recipe = make_recipe(**{
        "model.source": str(tiny_model_dir),
        "data.max_stage1": 8, "data.max_stage2": 4,
        "method.stage1.steps": 1, "method.stage2.steps": 1,
        "train.max_len": 64, "train.batch_size": 2,
        "eval.tasks": ["starter_heldout"], "eval.limit": 4, "eval.n_bootstrap": 0, "eval.mode": "loglik",
        "output.sample_prompts": 1,
        "compare.methods": ["lora", "dpart"], "compare.seeds": [0],
    })
    out = tmp_path / "grid"
    sig = cmp.compare(recipe, out)["significance"]["data"]
    row = sig["starter_heldout/accuracy_ll"]

    def correct(method):
        path = out / "data" / f"{method}-s0" / "eval" / method / "starter_heldout.jsonl"
        return {r["id"]: r["correct_ll"] for r in map(json.loads, path.read_text().splitlines())}

    a, b = correct("dpart"), correct("lora")
    assert row["pairs"] == 4 and row["test"] == "permutation"
    assert row["delta"] == pytest.approx(100 * sum(a[i] - b[i] for i in a) / 4)
    assert "| starter_heldout | accuracy_ll ↑ |" in (out / "report.md").read_text()


def _cell(out, method, seed, tasks, metrics=True):
    """A finished grid cell: results.json with the tasks' scores, and per-example JSONL of `correct_ll`."""
    from lingotune.eval import load_task

    cell = out / "data" / (method if method == "untouched" else f"{method}-s{seed}")
    (cell / "eval" / method).mkdir(parents=True)
    evals = {}
    for task, (base, scores) in tasks.items():
        if isinstance(scores, list):  # per-example correctness -> accuracy_ll in %
            recs = [{"id": i, "shots": 0, "correct_ll": bool(c)} for i, c in enumerate(scores)]
            (cell / "eval" / method / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
            scores = {"accuracy_ll": 100 * sum(scores) / len(scores)}
        evals[task] = {**scores, "ci": {}, "n": 4, "skipped": None}
        if metrics:
            evals[task]["metrics"] = load_task(base).describe_metrics(scores)
    stages = {} if method == "untouched" else {"train": {"trainable_params": 100}}
    results = {"complete": True, "method": method, "variant": method, "seed": seed, "stages": stages,
               "train_seconds": 1.0, "evals": {method: evals}}
    (cell / "results.json").write_text(json.dumps(results))


def test_summary_follows_each_tasks_primary_metric_and_its_direction(tmp_path):
    """Known per-example answers and bits per char: deltas, pooling, and which method the direction favours."""
    from helpers import make_recipe

    from lingotune.compare_report import summarize

    out = tmp_path / "grid"
    grid = {  # method, seed -> qa, qb correctness per example; bits per char of two perplexity tasks
        ("lora", 0): ([1, 0, 0, 0], [1, 1], 3.0, 2.0), ("lora", 1): ([0, 0, 1, 1], [1, 1], 3.2, 2.0),
        ("dpart", 0): ([1, 1, 1, 0], [0, 1], 2.8, 2.5), ("dpart", 1): ([1, 0, 1, 1], [1, 1], 2.9, 2.3),
    }
    for (method, seed), (qa, qb, bpc, bpc2) in grid.items():
        _cell(out, method, seed, {"qa": ("danetqa", qa), "qb": ("terra", qb),
                                  "bpc": ("flores_ru_bpc", {"bits_per_char": bpc, "perplexity": 9.0}),
                                  "bpc2": ("flores_ko_bpc", {"bits_per_char": bpc2})})
    # the untouched cell as written before results carried declarations: read by its metric names
    _cell(out, "untouched", 0, {"qa": ("danetqa", [0, 0, 0, 1]), "bpc": ("flores_ru_bpc", {"bits_per_char": 3.5})},
          metrics=False)
    recipe = make_recipe(**{"compare.methods": ["lora", "dpart"], "compare.seeds": [0, 1]})
    summary = summarize(out, recipe)
    sig = summary["significance"]["data"]
    assert sig["qa/accuracy_ll"]["delta"] == pytest.approx(37.5)  # seed 0: +2 of 4, seed 1: +1 of 4
    assert sig["qa/accuracy_ll"]["pairs"] == 8 and sig["qa/accuracy_ll"]["better"] == "dpart"
    assert sig["qa/accuracy_ll"]["p"] == pytest.approx(0.25, abs=0.02)  # 3 non-zero pairs, all +1
    # over seeds: deltas +50 and +25 points, t = 37.5 / (17.68 / sqrt 2) = 3 on 1 degree of freedom
    assert sig["qa/accuracy_ll"]["p_seeds"] == pytest.approx(0.2048, abs=1e-3) and sig["qa/accuracy_ll"]["seeds"] == 2
    assert sig["qb/accuracy_ll"]["delta"] == pytest.approx(-25.0) and sig["qb/accuracy_ll"]["better"] == "lora"
    pooled = sig["all tasks/accuracy_ll"]
    assert pooled["pairs"] == 12 and pooled["delta"] == pytest.approx(100 / 6) and pooled["ci"][0] == pytest.approx(100 / 6)
    # bits per char: lower is better, so a negative delta favours the candidate
    bpc = sig["bpc/bits_per_char"]
    assert bpc["delta"] == pytest.approx(-0.25) and bpc["ci"][0] < -0.25 < bpc["ci"][1]
    assert bpc["higher_is_better"] is False and bpc["better"] == "dpart" and bpc["test"] == "t"
    assert bpc["p"] == pytest.approx(0.1257, abs=1e-3)  # paired t = -5.0 on 1 degree of freedom
    assert bpc["p_seeds"] == pytest.approx(bpc["p"])  # the same test for a corpus-level metric
    assert sig["bpc2/bits_per_char"]["delta"] == pytest.approx(0.4) and sig["bpc2/bits_per_char"]["better"] == "lora"
    assert not any("perplexity" in k or "f1" in k for k in sig)  # only primary metrics are tested
    rows = {r["method"]: r for r in summary["datasets"]["data"]}
    # mean over qa and qb per seed: 62.5 and 75; t(0.975, 1) * sd / sqrt(2) = 12.7062 * 6.25
    assert rows["lora"]["all tasks/accuracy_ll"] == (68.75, pytest.approx(12.7062 * 6.25, abs=1e-3), 2)
    assert rows["untouched"]["qa/accuracy_ll"] == (25.0, 0.0, 1) and rows["untouched"]["bpc/bits_per_char"][0] == 3.5
    assert rows["dpart"]["bpc/perplexity"][0] == 9.0  # declared, not primary: in the table
    report = (out / "report.md").read_text()
    assert "| bpc | bits_per_char ↓ | -0.25 |" in report and "| bpc2 | bits_per_char ↓ | +0.40 |" in report
    assert "| +37.50 | [-121.33, +196.33] | 8 | 0.2" in report and "| 0.205 (2) | dpart |" in report  # qa: the permutation p, then over seeds
    line = next(x for x in report.splitlines() if x.startswith("| bpc2 |"))
    assert line.endswith("| lora |")
    assert "bpc/bits_per_char ↓" in report and "qa/accuracy_ll ↑" in report
    assert (out / "bars_data.png").exists() and (out / "table_data.csv").read_text().startswith("dataset,method,seeds,bpc/")


def test_a_part_run_for_some_methods_reports_every_finished_cell_of_the_grid(tmp_path):
    """A part invoked with --methods lora --seeds 1 rewrites the report: dpart's cells, finished by an earlier
    part, stay in the table and the header names the seeds the cells have, not the invocation's."""
    from helpers import make_recipe

    from lingotune.compare_report import summarize

    out = tmp_path / "grid"
    for method, seed, qa in [("lora", 0, [1, 0, 0, 0]), ("dpart", 0, [1, 1, 0, 0]), ("lora", 1, [0, 1, 1, 1])]:
        _cell(out, method, seed, {"qa": ("danetqa", qa)})
    _cell(out, "untouched", 0, {"qa": ("danetqa", [0, 0, 0, 1])})
    summary = summarize(out, make_recipe(**{"compare.methods": ["lora"], "compare.seeds": [1]}))
    rows = {r["method"]: r for r in summary["datasets"]["data"]}
    assert list(rows) == ["untouched", "lora", "dpart"]
    assert rows["lora"]["seeds"] == [0, 1] and rows["dpart"]["seeds"] == [0]
    assert rows["lora"]["qa/accuracy_ll"][0] == 50.0 and rows["dpart"]["qa/accuracy_ll"] == (50.0, 0.0, 1)
    report = (out / "report.md").read_text()
    assert "seeds [0, 1]" in report and "| dpart | 0 | 50.00 |" in report and "| lora | 0,1 | 50.00 ± " in report
    assert summary["significance"]["data"]["qa/accuracy_ll"]["pairs"] == 4  # dpart − lora on seed 0 only
    csv_rows = (out / "table_data.csv").read_text().splitlines()
    assert csv_rows[2].startswith("data,lora,0 1,")


def test_run_report_marks_direction_and_primary():
    from lingotune.eval import load_task
    from lingotune.report import eval_table

    keys = {"bits_per_char": 3.0, "perplexity": 20.0, "tokens": 100}
    res = {**keys, "ci": {"bits_per_char": [2.9, 3.1]}, "n": 8, "seconds": 1.0, "skipped": None,
           "metrics": load_task("flores_ru_bpc").describe_metrics(keys)}
    lines = eval_table({"untouched": {"bpc": res}, "dpart": {"bpc": {**res, "bits_per_char": 2.5, "ci": {}}}})
    assert "| bpc | **bits_per_char** ↓ | 3.00 [2.90, 3.10] | 2.50 |" in lines
    assert "| bpc | perplexity ↓ | 20.00 | 20.00 |" in lines
    assert not any("tokens" in x for x in lines)  # not a declared metric


def test_the_grid_controls_change_one_field_each(tmp_path):
    """lora_all is LoRA with dpart_all's loss (every token), dpart_together is DParT with each pair in one
    step; each differs from its method's cell in that one training field."""
    from lingotune.compare import cell_recipe
    from lingotune.recipe import load_recipe, training_fields

    recipe = load_recipe(Path(__file__).parents[1] / "src/lingotune/recipes/results_ru.yaml")
    cells = {m: training_fields(cell_recipe(recipe, m, 0, recipe.data, tmp_path)) for m in recipe.compare.methods}
    assert {"lora_all", "dpart_all", "dpart_together"} <= set(cells)
    for variant, method, field, value in [("lora_all", "lora", "train.loss_on", "all"),
                                          ("dpart_all", "dpart", "train.loss_on", "all"),
                                          ("dpart_together", "dpart", "data.pair_batching", "together")]:
        diff = {k for k in cells[method] if cells[method][k] != cells[variant][k]}
        assert diff == {field} and cells[variant][field] == value


def test_grid_scores_the_probe_against_the_untouched_model_after_each_stage(tiny_model_dir, tmp_path):
    """In a grid, every cell's transfer probe is scored on the items the dataset's untouched model knew, after
    stage 1 (eval.every_stage) and at the end, and the summary and report take it."""
    from helpers import make_recipe

    recipe = make_recipe(**{
        "model.source": str(tiny_model_dir), "data.max_stage1": 8, "data.max_stage2": 4,
        "method.stage1.steps": 1, "method.stage2.steps": 1, "train.max_len": 64, "train.batch_size": 2,
        "eval.tasks": ["transfer_facts", "align_facts"], "eval.every_stage": ["transfer_facts", "align_facts"],
        "eval.limit": 4, "eval.n_bootstrap": 0, "eval.max_new_tokens": 2, "output.sample_prompts": 1,
        "compare.methods": ["lora", "dpart", "dpart_all"], "compare.seeds": [0],
    })
    out = tmp_path / "grid"
    cmp.compare(recipe, out)
    all_ = json.loads((out / "data" / "dpart_all-s0" / "results.json").read_text())["evals"]
    assert set(all_) == {"dpart_all-stage1", "dpart_all"}  # a variant's stage rows carry the variant's name
    untouched = json.loads((out / "data" / "untouched" / "results.json").read_text())["evals"]["untouched"]
    dpart = json.loads((out / "data" / "dpart-s0" / "results.json").read_text())["evals"]
    assert set(dpart) == {"dpart-stage1", "dpart"}
    for label in dpart:
        t = dpart[label]["transfer_facts"]
        assert t["known_from"] == "reference" and t["n_known"] == len(untouched["transfer_facts"]["known"])
        assert "cos_dist_change" in dpart[label]["align_facts"]
    lora = json.loads((out / "data" / "lora-s0" / "results.json").read_text())["evals"]
    assert set(lora) == {"lora"}  # one stage: nothing to evaluate in between
    report = (out / "report.md").read_text()
    assert "align_facts/cos_margin ↑" in report  # the grid table has the probe's columns
    rows = [line.split(" | ")[0] for line in report.splitlines() if line.startswith("| ")]
    assert rows[:7] == ["| method", "| untouched", "| lora", "| dpart-stage1", "| dpart", "| dpart_all-stage1",
                        "| dpart_all"]  # after stage 1, then at the end
    summary = json.loads((out / "summary.json").read_text())
    stage1 = next(r for r in summary["datasets"]["data"] if r["method"] == "dpart-stage1")
    assert stage1["trainable params"][0] == 1_572_864  # stage 1's embeddings only


def _lep_grid(tiny_model_dir, instruct_b=None, **more):
    from helpers import make_recipe

    lep = {"method.name": "lep", "method.lep.steps": 2, "vocab.scenario": "extend", "vocab.add": 20,
           "propagate.instruct": str(tiny_model_dir)}
    return make_recipe(**{
        "model.source": str(tiny_model_dir), "data.max_stage1": 8, "data.max_stage2": 4,
        "data.sources": [{"format": "starter", "limit": 60}, {"format": "starter", "use": "text", "limit": 60}],
        "method.stage1.steps": 1, "method.stage2.steps": 1, "train.max_len": 64, "train.batch_size": 2,
        "train.precision": "fp32", "eval.tasks": ["starter_heldout"], "eval.limit": 3,
        "eval.n_bootstrap": 0, "eval.max_new_tokens": 2, "output.sample_prompts": 1,
        "compare.methods": ["lora", "lep_conv", "lep_swap"], "compare.seeds": [0],
        "compare.variants": {"lep_conv": {**lep, "propagate.mode": "conversion"},
                             "lep_swap": {**lep, "propagate.mode": "swap",
                                          "propagate.instruct": str(instruct_b or tiny_model_dir)}},
        **more,
    })


def test_a_grid_runs_lep_variants_and_evaluates_the_adapted_and_the_propagated_model(tiny_model_dir, tmp_path):
    """LEP cells (scenario x propagation mode) in a grid: the vocabulary is adapted once for the variants that share
    it, each cell trains the embeddings from the same start, its adapted base model is the row after its stage and
    the propagated model its result; the instruct model is evaluated once, beside the untouched model."""
    out = tmp_path / "grid"
    cmp.compare(_lep_grid(tiny_model_dir), out)
    cells = {v: json.loads((out / "data" / f"{v}-s0" / "results.json").read_text()) for v in ("lep_conv", "lep_swap")}
    for v, res in cells.items():
        assert set(res["evals"]) == {f"{v}-embeddings", v}
        assert res["vocab"]["new_tokens"] == 20 and res["vocab"]["init"]["set_to_mean"] == 20
        assert res["propagation"]["vocab_size"] == res["vocab"]["vocab_after"]
        assert not (out / "data" / f"{v}-s0" / "propagated").exists()  # whole models only with keep_checkpoints
    assert cells["lep_conv"]["propagation"]["mode"] == "conversion" and cells["lep_swap"]["propagation"]["mode"] == "swap"
    # the same vocabulary, seed and batches: the adapted base models are the same model, scored the same
    scored = [{t: {k: v for k, v in r.items() if k != "seconds"} for t, r in cells[v]["evals"][f"{v}-embeddings"].items()}
              for v in ("lep_conv", "lep_swap")]
    assert scored[0] == scored[1]
    assert cells["lep_conv"]["vocab"] == cells["lep_swap"]["vocab"]
    lora = json.loads((out / "data" / "lora-s0" / "results.json").read_text())
    assert "vocab" not in lora and "propagation" not in lora  # the other cells keep the model's own vocabulary
    instruct = json.loads((out / "data" / "instruct" / "results.json").read_text())
    assert instruct["complete"] and set(instruct["evals"]) == {"instruct"}
    rows = [line.split(" | ")[0] for line in (out / "report.md").read_text().splitlines() if line.startswith("| ")]
    assert rows[:7] == ["| method", "| untouched", "| instruct", "| lora", "| lep_conv-embeddings", "| lep_conv",
                        "| lep_swap-embeddings"]


def test_lep_variants_propagating_into_different_instruct_models_are_refused(tiny_model_dir, tmp_path):
    import shutil

    from lingotune.recipe import RecipeError

    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    with pytest.raises(RecipeError, match="propagate into different instruct models"):
        cmp.compare(_lep_grid(tiny_model_dir, instruct_b=other), tmp_path / "grid")
    assert not (tmp_path / "grid").exists()


def test_lep_variants_that_differ_only_in_propagation_train_once_and_give_the_model_training_alone_gives(
        tiny_model_dir, tmp_path):
    """lep_conv and lep_swap have the same vocabulary, seed and training: the grid trains the embeddings once and
    the second cell propagates the first's weights; its propagated model is bit-identical to the one a grid with
    that cell alone trains and propagates, and its record says where its training came from."""
    from safetensors.torch import load_file

    out, alone = tmp_path / "grid", tmp_path / "alone"
    cmp.compare(_lep_grid(tiny_model_dir, **{"compare.methods": ["lep_conv", "lep_swap"],
                                             "compare.keep_checkpoints": True}), out)
    cmp.compare(_lep_grid(tiny_model_dir, **{"compare.methods": ["lep_swap"], "compare.keep_checkpoints": True}),
                alone)
    conv, swap = (json.loads((out / "data" / f"{v}-s0" / "results.json").read_text()) for v in ("lep_conv", "lep_swap"))
    solo = json.loads((alone / "data" / "lep_swap-s0" / "results.json").read_text())
    assert not any("shared_from" in r["stages"]["embeddings"] for r in (conv, solo))
    assert swap["stages"]["embeddings"]["shared_from"] == "lep_conv-s0"
    assert "- `lep_swap-s0` took `embeddings` from `lep_conv-s0`" in (out / "report.md").read_text()
    drop = ("shared_from", "artefacts")  # the training record, seconds included: it ran once
    assert {k: v for k, v in swap["stages"]["embeddings"].items() if k not in drop} == {
        k: v for k, v in conv["stages"]["embeddings"].items() if k not in drop}
    assert (out / "data" / "lep_swap-s0" / "metrics.jsonl").read_text() == (
        out / "data" / "lep_conv-s0" / "metrics.jsonl").read_text()
    assert [swap["stages"]["embeddings"][k] for k in ("first_loss", "final_loss", "tokens")] == [
        solo["stages"]["embeddings"][k] for k in ("first_loss", "final_loss", "tokens")]
    assert (out / "data" / "lep_swap-s0" / "eval" / "lep_swap-embeddings").is_dir()
    shared_w = load_file(out / "data" / "lep_swap-s0" / "propagated" / "model.safetensors")
    solo_w = load_file(alone / "data" / "lep_swap-s0" / "propagated" / "model.safetensors")
    assert shared_w.keys() == solo_w.keys()
    for name in solo_w:
        assert torch.equal(shared_w[name], solo_w[name]), name
    for task, scores in solo["evals"]["lep_swap"].items():
        assert {k: v for k, v in swap["evals"]["lep_swap"][task].items() if k != "seconds"} == {
            k: v for k, v in scores.items() if k != "seconds"}


def test_shared_stages_never_copy_from_or_remove_outside_a_cell(tmp_path):
    """A finished cell's results.json names its method and stages; names that would lead outside the cell are not
    followed: no stage is taken from there and no checkpoint removed there."""
    outside = tmp_path / "mine" / "checkpoint"
    outside.mkdir(parents=True)
    data = tmp_path / "grid" / "data"
    cell = data / "lora-s0"
    (cell / "lora" / "train" / "checkpoint").mkdir(parents=True)
    stages = {"train": {"complete": True, "share_key": "k"}, "../../../../mine": {"complete": True, "share_key": "k"}}
    (cell / "results.json").write_text(json.dumps({"complete": True, "method": "lora", "stages": stages}))
    assert cmp._stage_dir(cell, {"method": "lora"}, "train") == cell / "lora" / "train"
    assert cmp._stage_dir(cell, {"method": "../.."}, "mine") is None
    assert not cmp._donated({"method": "..", "stages": stages}, cell, "train", "k")
    cmp.SharedStages(data, [], keep_checkpoints=False).finished([])
    assert outside.is_dir()  # the stage name pointing outside was not followed
    assert not (cell / "lora" / "train" / "checkpoint").exists()  # the cell's own, no longer needed: removed


def test_a_grids_record_has_no_weights_or_data_text_and_resumes_elsewhere(tiny_model_dir, tmp_path, monkeypatch):
    """A grid run in parts on machines that keep no files: the record (kept in git) copied back as the grid
    continues it; finished cells are read, not retrained, and the paired tests still see every example."""
    from helpers import make_recipe

    from lingotune import rundir

    settings = {"model.source": str(tiny_model_dir), "data.max_stage1": 8, "data.max_stage2": 4,
                "method.stage1.steps": 1, "method.stage2.steps": 1, "train.max_len": 64, "train.batch_size": 2,
                "eval.tasks": ["starter_heldout"], "eval.limit": 4, "eval.n_bootstrap": 0, "output.sample_prompts": 1,
                "compare.methods": ["lora", "dpart"], "compare.seeds": [0]}
    whole = cmp.compare(make_recipe(**{**settings, "compare.seeds": [0, 1]}), tmp_path / "whole")
    grid = tmp_path / "grid"
    cmp.compare(make_recipe(**settings), grid)
    cut = grid / "data" / "dpart-s1"  # a cell cut while training: its log, recipe and checkpoint only
    (cut / "dpart" / "stage1" / "checkpoint").mkdir(parents=True)
    (cut / "dpart" / "stage1" / "checkpoint" / "state.safetensors").write_bytes(b"0")
    (cut / "metrics.jsonl").write_text('{"stage": "stage1", "step": 1, "loss": 9.0}\n')
    shutil.copy2(grid / "data" / "dpart-s0" / "recipe.yaml", cut / "recipe.yaml")
    rec = cmp.record(grid, tmp_path / "rec")
    kept = {p.relative_to(rec).as_posix() for p in rec.rglob("*") if p.is_file()}
    assert not [k for k in kept if Path(k).suffix in cmp.WEIGHTS or "/adapter/" in k or "/stage1/" in k]
    assert {"data/lora-s0/results.json", "data/dpart-s0/metrics.jsonl", "data/untouched/results.json",
            "summary.json", "recipe.yaml", rundir.MARKER, cmp.RECORD} <= kept
    assert not [k for k in kept if k.startswith("data/data/") and k.endswith(".jsonl")]  # the training sets
    assert not [k for k in kept if k.startswith("data/dpart-s1/")]  # it trains again from the start
    for line in (rec / "data/lora-s0/eval/lora/starter_heldout.jsonl").read_text().splitlines():
        rec_line = json.loads(line)
        assert "id" in rec_line and not [v for k, v in rec_line.items() if isinstance(v, str) and k != "id"]
    assert (rec / "data/dpart-s0/metrics.jsonl").read_text() == (grid / "data/dpart-s0/metrics.jsonl").read_text()
    for cell in ("untouched", "lora-s0"):  # the sample answers stay, their prompts (evaluation data) do not
        samples = json.loads((rec / "data" / cell / "results.json").read_text())["samples"]
        original = json.loads((grid / "data" / cell / "results.json").read_text())["samples"]
        assert original and original[0]["prompt"] and samples == [{k: v for k, v in s.items() if k != "prompt"}
                                                                   for s in original]

    moved = tmp_path / "elsewhere"  # the next machine: the record copied back, the grid resumed with a new seed
    shutil.copytree(rec, moved)
    calls = []
    real = cmp.train_method
    monkeypatch.setattr(cmp, "train_method", lambda model, tok, r, *a, **kw: calls.append((r.method.name, r.seed))
                        or real(model, tok, r, *a, **kw))
    summary = cmp.compare(make_recipe(**{**settings, "compare.seeds": [0, 1]}), moved, resume=True)
    assert calls == [("lora", 1), ("dpart", 1)]
    sig, sig_whole = summary["significance"]["data"], whole["significance"]["data"]
    assert sig["starter_heldout/accuracy"]["pairs"] == sig_whole["starter_heldout/accuracy"]["pairs"] > 0
    assert json.loads((moved / "data/lora-s0/results.json").read_text())["evals"] == \
        json.loads((grid / "data/lora-s0/results.json").read_text())["evals"]

    cmp.record(moved, rec)  # an earlier record is replaced; a grid, a folder of the user's, or the grid itself never
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    for bad in (tmp_path / "mine", grid, moved, moved / "rec", tmp_path):
        with pytest.raises(rundir.RunDirError):
            cmp.record(moved, bad)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep" and (grid / "data/lora-s0/results.json").exists()


def test_a_commit_made_while_a_grid_runs_does_not_relabel_its_results(monkeypatch):
    """The commit a process records is the one its code was loaded from: read at the first result, then kept."""
    import subprocess

    from lingotune import train

    heads = iter(["aaaaaaaaaaaa\n", "", "bbbbbbbbbbbb\n", ""])  # rev-parse, then status --porcelain (clean), twice

    def fake_run(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 0, stdout=next(heads), stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    train.source_commit.cache_clear()
    try:
        first = train.environment()["commit"]
        later = train.environment()["commit"]  # after a commit in the checkout
    finally:
        train.source_commit.cache_clear()
    assert first == later == "aaaaaaaaaaaa"


def test_a_secondary_metric_declared_compare_is_tested_over_seeds(tmp_path):
    """The probe's transfer_excess (declared `compare: true`) gets a significance row of its own, over seeds;
    gain_other (declared, not compared) does not."""
    from helpers import make_recipe

    from lingotune.compare_report import summarize

    out = tmp_path / "grid"
    for (method, seed), (tr, ex) in {("lora", 0): (10.0, -5.0), ("lora", 1): (20.0, 1.0),
                                     ("dpart", 0): (12.0, 3.0), ("dpart", 1): (18.0, 5.0)}.items():
        _cell(out, method, seed, {"probe": ("transfer_facts_ll", {"transfer": tr, "transfer_gain": tr - 10,
                                                                  "gain_other": 1.0, "transfer_excess": ex})})
    _cell(out, "untouched", 0, {"probe": ("transfer_facts_ll", {"transfer": 10.0})})
    recipe = make_recipe(**{"compare.methods": ["lora", "dpart"], "compare.seeds": [0, 1]})
    sig = summarize(out, recipe)["significance"]["data"]
    # (transfer, the primary, is paired per example from files these cells lack: no row here)
    assert set(sig) == {"probe/transfer_excess"}
    ex = sig["probe/transfer_excess"]  # deltas +8 and +4: t = 6 / (2.828 / sqrt 2) = 3 on 1 df
    assert ex["delta"] == pytest.approx(6.0) and ex["test"] == "t" and ex["p_seeds"] == pytest.approx(0.2048, abs=1e-3)
    assert ex["better"] == "dpart"


def test_more_pairs_are_tested_as_the_first_and_reported_each_in_its_table(tmp_path):
    """compare.also: [[dpart_together, dpart], [dpart_all, lora_all]]: each pair's deltas over the seeds both ran,
    in the summary and as its own table in the report; a pair with no common seed gives no table."""
    from helpers import make_recipe

    from lingotune.compare_report import summarize

    out = tmp_path / "grid"
    bpc = {("lora", 0): 3.0, ("lora", 1): 3.2, ("dpart", 0): 2.9, ("dpart", 1): 3.0,
           ("dpart_together", 0): 2.8, ("dpart_together", 1): 3.0, ("dpart_together", 2): 9.9, ("lora_all", 5): 1.0}
    for (method, seed), v in bpc.items():
        _cell(out, method, seed, {"flores_ru_bpc": ("flores_ru_bpc", {"bits_per_char": v})})
    _cell(out, "untouched", 0, {"flores_ru_bpc": ("flores_ru_bpc", {"bits_per_char": 3.5})})
    recipe = make_recipe(**{"compare.methods": ["lora", "dpart"], "compare.seeds": [0, 1],
                            "compare.also": [["dpart_together", "dpart"], ["dpart_all", "lora_all"]]})
    summary = summarize(out, recipe)
    first = summary["significance"]["data"]["flores_ru_bpc/bits_per_char"]
    assert first["delta"] == pytest.approx(-0.15) and first["better"] == "dpart"
    also = summary["significance_also"]
    tog = also["dpart_together vs dpart"]["data"]["flores_ru_bpc/bits_per_char"]  # seeds 0, 1 only: -0.1, 0.0
    assert tog["delta"] == pytest.approx(-0.05) and tog["seeds"] == 2 and tog["better"] == "dpart_together"
    assert also["dpart_all vs lora_all"]["data"] == {}
    report = (out / "report.md").read_text()
    assert "### dpart vs lora" in report and "### dpart_together vs dpart" in report
    assert "### dpart_all vs lora_all" not in report


def test_a_pair_naming_no_method_is_a_one_line_recipe_error():
    from helpers import make_recipe

    from lingotune.recipe import RecipeError

    with pytest.raises(RecipeError, match="compare: 'dpart_tgether' is neither a method") as e:
        make_recipe(**{"compare.also": [["dpart_tgether", "dpart"]]})
    assert "\n" not in str(e.value)
    with pytest.raises(RecipeError, match="compare.also"):
        make_recipe(**{"compare.also": [["dpart", "lora", "full"]]})
