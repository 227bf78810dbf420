"""Copy tasks (Darumeru's cp_sent / cp_para): the metrics, the paragraphs, a run with scripted replies, the task files."""

from __future__ import annotations

import json
import random

import pytest

from lingotune import inference
from lingotune.data.records import DataError
from lingotune.eval import EvalConfig, builtin_tasks, evaluate, load_task
from lingotune.eval.copy import build_messages, score
from lingotune.eval.metrics import lcs_length, lcs_match, length_ratio
from lingotune.eval.tasks import group_lines, load_examples
from lingotune.files import FileFormatError
from lingotune.languages import get_language
from test_eval_run import tiny_tokenizer

TEXT_200 = ("The quick brown fox jumps over the lazy dog while the five boxing wizards jump quickly; "
            "meanwhile a sphinx of black quartz judges my vow, and pack my box with five dozen liquor jugs now!! Jazz fixed!!")
COPY_TASKS = {f"cp_{kind}_{lang}": kind for kind in ("sent", "para") for lang in ("ru", "en", "ar", "ko")}


def test_metrics_on_known_inputs():
    assert len(TEXT_200) == 200
    assert score(TEXT_200, TEXT_200) == {"len": 1.0, "lcs": 1}
    assert score(TEXT_200, "\n  " + TEXT_200 + " \n") == {"len": 1.0, "lcs": 1}  # surrounding whitespace stripped
    assert score(TEXT_200, TEXT_200[100:]) == {"len": 0.5, "lcs": 0}  # half the text
    assert score(TEXT_200[100:], TEXT_200) == {"len": 0.5, "lcs": 0}  # a reply twice as long
    changed = TEXT_200[:50] + "Z" + TEXT_200[51:]
    assert lcs_length(TEXT_200, changed) == 199 and score(TEXT_200, changed) == {"len": 1.0, "lcs": 1}
    assert score(TEXT_200, "") == {"len": 0.0, "lcs": 0} and score(TEXT_200, " \n ") == {"len": 0.0, "lcs": 0}


def test_lcs_threshold_is_99_percent_of_the_longer_side():
    src = TEXT_200[100:]
    one, two = "#" + src[1:], "#" + src[1:50] + "#" + src[51:]
    assert lcs_length(src, one) == 99 and lcs_match(src, one) == 1  # exactly 99%: a pass
    assert lcs_length(src, two) == 98 and lcs_match(src, two) == 0
    assert lcs_match(src, src + "!") == 1 and lcs_match(src, src + "!!") == 0  # 100/101 passes, 100/102 fails
    assert lcs_match(src, src + " Hope this helps!") == 0  # the whole source plus chatter
    assert lcs_match(src, src[:-2]) == 0 and length_ratio("", "abc") == 0.0 and lcs_match("", "") == 0


def _lcs_table(a: str, b: str) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        prev, row = row, [0]
        for j, y in enumerate(b):
            row.append(prev[j] + 1 if x == y else max(prev[j + 1], row[j]))
    return row[-1]


def test_bit_parallel_lcs_equals_the_textbook_table():
    assert lcs_length("ABCBDAB", "BDCABA") == 4 and lcs_length("", "abc") == 0 and lcs_length("abc", "") == 0
    rng = random.Random(0)
    for _ in range(200):
        a = "".join(rng.choice("abcд ") for _ in range(rng.randint(0, 40)))
        b = "".join(rng.choice("abcд ") for _ in range(rng.randint(0, 40)))
        assert lcs_length(a, b) == _lcs_table(a, b) == lcs_length(b, a)


def test_paragraphs_are_consecutive_lines_complete_and_deterministic():
    lines = [f"s{i}." for i in range(1, 13)]
    paras = group_lines(lines, 5)
    assert paras == ["s1. s2. s3. s4. s5.", "s6. s7. s8. s9. s10.", "s11. s12."]
    assert " ".join(paras).split(" ") == lines and group_lines(lines, 5) == paras
    assert group_lines([" a ", "", "b", "  ", "c"], 2) == ["a b", "c"]  # blank lines dropped, lines stripped
    assert group_lines(["a", "", "b"], None) == ["a", "", "b"]


def _write_task(root, group: int | None = None):
    (root / "text.txt").write_text("the cat sat.\nhello world.\nabc def ghi.\nno reply here.\nlast one.\n")
    task = root / "cp.yaml"
    extra = f"group_lines: {group}\n" if group else ""
    task.write_text("name: cp\nkind: copy\nformat: lines\nfile: text.txt\n" + extra)
    return task


def test_copy_run_scores_scripted_replies(tiny_llama, monkeypatch, tmp_path):
    task = _write_task(tmp_path)
    replies = iter(["  the cat sat.\n", "hello", "abc def ghi. Done!", "", "last one."])
    seen = {}

    def fake_generate(model, tok, prompts, max_new_tokens, batch_size=8, stop="eos", desc=""):
        seen.update(budgets=max_new_tokens, stop=stop, prompts=[tok.decode(p, skip_special_tokens=True) for p in prompts])
        return [next(replies) for _ in prompts]

    monkeypatch.setattr(inference, "generate", fake_generate)
    cfg = EvalConfig(tasks=[str(task)], n_bootstrap=50, data_root=str(tmp_path), copy_max_new_tokens=40)
    res = evaluate(tiny_llama, tiny_tokenizer(), cfg, out_dir=tmp_path / "out", label="tiny", lang="en")["cp"]
    # len: 1, 5/12, 12/18, 0, 1; lcs: 1, 0, 0 (12/18 < 99%), 0, 1
    assert res["len"] == pytest.approx(100 * (2 + 5 / 12 + 12 / 18) / 5, abs=1e-3)
    assert res["lcs"] == pytest.approx(40.0) and res["n"] == 5 and res["kind"] == "copy" and res["lang"] == "en"
    assert res["ci"]["lcs"][0] <= res["lcs"] <= res["ci"]["lcs"][1]
    assert res["metrics"]["lcs"] == {"metric": "lcs", "primary": True, "higher_is_better": True, "shots": 0,
                                     "per_example": "lcs"}
    assert res["metrics"]["len"]["per_example"] is None and not res["metrics"]["len"]["primary"]
    # character-level tokenizer: 2 x source characters + 16, capped at 40
    assert seen["budgets"] == [40, 40, 40, 40, 34] and seen["stop"] == "eos"
    assert seen["prompts"][1].startswith("user\n" + get_language("en").copy_instruction)  # "\n\n" is not in its vocabulary
    assert seen["prompts"][1].endswith("hello world.\nassistant\n")
    recs = [json.loads(line) for line in (tmp_path / "out" / "tiny" / "cp.jsonl").read_text().splitlines()]
    assert recs[2] == {"id": 2, "prompt": get_language("en").copy_instruction + "\n\nabc def ghi.",
                       "source": "abc def ghi.", "output": "abc def ghi. Done!", "len": 0.6667, "lcs": 0,
                       "max_new_tokens": 40}
    assert [r["lcs"] for r in recs] == [1, 0, 0, 0, 1] and recs[0]["output"] == "  the cat sat.\n"


def test_copy_run_on_paragraphs_in_the_task_language(tiny_llama, monkeypatch, tmp_path):
    task = _write_task(tmp_path, group=2)
    monkeypatch.setattr(inference, "generate", lambda model, tok, prompts, *a, **k: ["the cat sat. hello world."] * len(prompts))
    cfg = EvalConfig(tasks=[str(task)], n_bootstrap=0, data_root=str(tmp_path))
    res = evaluate(tiny_llama, tiny_tokenizer(), cfg, out_dir=tmp_path / "out", label="m", lang="ru")["cp"]
    assert res["n"] == 3 and res["lcs"] == pytest.approx(100 / 3, abs=1e-3) and res["ci"] == {"len": None, "lcs": None}
    recs = [json.loads(line) for line in (tmp_path / "out" / "m" / "cp.jsonl").read_text().splitlines()]
    assert [r["source"] for r in recs] == ["the cat sat. hello world.", "abc def ghi. no reply here.", "last one."]
    assert recs[0]["prompt"].startswith("Повтори текст ниже в точности")  # the run's language: null task lang


def test_copy_rows_need_text(tmp_path):
    spec = load_task(str(_write_task(tmp_path)))
    with pytest.raises(DataError, match="task cp: example 7 has no text to copy"):
        build_messages(spec, {"id": 7, "text": "  "}, "en")
    with pytest.raises(DataError, match="task cp: example 1 has no 'text' field \\(fields: id, q\\)"):
        build_messages(spec, {"id": 1, "q": "x"}, "en")


def test_builtin_copy_tasks_load_and_validate():
    assert set(COPY_TASKS) <= set(builtin_tasks())
    for name, kind in COPY_TASKS.items():
        spec = load_task(name)
        assert spec.kind == "copy" and spec.format == "lines" and spec.lang == name[-2:]
        assert spec.group_lines == (5 if kind == "para" else None)
        assert spec.file == f"flores200/devtest/{get_language(spec.lang).flores}.devtest"
        assert [(m.name, m.primary, m.higher_is_better) for m in spec.metrics] == [("lcs", True, True), ("len", False, True)]
        assert get_language(spec.lang).copy_instruction


@pytest.mark.parametrize("extra,message", [
    ("format: jsonl\nfile: a.jsonl\ngroup_lines: 5\n", "'group_lines' needs format 'lines', not 'jsonl'"),
    ("format: lines\nfile: a.txt\ngroup_lines: 1\n", "field 'group_lines': Input should be greater than or equal to 2"),
    ("format: lines\nfile: a.txt\nmetrics: [{name: accuracy, primary: true}]\n",
     "field 'metrics': 'accuracy' is not a metric of kind 'copy' (it has len, lcs;"),
    ("format: lines\nfile: a.txt\nmetrics: [{name: len, primary: true, higher_is_better: false}]\n",
     "field 'metrics': len: higher_is_better must be true"),
])
def test_bad_copy_task_files_are_one_line(tmp_path, extra, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nkind: copy\n" + extra)
    with pytest.raises(FileFormatError) as e:
        load_task(str(bad))
    assert message in str(e.value) and str(e.value).startswith(str(bad)) and "\n" not in str(e.value)


@pytest.mark.shared_data
def test_builtin_copy_tasks_read_flores(shared_data):
    for name, kind in COPY_TASKS.items():
        spec = load_task(name)
        lines = (shared_data / spec.file).read_text(encoding="utf-8").splitlines()
        examples = load_examples(spec, shared_data, spec.lang)
        assert len(lines) == 1012 and len(examples) == (1012 if kind == "sent" else 203)
        assert [e["id"] for e in examples] == list(range(len(examples)))
        if kind == "para":  # 202 paragraphs of 5 lines and one of 2, every line once, in order
            assert examples[0]["text"] == " ".join(t.strip() for t in lines[:5])
            assert examples[-1]["text"] == " ".join(t.strip() for t in lines[1010:])
            assert " ".join(e["text"] for e in examples) == " ".join(t.strip() for t in lines)
        else:
            assert [e["text"] for e in examples] == lines
