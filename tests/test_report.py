"""report.md and report.html of one run: plots, labelled held-out samples, the self-contained page."""

from __future__ import annotations

import base64
import json
import re
from html import escape

import pytest
from rich.console import Console

from lingotune.report import eval_panels, md_text, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def _results(**over) -> dict:
    acc = {"accuracy": {"primary": True, "higher_is_better": True}}
    res = {
        "recipe": "default", "model": "bundled", "language": "ru", "method": "dpart", "seed": 0,
        "stages": {"stage1": {"trains": "embeddings", "data": ["stage1"], "steps": 3, "first_loss": 3.0, "final_loss": 2.0},
                   "stage2": {"trains": "lora", "data": ["stage2"], "steps": 2, "first_loss": 2.5, "final_loss": 2.1}},
        "evals": {
            "untouched": {"qa": {"accuracy": 50.0, "ci": {"accuracy": [40.0, 61.0]}, "n": 10, "metrics": acc},
                          "gone": {"ci": {}, "n": 0, "skipped": "nothing here"}},
            "dpart": {"qa": {"accuracy": 70.0, "ci": {"accuracy": [65.0, 80.0]}, "n": 10, "metrics": acc},
                      "gone": {"ci": {}, "n": 0, "skipped": "nothing here"}},
        },
        "samples": [
            {"prompt": "Москва — столица России? Ответь да или нет.", "source": "qa, example 7",
             "untouched": "Yes.", "dpart": "Да."},
            {"prompt": "Line one\n\n### not a heading\n1. not a list", "source": "recipe samples",
             "untouched": "![x](http://evil.example/a.png) <script>alert(1)</script> [l](https://evil.example)",
             "dpart": ""},
        ],
    }
    res.update(over)
    return res


def _run_dir(tmp_path, results: dict, log: bool = True):
    d = tmp_path / "run"
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps(results, ensure_ascii=False))
    if log:
        lines = [{"method": "dpart", "stage": "stage1", "step": s, "loss": 3.0 - 0.5 * s} for s in (1, 2, 3)]
        lines += [{"method": "dpart", "stage": "stage2", "step": s, "loss": 2.5 - 0.2 * s} for s in (1, 2)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"torn')
    return d


def test_report_plots_exist_are_referenced_and_inlined_in_a_self_contained_page(tmp_path):
    d = _run_dir(tmp_path, _results())
    write_report(d, html=True)
    md = (d / "report.md").read_text()
    for name in ("report_loss_stage1.png", "report_loss_stage2.png", "report_eval.png"):
        assert (d / name).read_bytes().startswith(PNG)
        assert f"]({name})" in md
    page = (d / "report.html").read_text()
    # no request leaves the page: no URL in any attribute or style, and the policy forbids any
    refs = re.findall(r"""(?:src|href|action|poster|srcset)\s*=\s*["']?([^"'\s>]+)""", page, flags=re.I)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs)
    assert not re.search(r"url\(|@import|<link|<script", page, flags=re.I)
    assert "default-src 'none'" in page
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3
    decoded = [base64.b64decode(x) for x in images]
    assert all(b.startswith(PNG) for b in decoded)
    assert decoded[0] == (d / "report_loss_stage1.png").read_bytes()
    # the model's markdown stays text: its image and link are shown, not fetched or followed
    assert "![x](http://evil.example/a.png)" in page.replace("&lt;", "<").replace("&gt;", ">")
    assert "&lt;script&gt;" in page



def test_a_plot_named_after_a_task_with_plus_and_equals_is_inlined_and_no_path_is_followed(tmp_path):
    from lingotune.files import safe_name
    from lingotune.report import to_html

    task = safe_name("align+ru=2.v1", "task")  # a name safe_name lets through: it names the plot's file
    layers = {"cos_dist": [0.5, 0.4, 0.3], "cos_margin": [0.1, 0.2, 0.3]}
    evals = {label: {**res, task: {"layers": layers, "n": 3, "ci": {}}} for label, res in _results()["evals"].items()}
    d = _run_dir(tmp_path, _results(evals=evals))
    write_report(d, html=True)
    plot = d / f"report_layers_{task}.png"
    assert f"]({plot.name})" in (d / "report.md").read_text()
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', (d / "report.html").read_text())
    assert base64.b64encode(plot.read_bytes()).decode("ascii") in images and len(images) == 4
    # an image outside the run directory, or in a folder below it, stays text; a percent-encoded name is decoded
    (tmp_path / "outside.png").write_bytes(PNG)
    (d / "sub").mkdir()
    (d / "sub" / "x.png").write_bytes(PNG)
    (d / "график.png").write_bytes(PNG)
    page = to_html("![a](../outside.png) ![b](sub/x.png) ![c](%2E%2E%2Foutside.png) ![d](график.png)", d)
    assert page.count("<img ") == 1 and '<img src="data:image/png;base64,' in page and 'alt="d"' in page
    assert "</main>" in page and ">a b c <img" in page

def test_sample_answers_name_their_source(tmp_path):
    d = _run_dir(tmp_path, _results())
    write_report(d, html=True)
    md = (d / "report.md").read_text()
    assert "### 1. qa, example 7" in md and "### 2. recipe samples" in md
    assert md_text("starter_heldout, example 3") == "starter_heldout, example 3"  # plain where plain is safe
    assert "- *dpart*: Да." in md and "- *dpart*: (empty)" in md
    page = (d / "report.html").read_text()
    assert "<h3>1. qa, example 7</h3>" in page and "<h3>2. recipe samples</h3>" in page
    # a prompt's own markup is shown as written, line by line
    assert "<blockquote>\n<p>Line one<br />\n### not a heading<br />\n1. not a list</p>" in page


def test_old_samples_without_source_say_where_they_came_from(tmp_path):
    samples = [{"prompt": "Привет", "untouched": "Hi", "dpart": "Привет"}]
    d = _run_dir(tmp_path, _results(samples=samples))
    md = (write_report(d)).read_text()
    assert "### 1. source not recorded" in md and "took them from the stage-2 training prompts" in md
    assert "The prompts are held out" not in md


def test_no_loss_log_reports_without_loss_plots_and_says_why(tmp_path):
    d = _run_dir(tmp_path, _results(stages={}), log=False)  # an evaluation-only results.json
    md = write_report(d, html=True).with_name("report.md").read_text()
    assert "No stage was trained in this run, so there is no loss curve." in md
    assert not list(d.glob("report_loss_*.png")) and (d / "report_eval.png").exists()
    assert len(re.findall(r"<img ", (d / "report.html").read_text())) == 1

    d2 = _run_dir(tmp_path / "b", _results(), log=False)  # trained, but its log is gone
    md = write_report(d2).read_text()
    assert "No loss curve for stage1: the run directory has no metrics.jsonl" in md
    assert not list(d2.glob("report_loss_*.png"))

    skipped = {"untouched": {"gone": {"ci": {}, "n": 0, "skipped": "nothing here"}}}
    d3 = _run_dir(tmp_path / "c", _results(evals=skipped))
    md = write_report(d3).read_text()
    assert "No evaluation chart: no task has a score (each was skipped)." in md and not (d3 / "report_eval.png").exists()


def test_eval_panels_use_each_tasks_primary_metric_and_its_interval():
    panels = eval_panels(_results()["evals"])
    assert panels == [("qa: accuracy ↑", ["untouched", "dpart"], [50.0, 70.0], [(10.0, 11.0), (5.0, 10.0)])]
    no_ci = {"a": {"qa": {"accuracy": 5.0, "ci": {}, "metrics": {"accuracy": {"primary": True, "higher_is_better": True}}}},
             "b": {}}
    assert eval_panels(no_ci) == [("qa: accuracy ↑", ["a", "b"], [5.0, None], [(0.0, 0.0), (0.0, 0.0)])]


def test_md_text_shows_text_as_written():
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    for s in ["1. *a* _b_ [c](d) <e> # f | g & h \\ i `j` ~k~ !l", "- item", "# heading", "+ x", "= y", "2) z",
              "&amp; stays", "a | b\n|---|", "snake_case _x_ __y__ z_"]:
        assert md.render(md_text(s)) == "<p>" + escape(s, quote=False).replace("\n", "\n") + "</p>\n", s


def test_report_command_writes_html_and_refuses_a_directory_without_results(tmp_path):
    from typer.testing import CliRunner

    from lingotune.cli import app

    d = _run_dir(tmp_path, _results())
    r = CliRunner().invoke(app, ["report", str(d), "--html"])
    assert r.exit_code == 0, r.output
    assert (d / "report.html").exists() and (d / "report.md").exists()
    r = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "no results.json" in r.output


# ----------------------------------------------------------------------------- where the samples come from


QUESTIONS = ["Москва является столицей России и самым большим городом страны?",
             "Волга впадает в Каспийское море и считается самой длинной рекой Европы?",
             "Байкал является самым глубоким озером на всей нашей планете Земля?"]


def _recipe(tmp_path, leakage_check: bool, **more):
    from helpers import make_recipe

    (tmp_path / "qa.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "question": q, "label": "true"},
                                                          ensure_ascii=False) + "\n" for i, q in enumerate(QUESTIONS)))
    (tmp_path / "qa.yaml").write_text(
        f"name: qa\nlang: ru\nkind: yesno\nformat: jsonl\nfile: {tmp_path / 'qa.jsonl'}\nprompts: ['{{question}}']\n"
        "label_field: label\nlabels: {'true': 'yes', 'false': 'no'}\n")
    train = [{"instruction": QUESTIONS[0], "output": "Да, это так."}]  # an evaluation question in the training data
    train += [{"instruction": f"Сколько будет {i} плюс {i} в десятичной системе?", "output": f"Будет {2 * i}."}
              for i in range(6)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in train))
    return make_recipe(**{
        "data.sources": [{"format": "alpaca", "path": str(tmp_path / "train.jsonl"), "lang": "ru"}],
        "data.checks.leakage_check": leakage_check,
        "eval.tasks": [str(tmp_path / "qa.yaml"), "flores_ru_bpc"],  # a perplexity task asks nothing
        "output.sample_prompts": 3, **more})


def test_default_samples_are_evaluation_questions_that_no_training_text_contains(tmp_path):
    from lingotune.data.validate import LeakageIndex
    from lingotune.run import build_data, sample_prompts

    recipe = _recipe(tmp_path, leakage_check=False)
    built = build_data(recipe, Console(quiet=True))
    assert any(m["content"] == QUESTIONS[0] for ex in built.stage2 for m in ex.messages)  # kept: the check is off
    got = sample_prompts(recipe, built)
    assert got == [{"prompt": QUESTIONS[1], "source": "qa, example q1"},
                   {"prompt": QUESTIONS[2], "source": "qa, example q2"}]
    index = LeakageIndex([g["prompt"] for g in got], n=recipe.data.checks.leakage_ngram)
    assert not any(index.leaks(t) for t in built.texts())

    recipe = _recipe(tmp_path, leakage_check=True)  # the build drops the leaked record: the question is held out
    built = build_data(recipe, Console(quiet=True))
    assert built.report["leakage_dropped"] == 1
    assert [g["source"] for g in sample_prompts(recipe, built)] == ["qa, example q0", "qa, example q1", "qa, example q2"]


def test_recipe_samples_replace_the_questions_and_are_labelled(tmp_path):
    from lingotune.recipe import RecipeError
    from lingotune.run import build_data, sample_prompts

    recipe = _recipe(tmp_path, leakage_check=True, **{"output.samples": ["Расскажи о себе."]})
    built = build_data(recipe, Console(quiet=True))
    assert sample_prompts(recipe, built) == [{"prompt": "Расскажи о себе.", "source": "recipe samples"}]
    with pytest.raises(RecipeError, match="output.samples.*entry 0 is blank"):
        _recipe(tmp_path, leakage_check=True, **{"output.samples": [" "]})


def test_starter_samples_are_not_refused_for_the_template_words_they_share_with_training(tmp_path):
    """The starter data's training questions share the held-out questions' template ("... находится в этой
    стране? Ответь да или нет."); only the examples' own texts count, as in the build's leakage check."""
    from helpers import make_recipe
    from lingotune.data.validate import LeakageIndex
    from lingotune.run import build_data, sample_prompts

    recipe = make_recipe(**{"eval.tasks": ["starter_heldout"], "output.sample_prompts": 2,
                            "data.checks.leakage_check": False})
    built = build_data(recipe, Console(quiet=True))
    got = sample_prompts(recipe, built)
    assert [g["source"] for g in got] == ["starter_heldout, example starter-yesno-ru-0",
                                          "starter_heldout, example starter-yesno-ru-1"]
    assert any(LeakageIndex([got[0]["prompt"]]).leaks(t) for t in built.texts())  # the template alone would refuse it
