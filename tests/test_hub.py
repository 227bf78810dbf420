"""Hub datasets wherever a local file works, offline: datasets written in the hub's layout on disk (a README with
`configs:` and parquet files per config and split), read by `datasets.load_dataset(<dir>, config, split=)`
through the same code path as a hub id. Covers evaluation tasks (yes/no with k-shot, parallel from two configs,
lines), a stage-2 source, a paired source from two configs, `data translate`, a missing `datasets`, an
unreachable hub (the run finishes and reports every skipped task with its whole reason) and whole reasons in
the reports."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("datasets")

from lingotune.data.records import DataError  # noqa: E402
from lingotune.eval.tasks import load_demos, load_examples, load_task  # noqa: E402
from lingotune.hub import HubError, HubSpec  # noqa: E402


def write_hub(root: Path, configs: dict[str, dict[str, list[dict]]], features=None) -> Path:
    """A dataset in the hub's layout: <root>/<config>/<split>-00000-of-00001.parquet and a README declaring them."""
    from datasets import Dataset

    card = ["---", "configs:"]
    for cfg, splits in configs.items():
        card += [f"- config_name: {cfg}", "  data_files:"]
        for split, rows in splits.items():
            f = root / cfg / f"{split}-00000-of-00001.parquet"
            f.parent.mkdir(parents=True, exist_ok=True)
            Dataset.from_list(rows, features=features).to_parquet(str(f))
            card += [f"  - split: {split}", f"    path: {cfg}/{split}-*"]
    (root / "README.md").write_text("\n".join(card + ["---", ""]))
    return root


DANET = [{"idx": i, "question": f"Вопрос номер {i}?", "passage": f"Текст {i}.", "label": i % 3 == 0} for i in range(6)]


def danetqa_hub(tmp_path: Path) -> Path:
    """DaNetQA's rows as the hub converter stores them: label a ClassLabel False/True, here with 'passage' renamed."""
    from datasets import ClassLabel, Features, Value

    feats = Features({"idx": Value("int32"), "question": Value("string"), "text": Value("string"),
                      "label": ClassLabel(names=["False", "True"])})
    rows = [{"idx": r["idx"], "question": r["question"], "text": r["passage"], "label": int(r["label"])} for r in DANET]
    return write_hub(tmp_path / "hub_danetqa", {"danetqa": {"validation": rows, "train": rows[:4]}}, feats)


def with_hub(task: str, **hub) -> "object":
    """A built-in task whose hub copy is a local folder (only the path differs from the shipped task)."""
    spec = load_task(task)
    update = {"hub": spec.hub.model_copy(update=hub)}
    if spec.target_hub is not None:
        update["target_hub"] = spec.target_hub.model_copy(update={"path": hub["path"]})
    return spec.model_copy(update=update)


def test_task_rows_from_the_hub_equal_rows_from_the_file(tmp_path):
    root = tmp_path / "root"
    (root / "russian_superglue" / "DaNetQA").mkdir(parents=True)
    (root / "russian_superglue" / "DaNetQA" / "val.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in DANET))
    spec = with_hub("danetqa", path=str(danetqa_hub(tmp_path)), revision=None, columns={"text": "passage"})
    keys = ("id", "question", "passage", "label")
    from_file = [tuple(r[k] for k in keys) for r in load_examples(spec, root, "ru")]
    from_hub = [tuple(r[k] for k in keys) for r in load_examples(spec, None, "ru")]  # no data root: the hub
    assert from_hub == from_file and [r[3] for r in from_hub] == ["yes", "no", "no", "yes", "no", "no"]
    demos = load_demos(spec, None, "ru")  # train_file absent: hub_train_split
    assert [d["passage"] for d in demos] == ["Текст 0.", "Текст 1.", "Текст 2.", "Текст 3."]


def test_parallel_task_from_two_configs_aligned_by_id(tmp_path):
    en = [{"id": i, "text": f"Sentence {i}."} for i in range(3)]
    ru = [{"id": i, "text": f"Предложение {i}."} for i in range(3)]
    path = write_hub(tmp_path / "flores", {"eng_Latn": {"devtest": en}, "rus_Cyrl": {"devtest": ru}})
    rows = load_examples(with_hub("flores_ru_to_en", path=str(path)), None, "ru")
    assert [(r["source"], r["target"], r["id"]) for r in rows] == [(f"Предложение {i}.", f"Sentence {i}.", i)
                                                                  for i in range(3)]
    bpc = load_examples(with_hub("flores_ru_bpc", path=str(path)), None, "ru")
    assert [r["text"] for r in bpc] == [r["text"] for r in ru]
    bad = write_hub(tmp_path / "flores_bad", {"eng_Latn": {"devtest": en}, "rus_Cyrl": {"devtest": ru[::-1]}})
    with pytest.raises(DataError, match=r"eng_Latn/devtest: row 1: field 'id' 0 differs from .*rus_Cyrl/devtest \(2\)"):
        load_examples(with_hub("flores_ru_to_en", path=str(bad)), None, "ru")


def test_unknown_column_is_one_line_naming_it(tmp_path):
    spec = with_hub("danetqa", path=str(danetqa_hub(tmp_path)), revision=None, columns={"passage_text": "passage"})
    with pytest.raises(FileNotFoundError, match="field 'columns'/'values' names 'passage_text'.*columns: idx"):
        load_examples(spec, None, "ru")


def test_missing_datasets_package_is_a_clear_reason_and_error(tmp_path, monkeypatch):
    from lingotune.data.build import build_datasets
    from lingotune.data.config import DataConfig

    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails even where datasets is installed
    spec = with_hub("terra", path=str(tmp_path / "nowhere"), revision=None)
    with pytest.raises(FileNotFoundError) as e:
        load_examples(spec, None, "ru")
    assert "no data root (set LINGOTUNE_DATA or --data-root)" in str(e.value)
    assert "needs the `datasets` package: pip install 'lingotune[datasets]'" in str(e.value)
    cfg = DataConfig(sources=[{"format": "hub", "hub": {"path": str(tmp_path / "nowhere")}}])
    with pytest.raises(DataError, match=r"data.sources\[0\] \(hub\): reading Hugging Face datasets needs the "
                                        r"`datasets` package: pip install 'lingotune\[datasets\]'"):
        build_datasets(cfg, "ru", 0)
    from typer import Exit

    from lingotune.errors import user_errors
    from lingotune.hub import load_rows

    with pytest.raises(Exit) as e:  # a HubError reaching a command is a user's error: one line, exit code 2
        user_errors(load_rows)(spec.hub)
    assert e.value.exit_code == 2


QA = [("Как называется столица Франции?", "Столица Франции называется Париж."),
      ("Сколько дней в неделе бывает?", "В неделе бывает семь дней подряд."),
      ("Какого цвета обычно небо днём?", "Днём небо обычно бывает голубого цвета.")]


def test_stage2_source_from_the_hub(tmp_path):
    from lingotune.data.build import build_datasets
    from lingotune.data.config import DataConfig

    rows = [{"id": f"q{i}", "question": q, "answer": a} for i, (q, a) in enumerate(QA)]
    path = write_hub(tmp_path / "alpaca_ru", {"default": {"train": rows}})
    cfg = DataConfig(sources=[{"format": "hub", "hub": {"path": str(path), "columns": {"question": "instruction",
                                                                                        "answer": "output"}}}],
                     checks={"leakage_check": False})
    built = build_datasets(cfg, "ru", 0)
    got = sorted((ex.messages[-2]["content"], ex.messages[-1]["content"]) for ex in built.stage2)
    assert got == sorted(QA) and built.stage1 == []
    assert built.report["sources"][0]["path"] == f"{path}/train"


def test_paired_source_from_two_configs_joined_on_id(tmp_path):
    from lingotune.data.build import build_datasets
    from lingotune.data.config import DataConfig

    en = [{"id": f"q{i}", "instruction": f"English question {i}?", "output": f"English answer {i}."} for i in range(3)]
    ru = [{"id": f"q{i}", "instruction": q, "output": a} for i, (q, a) in enumerate(QA)][::-1]  # another order
    path = write_hub(tmp_path / "parallel", {"en": {"train": en}, "ru": {"train": ru}})
    side = lambda cfg: {"path": str(path), "name": cfg}  # noqa: E731
    cfg = DataConfig(sources=[{"format": "paired", "en_hub": side("en"), "target_hub": side("ru"), "align": "id",
                               "use": "pairs"}], checks={"leakage_check": False})
    built = build_datasets(cfg, "ru", 0)
    report = built.report["sources"][0]
    assert report["pairs_read"] == 3 and report["pairs"] == 3 and report["path"] == f"{path}:ru/train"
    from lingotune.data import sources

    pairs = sources.read_paired(HubSpec(**side("en")), HubSpec(**side("ru")), "ru", align="id")
    assert sorted((e.id, e.prompt, t.prompt) for e, t in pairs) == [
        (f"q{i}", f"English question {i}?", QA[i][0]) for i in range(3)]
    odd = write_hub(tmp_path / "odd", {"en": {"train": en}, "ru": {"train": [{**ru[0], "id": "q9"}]}})
    with pytest.raises(DataError, match=r"hub:.*odd:ru/train:1: field 'id' 'q9' has no record in .*odd:en/train"):
        sources.read_paired(HubSpec(path=str(odd), name="en"), HubSpec(path=str(odd), name="ru"), "ru", align="id")


def test_translate_reads_a_hub_dataset(tmp_path):
    from test_data_translate import FakeServer, runner

    from lingotune.data.cli import app

    path = write_hub(tmp_path / "en", {"default": {"train": [{"id": "a", "question": "Say hi", "answer": "Hi"}]}})
    with FakeServer() as srv:
        r = runner.invoke(app, ["translate", "--hub", str(path), "--column", "question=instruction", "--column",
                                "answer=output", "--to", "ru", "--model", "m", "--base-url", srv.url, "--out",
                                str(tmp_path / "ru.jsonl"), "--cache-dir", str(tmp_path / "cache")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "ru.jsonl").read_text()) == {"id": "a", "prompt": "RU[SAY HI]", "completion": "RU[HI]"}
    r = runner.invoke(app, ["translate", "--hub", str(path), "--column", "question", "--to", "ru", "--model", "m",
                            "--out", str(tmp_path / "x.jsonl")])
    assert r.exit_code == 2 and "option '--column': 'question' is not HUB_NAME=FIELD" in r.output


LONG = ("russian_superglue/DaNetQA/val.jsonl: no data root (set LINGOTUNE_DATA or --data-root); hub dataset "
        "RussianNLP/russian_super_glue:danetqa/validation@refs/convert/parquet: the hub is unreachable | no network")


def test_reports_keep_whole_reasons(tmp_path):
    from lingotune.compare_report import skipped_md
    from lingotune.report import eval_table

    lines = eval_table({"untouched": {"danetqa": {"skipped": LONG, "n": 0, "ci": {}}}})
    assert lines[-1] == "| danetqa | skipped | " + LONG.replace("|", "\\|") + " |"
    cells = [{"_dataset": "d", "evals": {"lora": {"danetqa": {"skipped": LONG}}, "untouched": {"danetqa": {"skipped": LONG}}}}]
    assert skipped_md(cells, "d")[-1] == f"- `danetqa` (lora, untouched): {LONG}"


def no_data_root(monkeypatch, tmp_path):
    """No data root anywhere (no $LINGOTUNE_DATA, no ../shared/data beside the cwd or the checkout) and a hub that
    refuses connections (HF_ENDPOINT on a closed local port)."""
    import socket

    from lingotune import paths

    monkeypatch.delenv("LINGOTUNE_DATA", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(paths, "_CHECKOUT", tmp_path / "a" / "b")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")


def test_run_without_data_reports_each_skip_then_evaluates_on_a_local_hub_copy(tiny_model_dir, tmp_path, monkeypatch):
    """The done criterion in small: a run with no data root and no hub finishes, and its report names each
    skipped task with its whole reason and how to get the data; the same run with the tasks' hub copies in
    local folders evaluates on them."""
    import yaml
    from typer.testing import CliRunner

    from lingotune.cli import app

    no_data_root(monkeypatch, tmp_path)
    base = ["run", "--smoke", "--set", f"model.source={tiny_model_dir}", "--set", "train.max_len=64",
            "--set", "method.stage1.steps=1", "--set", "method.stage2.steps=1",
            "--set", "eval.n_bootstrap=0", "--set", "output.sample_prompts=1"]
    r = CliRunner().invoke(app, base + ["--out", str(tmp_path / "off")])
    assert r.exit_code == 0, r.output
    results = json.loads((tmp_path / "off" / "results.json").read_text())
    report = (tmp_path / "off" / "report.md").read_text()
    for label in ("untouched", "dpart"):
        danet, bpc = results["evals"][label]["danetqa"]["skipped"], results["evals"][label]["flores_ru_bpc"]["skipped"]
        assert danet.startswith("russian_superglue/DaNetQA/val.jsonl: no data root (set LINGOTUNE_DATA or --data-root); "
                                "hub dataset RussianNLP/russian_super_glue:danetqa/validation@refs/convert/parquet: "
                                "the hub is unreachable")
        assert "openlanguagedata/flores_plus:rus_Cyrl/devtest: the hub is unreachable" in bpc
        assert f"| {danet} |" in report and f"| {bpc} |" in report  # whole, in the table
        assert results["evals"][label]["starter_heldout"]["skipped"] is None
    # the same run, the tasks' hub copies in local folders (only the hub path differs from the shipped tasks)
    tasks = []
    rows = [{"id": i, "text": f"Это предложение номер {i}."} for i in range(4)]
    flores = write_hub(tmp_path / "flores_plus", {"rus_Cyrl": {"devtest": rows}})
    for name, path in (("danetqa", danetqa_hub(tmp_path)), ("flores_ru_bpc", flores)):
        doc = yaml.safe_load((Path(load_task.__code__.co_filename).parent / "tasks" / f"{name}.yaml").read_text())
        doc["hub"] = {**doc["hub"], "path": str(path), "revision": None, **({"columns": {"text": "passage"}}
                                                                              if name == "danetqa" else {})}
        tasks.append(tmp_path / f"{name}.yaml")
        tasks[-1].write_text(yaml.safe_dump(doc, allow_unicode=True))
    r = CliRunner().invoke(app, base + ["--out", str(tmp_path / "on"), "--set",
                                        f"eval.tasks=[starter_heldout, {tasks[1]}, {tasks[0]}]"])
    assert r.exit_code == 0, r.output
    evals = json.loads((tmp_path / "on" / "results.json").read_text())["evals"]
    for label in ("untouched", "dpart"):
        assert evals[label]["danetqa"]["skipped"] is None and evals[label]["danetqa"]["n"] == 4  # --smoke: limit 4
        assert evals[label]["flores_ru_bpc"]["skipped"] is None and evals[label]["flores_ru_bpc"]["n"] == 4


class Marker:
    """A value whose life a weak reference can watch (plain strings cannot be weakly referenced)."""


def fake_datasets(monkeypatch, rows=None, error=None) -> list:
    """`datasets` replaced by one whose load_dataset returns the rows `rows()` makes (or raises `error`); the list
    records its calls."""
    import types

    calls = []

    class Table(list):
        column_names = property(lambda self: list(self[0]))
        features = {}

    def load_dataset(path, name=None, split=None, revision=None):
        calls.append(path)
        if error:
            raise error
        return Table(rows())

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset,
                                                                      ClassLabel=type("ClassLabel", (), {})))
    return calls


def test_a_data_sources_rows_are_not_held_after_its_records_are_made(tmp_path, monkeypatch):
    """A hub data source is read once per data build and may be large: its rows must not stay alive in a cache for
    the rest of the process (through training)."""
    import gc
    import weakref

    from lingotune.data import formats

    made = weakref.WeakSet()

    def rows():
        made.add(marker := Marker())
        return [{"instruction": "Как дела?", "output": "Хорошо.", "extra": marker}]

    calls = fake_datasets(monkeypatch, rows)
    recs = formats.read_hub(HubSpec(path=str(tmp_path)), lang="ru")
    assert [(r.prompt, r.response) for r in recs] == [("Как дела?", "Хорошо.")] and len(calls) == 1
    gc.collect()
    assert len(made) == 0


def test_evaluation_rows_are_kept_and_a_failure_is_asked_once(tmp_path, monkeypatch):
    from lingotune.hub import load_rows

    calls = fake_datasets(monkeypatch, lambda: [{"id": 1, "text": "Привет."}])
    task = HubSpec(path=str(tmp_path / "task"))
    (tmp_path / "task").mkdir()
    first = load_rows(task, keep=True)
    first[0]["text"] = "changed by the caller"
    assert load_rows(task, keep=True) == [{"id": 1, "text": "Привет."}] and len(calls) == 1  # kept, a fresh copy
    calls = fake_datasets(monkeypatch, error=RuntimeError("401 Client Error: gated dataset\nmore lines"))
    gated = HubSpec(path=str(tmp_path / "gated"))
    (tmp_path / "gated").mkdir()
    for keep in (True, False, True):
        with pytest.raises(HubError) as e:
            load_rows(gated, keep=keep)
        assert str(e.value) == f"hub dataset {tmp_path}/gated/train: cannot load (401 Client Error: gated dataset)"
    assert len(calls) == 1  # remembered: the hub is not asked again
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # other settings: asked again
    with pytest.raises(HubError):
        load_rows(gated)
    assert len(calls) == 2
