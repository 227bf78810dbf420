"""Task files, prompt rendering against the papers' wording, label mapping, splits."""

from __future__ import annotations

from collections import Counter

import pytest

from lingotune.eval import EvalConfig, builtin_tasks, load_task
from lingotune.eval.multiple_choice import mc_choices, mc_context
from lingotune.eval.tasks import draw_demos
from lingotune.eval.tasks import carve_part, load_examples, render, select
from lingotune.eval.translation import build_messages as translation_messages
from lingotune.eval.translation import clean, instruction
from lingotune.eval.yesno import answer_word, build_messages, prompt_index
from lingotune.languages import parse_yes_no


def user(msgs):
    return msgs[-1]["content"]


def test_every_builtin_task_loads():
    names = builtin_tasks()
    for n in ["danetqa", "terra", "russe", "idat", "mq2q", "kobest_boolq", "kobest_copa", "kobest_hellaswag",
              "kobest_sentineg", "kobest_wic", "flores_ru_to_en", "flores_ko_from_en", "tatoeba_ar_to_en",
              "flores_ru_bpc", "starter_heldout"]:
        assert n in names
    for n in names:
        assert load_task(n).name == n


def test_danetqa_prompt_matches_paper():
    spec = load_task("danetqa")
    row = {"id": 0, "passage": "Марс — планета.", "question": "Есть ли вода на марсе?"}
    msgs = build_messages(spec, row, "ru")
    assert msgs == [{"role": "user", "content": "Марс — планета. Есть ли вода на марсе? Ответь да или нет."}]


def test_russe_prompt_matches_paper():
    spec = load_task("russe")
    row = {"id": 0, "word": "здоровье", "sentence1": "На здоровье не жалуюсь", "sentence2": "Как здоровье?"}
    assert user(build_messages(spec, row, "ru")) == (
        "Имеет ли слово 'здоровье' одинаковый смысл в следующих двух предложениях? "
        "'На здоровье не жалуюсь' 'Как здоровье?' Ответь да или нет."
    )


def test_terra_three_variants_drawn_evenly_and_stably():
    spec = load_task("terra")
    expected = {
        "'П.' Следует ли из этого что 'Г'? Ответь да или нет.",
        "'П.' Верно ли что 'Г'? Ответь да или нет.",
        "'П.' 'Г'? Ответь да или нет.",
    }
    rows = [{"id": i, "premise": "П.", "hypothesis": "Г"} for i in range(300)]
    texts = [user(build_messages(spec, r, "ru", seed=0)) for r in rows]
    assert set(texts) == expected
    counts = Counter(texts)
    assert min(counts.values()) > 70  # roughly equal odds over 300 draws
    # the choice depends on seed and id only: same again, different under another seed
    assert texts == [user(build_messages(spec, r, "ru", seed=0)) for r in rows]
    assert [prompt_index(spec, r, 1) for r in rows] != [prompt_index(spec, r, 0) for r in rows]


def test_translation_prompt_ru_to_en_is_the_papers():
    assert instruction("ru", "en") == (
        "Ты - полезный помощник, прочитай текст и переведи его на английский. Пример: ### Альберт Эйнштейн был "
        "одним из лучших физиков-теоретиков, в 1905 году он выдвинул теорию общей и специальной теории "
        "относительности.### Albert Einstein was one of the best theoretical physicists in 1905, he put forward "
        "the theory of general and special relativity."
    )
    msgs = translation_messages(load_task("flores_ru_to_en"), {"id": 0, "source": "Привет.", "target": "Hi."})
    assert msgs == [{"role": "user", "content": instruction("ru", "en") + "\n### Привет."}]
    for src, tgt in [("en", "ru"), ("ar", "en"), ("en", "ar"), ("ko", "en"), ("en", "ko")]:
        assert "Albert Einstein" in instruction(src, tgt)


def test_translation_output_keeps_first_line():
    assert clean("\n### Hello there.\nSecond line") == "Hello there."
    assert clean("Hi.### more") == "Hi."
    assert clean("   \n") == ""


@pytest.mark.parametrize("text,lang,want", [
    ("Да, конечно.", "ru", "yes"), ("нет", "ru", "no"), ("Возможно", "ru", None),
    ("نعم، هذا صحيح", "ar", "yes"), ("لا", "ar", "no"),
    ("예, 맞습니다", "ko", "yes"), ("아니오.", "ko", "no"),
    ("Yes!", "en", "yes"), ("No", "en", "no"), ("Maybe yes", "en", None),
])
def test_yes_no_parsing_per_language(text, lang, want):
    assert parse_yes_no(text, lang) == want
    if want:
        assert parse_yes_no(answer_word(want, lang), lang) == want  # k-shot demo answers parse back


def test_kobest_labels_mixed_case(tmp_path):
    (tmp_path / "kobest" / "WiC").mkdir(parents=True)
    rows = ["ID\tTarget\tSENTENCE1\tDictionary 1\tLink 1\tSENTENCE2\tDictionary 2\tLink2\tANSWER"]
    for i, lab in enumerate(["True", "TRUE", "False", "FALSE", "true"]):
        rows.append(f"{i}\t말\t[말]을 타다\t1\tx\t[말]을 하다\t2\ty\t{lab}")
    (tmp_path / "kobest" / "WiC" / "dev.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    ex = load_examples(load_task("kobest_wic"), tmp_path, "ko")
    assert [e["label"] for e in ex] == ["yes", "yes", "no", "no", "yes"]
    assert "단어 '말'" in user(build_messages(load_task("kobest_wic"), ex[0], "ko"))


def test_kobest_copa_multiple_choice_rendering():
    spec = load_task("kobest_copa")
    row = {"id": "1", "sentence": "전쟁이 시작되었다.", "question": "결과", "option1": "A.", "option2": "B."}
    assert mc_context(spec, row, "ko") == "전쟁이 시작되었다 그래서"
    assert mc_context(spec, {**row, "question": "원인"}, "ko") == "전쟁이 시작되었다 왜냐하면"
    assert mc_choices(spec, row, "ko") == [" A.", " B."]


def test_user_yaml_by_path_and_yaml_booleans(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"q": "Is it?", "a": true}\n{"q": "Is not?", "a": false}\n', encoding="utf-8")
    task = tmp_path / "mytask.yaml"
    # unquoted YAML 1.1 booleans on both sides of the label mapping still mean true->yes
    task.write_text(
        "name: mytask\nlang: en\nkind: yesno\nformat: jsonl\nfile: d.jsonl\n"
        "prompts: ['{q} {answer_yes_no}']\nlabel_field: a\nlabels: {true: yes, false: no}\n", encoding="utf-8")
    spec = load_task(str(task))
    ex = load_examples(spec, tmp_path, "en")
    assert [e["label"] for e in ex] == ["yes", "no"]
    assert user(build_messages(spec, ex[0], "en")) == "Is it? Answer yes or no."


def test_bad_task_files_name_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nkind: yesno\nformat: jsonl\nfile: a.jsonl\nprompts: ['{q}']\nlabels: {'1': maybe}\n")
    with pytest.raises(ValueError, match=r"bad.yaml.*labels"):
        load_task(str(bad))
    bad.write_text("name: x\nkind: yesno\nformat: jsonl\nfile: a.jsonl\nprompt: ['{q}']\n")
    with pytest.raises(ValueError, match=r"bad.yaml: field 'prompt'"):
        load_task(str(bad))
    with pytest.raises(ValueError, match="unknown task 'nosuch'"):
        load_task("nosuch")
    with pytest.raises(ValueError, match="no field 'x'"):
        render("{x}", {"y": 1})


def test_missing_data_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="DaNetQA/val.jsonl"):
        load_examples(load_task("danetqa"), tmp_path, "ru")


def test_carve_split_is_deterministic_and_halves():
    rows = [{"text": f"tweet {i}"} for i in range(2000)]
    parts = [carve_part(r, ["text"]) for r in rows]
    assert parts == [carve_part(r, ["text"]) for r in rows]
    assert 900 < parts.count("dev") < 1100


def test_limit_and_seeded_sample():
    items = list(range(100))
    assert select(items, 5, False, 0) == [0, 1, 2, 3, 4]
    s = select(items, 5, True, 0)
    assert s == select(items, 5, True, 0) and s == sorted(s) and s != [0, 1, 2, 3, 4]
    assert select(items, None, True, 0) == items


def test_kshot_demos_are_seeded_and_exclude_the_example():
    train = [{"id": i, "label": "yes"} for i in range(20)]
    d = draw_demos(train, 5, 0, example_id=3)
    assert len(d) == 5 and all(x["id"] != 3 for x in d)
    assert d == draw_demos(train, 5, 0, example_id=3) and draw_demos(train, 0, 0, 3) == []


def test_eval_config_forbids_unknown_fields():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="taks"):
        EvalConfig(taks=["danetqa"])
    with pytest.raises(ValidationError, match="mode"):
        EvalConfig(mode="sample")
    assert EvalConfig(tasks=["danetqa", " "]).tasks == ["danetqa"]


@pytest.mark.shared_data
def test_real_kobest_and_ru_files_parse(shared_data):
    for name, n in [("kobest_boolq", 700), ("kobest_wic", 610), ("terra", 307), ("kobest_copa", 500)]:
        spec = load_task(name)
        ex = load_examples(spec, shared_data, spec.lang)
        assert len(ex) == n
        assert set(e["label"] for e in ex) <= {"yes", "no", 0, 1}


HEAD = "name: x\nkind: yesno\nformat: jsonl\nfile: a.jsonl\nprompts: ['{q}']\n"


@pytest.mark.parametrize("metrics,message", [
    ("[{name: accuracy, primary: true}, {name: f1, primary: true}]",
     "field 'metrics': 2 primary metrics (accuracy, f1); mark exactly one `primary: true`"),
    ("[{name: accuracy}, {name: f1}]", "field 'metrics': no primary metric; mark one with `primary: true`"),
    ("[]", "field 'metrics': no primary metric"),
    ("[{name: bleu, primary: true}]", "field 'metrics': 'bleu' is not a metric of kind 'yesno' (it has accuracy, rate, f1;"),
    ("[{name: accuracy_ll, primary: true}]", "field 'metrics': 'accuracy_ll' is not a metric of kind 'yesno'"),
    ("[{name: accuracy, primary: true, higher_is_better: false}]",
     "field 'metrics': accuracy: higher_is_better must be true"),
    ("[{name: accuracy, primary: true}, {name: accuracy}]", "field 'metrics': accuracy declared more than once"),
    ("[accuracy, rate, f1]", "field 'metrics': each metric is a mapping like {name: accuracy, primary: true"),
    ("[{name: accuracy, primary: true, best: max}]", "field 'metrics.0.best': unknown field"),
])
def test_bad_metric_declarations_are_one_line_naming_file_and_field(tmp_path, metrics, message):
    from lingotune.files import FileFormatError

    bad = tmp_path / "bad.yaml"
    bad.write_text(HEAD + f"metrics: {metrics}\n")
    with pytest.raises(FileFormatError) as e:
        load_task(str(bad))
    assert str(e.value).startswith(f"{bad}: {message}") and "\n" not in str(e.value)


def test_declared_metrics_cover_loglik_and_kshot_names(tmp_path):
    task = tmp_path / "t.yaml"
    task.write_text(HEAD + "metrics:\n  - {name: f1, primary: true}\n  - {name: accuracy, higher_is_better: true}\n")
    spec = load_task(str(task))
    assert [(m.name, m.primary, m.higher_is_better) for m in spec.metrics] == [("f1", True, True), ("accuracy", False, True)]
    got = spec.describe_metrics(["accuracy", "rate", "f1", "accuracy_ll", "f1_ll", "accuracy_5shot", "accuracy_ll_5shot",
                                 "rate_5shot", "n", "ci"])
    assert list(got) == ["f1", "f1_ll", "accuracy", "accuracy_ll", "accuracy_5shot", "accuracy_ll_5shot"]  # rate undeclared
    assert got["accuracy_ll_5shot"] == {"metric": "accuracy", "primary": False, "higher_is_better": True, "shots": 5,
                                        "per_example": "correct_ll"}
    assert got["f1_ll"]["primary"] and got["f1_ll"]["per_example"] is None
    # multiple choice: accuracy_norm is its own metric, not a form of accuracy
    mc = load_task("kobest_copa").describe_metrics(["accuracy", "accuracy_norm", "f1_5shot", "f1_norm_5shot"])
    assert list(mc) == ["f1_5shot", "accuracy"] and mc["accuracy"]["per_example"] == "correct"
    # without a declaration: all of the kind's metrics, lower is better for perplexity's
    task.write_text("name: p\nkind: perplexity\nformat: lines\nfile: a.txt\n")
    spec = load_task(str(task))
    assert [(m.name, m.primary, m.higher_is_better) for m in spec.metrics] == [
        ("bits_per_char", True, False), ("perplexity", False, False), ("nll_per_token", False, False)]


def test_builtin_tasks_declare_one_primary_metric():
    primary = {n: [m.name for m in load_task(n).metrics if m.primary] for n in builtin_tasks()}
    assert all(len(p) == 1 for p in primary.values())
    assert primary["danetqa"] == ["accuracy"] and primary["kobest_boolq"] == ["f1"]
    assert primary["flores_ru_to_en"] == ["chrf++"] and primary["flores_ru_bpc"] == ["bits_per_char"]
    assert not next(m for m in load_task("flores_ru_bpc").metrics if m.primary).higher_is_better
