"""Bad input, table-tested (issue 10): every case gets a one-line error naming the file, line,
field or option at fault, exit code 2, no traceback, and nothing written or lost.

Each case runs the real command line in a scratch directory that holds the case's input files
(and, for some, an earlier run); the directory's every file and byte must be the same after.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from lingotune.cli import app

SMALL = ["--set", "data.max_stage1=8", "--set", "data.max_stage2=4", "--set", "method.stage1.steps=2",
         "--set", "method.stage2.steps=2", "--set", "train.batch_size=2", "--set", "train.max_len=96",
         "--set", "eval.tasks=[starter_heldout]", "--set", "eval.limit=2", "--set", "output.sample_prompts=0",
         "--set", "data.root=."]  # data paths relative to the scratch directory


def _write(path: str, data: str | bytes) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data if isinstance(data, bytes) else data.encode())


def _jsonl(*rows) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _recipe(path: str, **sections) -> None:
    _write(path, yaml.safe_dump(sections, allow_unicode=True))


def _earlier_run(folder: str, model: Path) -> None:
    """A run directory as `lingotune run` with SMALL settings leaves it after a first attempt."""
    from lingotune.recipe import dump_recipe, load_recipe
    from lingotune.rundir import prepare

    prepare(Path(folder), "fresh", "run")
    recipe = load_recipe(None, SMALL[1::2] + [f"model.source={model}", f"output.dir={folder}"])
    _write(f"{folder}/recipe.yaml", dump_recipe(recipe))
    _write(f"{folder}/results.json", "{}")


def _drop_field(path: str, name: str) -> None:
    """Take a field out of a YAML file, as a recipe written before the field existed lacks it."""
    lines = Path(path).read_text(encoding="utf-8").splitlines(keepends=True)
    Path(path).write_text("".join(x for x in lines if not x.strip().startswith(f"{name}:")), encoding="utf-8")


def _alpaca(path: str, *outputs: str) -> None:
    _write(path, _jsonl(*({"instruction": f"Вопрос номер {i} о погоде в городе?", "output": o}
                          for i, o in enumerate(outputs))))


def _torn_copy(src: Path, dst: str, name: str) -> None:
    shutil.copytree(src, dst)
    data = (Path(dst) / name).read_bytes()
    (Path(dst) / name).write_bytes(data[: len(data) // 3])


def _adapter(folder: str, model_dir: Path, torn: bool = False) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    model.save_pretrained(folder)
    if torn:
        f = Path(folder) / "adapter_model.safetensors"
        f.write_bytes(f.read_bytes()[:100])


def _embeddings(path: str, shape=(3, 3), garbage: bool = False) -> None:
    import torch
    from safetensors.torch import save_file

    if garbage:
        _write(path, b"not a safetensors file at all")
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file({"model.embed_tokens.weight": torch.zeros(shape)}, path)


def _parallel(en_lines: int, ru_lines: int) -> None:
    _write("in/en.txt", "".join(f"English sentence number {i}.\n" for i in range(en_lines)))
    _write("in/ru.txt", "".join(f"Русское предложение номер {i}.\n" for i in range(ru_lines)))


M = "--set model.source={model}"  # the tiny model saved with the bundled tokenizer
PAIRED = "--set 'data.sources=[{{format: paired, en: in/en.jsonl, target: in/ru.jsonl}}]'"
ALPACA = "--set 'data.sources=[{{format: alpaca, path: in/a.jsonl}}]'"
TEXT = "--set 'data.sources=[{{format: parallel_text, en: in/en.txt, target: in/ru.txt}}]'"

# (case id, command line, setup, text the error line must contain)
CASES = [
    ("yaml-malformed", "run in/r.yaml", lambda m: _write("in/r.yaml", "train: {lr: [1e-3\n"), "in/r.yaml: line"),
    ("yaml-not-mapping", "run in/r.yaml", lambda m: _write("in/r.yaml", "- a\n- b\n"), "in/r.yaml: a recipe is a YAML mapping"),
    ("unknown-field", "run in/r.yaml", lambda m: _recipe("in/r.yaml", train={"lrr": 1}), "field 'train.lrr': unknown field"),
    ("wrong-type", "run in/r.yaml", lambda m: _recipe("in/r.yaml", train={"batch_size": "two"}), "field 'train.batch_size'"),
    ("lr-inf", "run --set train.lr=.inf", None, "field 'train.lr'"),
    ("lr-negative", "run --set train.lr=-1", None, "field 'train.lr'"),
    ("set-no-equals", "run --set train.lr", None, "--set 'train.lr': expected key.path=value"),
    ("set-bad-yaml", "run --set train.lr=[1e-3", None, "--set 'train.lr=[1e-3': the value is not valid YAML"),
    ("set-not-a-section", "run --set seed.x=1", None, "--set seed.x: 'seed' is not a section"),
    ("recipe-missing", "run in/nope.yaml", None, "in/nope.yaml: no such recipe file"),
    ("unknown-language", "run --set language=xx", None, "field 'language': unknown language 'xx'"),
    ("unknown-task", "run --set eval.tasks=[nosuch]", None, "eval.tasks[0]: unknown task 'nosuch'"),
    ("task-name-escapes", "run --set eval.tasks=[in/t.yaml]",
     lambda m: _write("in/t.yaml", "name: ../../x\nkind: perplexity\nformat: lines\nfile: a.txt\n"),
     "task name '../../x'"),
    ("unknown-eval-limit", "run --set eval.tasks=[starter_heldout] --set 'eval.limits={{danetq: 3}}'", None,
     "eval.limits: 'danetq' not among the evaluated tasks"),
    ("output-placeholder", "run --out runs/{{methd}}", None, "field 'output.dir': bad placeholder"),
    ("compare-name-escapes",
     "compare --set \"compare.variants={{'../x': {{method.name: lora}}}}\" --set compare.methods=[lora]", None,
     "compare: name '../x'"),
    ("data-file-missing", f"run {M} {PAIRED}", None, "in/en.jsonl: file not found"),
    ("data-file-empty", f"run {M} {ALPACA}", lambda m: _write("in/a.jsonl", ""), "in/a.jsonl: the file is empty"),
    ("data-not-utf8", f"run {M} {ALPACA}", lambda m: _write("in/a.jsonl", "Привет".encode("cp1251")),
     "in/a.jsonl: not UTF-8 text"),
    ("data-text-not-utf8", f"run {M} {TEXT}",
     lambda m: (_parallel(3, 3), _write("in/ru.txt", "Привет".encode("cp1251"))), "in/ru.txt: not UTF-8 text"),
    ("jsonl-broken-line", f"run {M} {ALPACA}",
     lambda m: _write("in/a.jsonl", _jsonl({"instruction": "Вопрос?", "output": "Да"}) + '{"instruction": "x",\n'),
     "in/a.jsonl:2: malformed JSON"),
    ("jsonl-missing-field", f"run {M} {ALPACA}", lambda m: _write("in/a.jsonl", _jsonl({"instruction": "Вопрос?"})),
     "in/a.jsonl:1: field 'output' is missing"),
    ("paired-lengths-differ", f"run {M} {PAIRED}",
     lambda m: (_alpaca("in/en.jsonl", "yes", "no"), _alpaca("in/ru.jsonl", "да")),
     "in/ru.jsonl: 1 records but "),
    ("parallel-lengths-differ", f"run {M} {TEXT}", lambda m: _parallel(3, 2), "in/ru.txt: 2 lines but "),
    ("no-examples-left", f"run {M} {ALPACA} --set method.name=lora", lambda m: _alpaca("in/a.jsonl", "", " "),
     "train: the data section yields no examples for stage1+stage2"),
    ("max-len-below-prompt", f"run {M} --set train.max_len=8", None, "train.max_len: 8 tokens cuts every one of the"),
    ("lora-targets-match-nothing", f"run {M} --set method.lora.target_modules=[q_projx]", None,
     "method.lora.target_modules: 'q_projx' match no module"),
    ("model-dir-missing", "run --set model.source=./in/no_model", None, "model './in/no_model': no such directory"),
    ("model-weights-torn", "run --set model.source=in/torn",
     lambda m: _torn_copy(m, "in/torn", "model.safetensors"), "model 'in/torn': cannot load"),
    ("run-dir-exists", f"run {M} --out old", lambda m: _earlier_run("old", m), "old: run directory exists; pass --resume"),
    ("resume-nothing", f"run {M} --out fresh --resume", None, "fresh: nothing to resume"),
    ("resume-changed-recipe", f"run {M} --out old --resume --set train.lr=0.5",
     lambda m: _earlier_run("old", m), "the recipe changed fields that shape training (train.lr was "),
    ("resume-run-from-before-pair-batching", f"run {M} --out old --resume --set data.pair_batching=together",
     lambda m: (_earlier_run("old", m), _drop_field("old/recipe.yaml", "pair_batching")),
     "the recipe changed fields that shape training (data.pair_batching was shuffled)"),
    ("overwrite-not-ours", f"run {M} --out in --overwrite", lambda m: _write("in/thesis.tex", "years of work"),
     "in: exists and is not a lingotune run directory"),
    ("overwrite-cwd", f"run {M} --out . --overwrite",
     lambda m: (_write(".lingotune-run", '{"kind": "run"}'), _write("results.json", "{}")),
     "refusing to remove it with --overwrite: it is the current directory"),
    ("resume-and-overwrite", f"run {M} --out old --resume --overwrite", lambda m: _earlier_run("old", m),
     "--resume and --overwrite exclude each other"),
    ("stage-unknown", f"train {M} --stage stage9 --out r", None, "--stage stage9: method dpart has stages stage1, stage2"),
    ("stage-out-of-order", f"train {M} --stage stage2 --out r", None, "--stage stage2: stage1 must be trained first"),
    ("eval-adapter-not-adapter", "eval --model {model} --adapter in --tasks starter_heldout --lang ru",
     lambda m: _write("in/readme.txt", "not an adapter"), "adapter 'in': no adapter_config.json"),
    ("eval-adapter-torn", "eval --model {model} --adapter in/ad --tasks starter_heldout --lang ru",
     lambda m: _adapter("in/ad", m, torn=True), "adapter 'in/ad': cannot load"),
    ("eval-embeddings-shape", "eval --model {model} --embeddings in/e.safetensors --tasks starter_heldout",
     lambda m: _embeddings("in/e.safetensors"), "embeddings 'in/e.safetensors': shape (3, 3)"),
    ("eval-embeddings-garbage", "eval --model {model} --embeddings in/e.safetensors --tasks starter_heldout",
     lambda m: _embeddings("in/e.safetensors", garbage=True), "embeddings 'in/e.safetensors': not a readable safetensors"),
    ("eval-label-escapes", "eval --model {model} --tasks starter_heldout --label ../x --out in", None,
     "evaluation label '../x'"),
    ("eval-unknown-task", "eval --model {model} --tasks nosuch", None, "unknown task 'nosuch'"),
    ("compare-lep-cell-no-corpus", f"compare {M} --set compare.methods=[lora] --set compare.seeds=[0] "
     "--set vocab.scenario=extend", None, "vocab: no corpus (give vocab.corpus, or a data source used as text)"),
    ("compare-record-not-a-record", f"compare {M} --set compare.methods=[lora] --set compare.seeds=[0] --out g "
     "--record in", lambda m: _write("in/thesis.tex", "years of work"), "in: exists and is not a grid record"),
    ("compare-record-inside-the-grid", f"compare {M} --set compare.methods=[lora] --set compare.seeds=[0] --out g "
     "--record g/rec", None, "the record must lie outside the grid"),
    ("vocab-corpus-wrong-script", "vocab extend --model {model} --lang ru --corpus in/en.txt --out v",
     lambda m: _parallel(3, 3), "corpus: no text in the Cyrillic script of language 'ru'"),
    ("vocab-corpus-missing", "vocab extend --model {model} --lang ru --corpus in/none.txt --out v", None,
     "in/none.txt: file not found"),
    ("vocab-out-not-ours", "vocab extend --model {model} --lang ru --corpus in/ru.txt --out in",
     lambda m: _parallel(3, 3), "in: exists and is not a lingotune run directory"),
]


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("case, cmd, setup, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, cmd, setup, expected, tiny_model_dir, tmp_path,
                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    if setup:
        setup(tiny_model_dir)
    args = shlex.split(cmd.format(model=tiny_model_dir))
    if args[0] in ("run", "train", "compare") and not case.startswith(("yaml", "unknown-field", "wrong-type")):
        # small settings first (the case's own --set wins); recipe-file cases get none, to keep their error alone
        args = args[:1] + SMALL + args[1:]
    before = _snapshot(tmp_path)
    res = CliRunner().invoke(app, args)
    errors = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and not isinstance(res.exception, (AssertionError, KeyError, TypeError))
    assert len(errors) == 1 and errors[0].startswith("error: "), res.stderr
    assert expected in errors[0], errors[0]
    assert _snapshot(tmp_path) == before


def test_the_table_covers_the_issue():
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)
