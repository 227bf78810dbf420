"""DParT pair builder and the data section (build_datasets): structure, instruction wording, mix, determinism."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from lingotune.data.build import build_datasets
from lingotune.data.config import DataConfig, SourceSpec
from lingotune.data.pairs import build_stage1, build_stage2, instruction_text
from lingotune.data.records import DataError, Example, Record


def make_pairs(n=20, system=False):
    out = []
    for i in range(n):
        en = Record(f"Question number {i}?", f"Answer {i}", "Be brief." if system else None, str(i), "en", f"en.jsonl:{i + 1}")
        ru = Record(f"Вопрос номер {i}?", f"Ответ {i}", "Отвечай кратко." if system else None, str(i), "ru", f"ru.jsonl:{i + 1}")
        out.append((en, ru))
    return out


def test_stage1_has_both_variants_with_the_target_answer():
    exs = build_stage1(make_pairs(5), "ru", seed=0)
    assert len(exs) == 10
    by_pair = {}
    for ex in exs:
        by_pair.setdefault(ex.meta["pair_id"], []).append(ex)
    for pid, (a, b) in by_pair.items():
        assert (a.meta["kind"], b.meta["kind"]) == ("target", "en2target")
        assert a.messages[-1] == b.messages[-1] and a.messages[-1]["content"].startswith("Ответ")
        assert a.messages[0]["content"].startswith("Вопрос")
        assert b.messages[0]["content"].startswith("Question") and b.messages[0]["content"].endswith("\n\nAnswer in Russian.")
        assert a.meta["lang"] == "ru" and b.meta["source"].startswith("en.jsonl") and a.meta["source"].startswith("ru.jsonl")
    # round trip through the JSONL shape
    assert Example.from_dict(json.loads(json.dumps(exs[0].to_dict()))).messages == exs[0].messages


def test_instruction_wording_native_and_custom():
    assert instruction_text("ru", "native") == "Ответь на русском языке."
    assert instruction_text("ar", "en") == "Answer in Arabic."
    exs = build_stage1(make_pairs(2), "ru", 0, instruction="Reply in Russian please.")
    assert any(e.messages[0]["content"].endswith("Reply in Russian please.") for e in exs)


def test_system_prompts_are_kept():
    exs = build_stage1(make_pairs(2, system=True), "ru", 0)
    sys_by_kind = {e.meta["kind"]: e.messages[0] for e in exs}
    assert sys_by_kind["target"] == {"role": "system", "content": "Отвечай кратко."}
    assert sys_by_kind["en2target"] == {"role": "system", "content": "Be brief."}


def test_mix_share_of_pairs_with_both_variants():
    exs = build_stage1(make_pairs(20), "ru", 0, both_share=0.5, single_kind="target")
    assert len(exs) == 30
    assert sum(e.meta["kind"] == "en2target" for e in exs) == 10
    only_en = build_stage1(make_pairs(20), "ru", 0, both_share=0.0, single_kind="en2target")
    assert {e.meta["kind"] for e in only_en} == {"en2target"} and len(only_en) == 20
    with pytest.raises(ValueError, match="both_share"):
        build_stage1(make_pairs(2), "ru", 0, both_share=1.5)


def test_determinism_same_seed_same_output_other_seed_other_order():
    a = [e.to_dict() for e in build_stage1(make_pairs(30), "ru", seed=1)]
    b = [e.to_dict() for e in build_stage1(make_pairs(30), "ru", seed=1)]
    c = [e.to_dict() for e in build_stage1(make_pairs(30), "ru", seed=2)]
    assert a == b and a != c
    assert sorted(json.dumps(x) for x in a) == sorted(json.dumps(x) for x in c)  # same content, other order


def test_stage2_target_only():
    recs = [t for _, t in make_pairs(6)]
    exs = build_stage2(recs, "ru", seed=0)
    assert len(exs) == 6 and all(e.meta["kind"] == "target" and e.meta["stage"] == 2 for e in exs)
    assert [e.to_dict() for e in exs] == [e.to_dict() for e in build_stage2(recs, "ru", seed=0)]


def test_data_config_defaults_and_typos():
    cfg = DataConfig()
    assert [s.format for s in cfg.sources] == ["starter"] and cfg.pairs.instruction == "en"
    with pytest.raises(ValidationError, match="sourcez"):
        DataConfig.model_validate({"sourcez": []})
    with pytest.raises(ValidationError, match="has no English side"):
        SourceSpec(format="alpaca", path="x.json", use="pairs")
    with pytest.raises(ValidationError, match="needs 'en' and 'target'"):
        SourceSpec(format="paired", en="x.json")
    assert SourceSpec(format="alpaca", path="x.json").uses == "stage2"


def test_build_datasets_from_files(tmp_path):
    (tmp_path / "en.jsonl").write_text("".join(json.dumps({"id": str(i), "instruction": f"What is item number {i}?",
                                                           "output": f"It is item {i}."}) + "\n" for i in range(10)))
    (tmp_path / "ru.jsonl").write_text("".join(json.dumps({"id": str(i), "instruction": f"Что такое предмет номер {i}?",
                                                           "output": f"Это предмет номер {i}."}, ensure_ascii=False) + "\n"
                                               for i in range(10)))
    cfg = DataConfig.model_validate({"root": str(tmp_path), "sources": [
        {"format": "paired", "en": "en.jsonl", "target": "ru.jsonl", "align": "id"},
        {"format": "alpaca", "path": "ru.jsonl", "lang": "ru"}]})
    built = build_datasets(cfg, "ru", seed=0, eval_texts=["что такое предмет номер 3 ?"])
    assert len(built.stage1) == 18  # one pair dropped for leakage
    assert len(built.stage2) == 9 + 9  # pair targets + the alpaca file (leak dropped there too; duplicates are per stage)
    assert built.report["leakage_dropped"] == 2
    paths = built.write(tmp_path / "out")
    assert len(paths["stage1"].read_text().splitlines()) == 18
    assert json.loads(paths["report"].read_text())["stage1_kinds"] == {"target": 9, "en2target": 9}
    again = build_datasets(cfg, "ru", seed=0, eval_texts=["что такое предмет номер 3 ?"])
    assert [e.to_dict() for e in again.stage1] == [e.to_dict() for e in built.stage1]


def test_build_datasets_names_the_source_on_error(tmp_path):
    cfg = DataConfig.model_validate({"root": str(tmp_path), "sources": [{"format": "starter"},
                                                                         {"format": "alpaca", "path": "missing.json"}]})
    with pytest.raises(DataError, match=r"data.sources\[1\] \(alpaca\): .*missing.json: file not found"):
        build_datasets(cfg, "ru", 0)


def test_build_datasets_starter_default():
    built = build_datasets(DataConfig(), "ko", seed=3)
    assert len(built.stage1) == 800 and len(built.stage2) == 400
    assert built.report["sources"][0]["format"] == "starter"


@pytest.mark.shared_data
@pytest.mark.parametrize("name,lang", [("xquad_ru", "ru"), ("xquad_ar", "ar"), ("gsm8k_ru", "ru"), ("msvamp_ru", "ru"),
                                       ("mt_bench_ru", "ru"), ("flores_tatoeba_ru", "ru")])
def test_example_data_sections_build(shared_data, name, lang):
    from importlib.resources import files

    import yaml

    section = yaml.safe_load((files("lingotune") / "recipes" / "data" / f"{name}.yaml").read_text())["data"]
    cfg = DataConfig.model_validate(section)
    built = build_datasets(cfg, lang, seed=0)
    assert len(built.stage1) > 50 and len(built.stage2) > 25
