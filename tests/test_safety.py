"""Safety of the run directory, checkpoints and the loop's guards (issue 10).

Each test tries one way a run could delete, corrupt or lose a user's files, and asserts what is
kept and what the user is told.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import pytest
import torch

from helpers import fresh_tiny, make_items, make_recipe, train_one
from lingotune import methods
from lingotune.checkpoint import Checkpoints
from lingotune.errors import RunDirError, TrainingError
from lingotune.rundir import MARKER, check, check_output, prepare


def _lora(recipe, tmp_path, **kw):
    return train_one(fresh_tiny(), methods.stages("lora", recipe)[0], recipe, tmp_path, **kw)


def _lora_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}


# ----------------------------------------------------------------------------- the run directory


def test_overwrite_never_removes_a_folder_lingotune_did_not_make(tmp_path):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work")
    with pytest.raises(RunDirError, match="not a lingotune run directory.*--overwrite only replaces"):
        check(mine, kind="run", resume=False, overwrite=True)
    with pytest.raises(RunDirError, match="not removed"):
        prepare(mine, "replace", "run")  # even when called without the check
    assert (mine / "chapter1.tex").read_text() == "years of work"


@pytest.mark.parametrize("where", ["cwd", "parent", "home"])
def test_overwrite_never_removes_the_current_or_home_directory_or_their_parents(tmp_path, monkeypatch, where):
    work = tmp_path / "project" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "project"))
    target = {"cwd": work, "parent": tmp_path, "home": tmp_path / "project"}[where]
    prepare(target, "fresh", "run")  # even a directory marked as ours
    (target / "results.json").write_text("{}")
    with pytest.raises(RunDirError, match="refusing to remove it with --overwrite: it (is|contains) the"):
        check(target, kind="run", resume=False, overwrite=True)
    assert (target / "results.json").exists()


def test_overwrite_replaces_a_marked_run(tmp_path):
    run = prepare(tmp_path / "r", "fresh", "run")
    (run / "results.json").write_text("{}")
    assert check(run, kind="run", resume=False, overwrite=True) == "replace"
    prepare(run, "replace", "run")
    assert sorted(p.name for p in run.iterdir()) == [MARKER]


def test_a_failed_first_attempt_does_not_block_the_rerun(tmp_path):
    run = prepare(tmp_path / "r", "fresh", "run")
    (run / "recipe.yaml").write_text("name: run\n")
    assert check(run, kind="run", resume=False, overwrite=False) == "reuse"
    (run / "metrics.jsonl").write_text("")
    with pytest.raises(RunDirError, match="--resume to continue it or --overwrite"):
        check(run, kind="run", resume=False, overwrite=False)


def test_grid_and_run_directories_are_not_confused(tmp_path):
    grid = prepare(tmp_path / "g", "fresh", "grid")
    (grid / "summary.json").write_text("{}")
    with pytest.raises(RunDirError, match="holds a lingotune grid"):
        check(grid, kind="run", resume=False, overwrite=True)


def test_a_folder_written_whole_is_replaced_only_when_it_is_of_its_kind(tmp_path):
    out = prepare(tmp_path / "e", "fresh", "export")
    (out / "model.safetensors").write_text("x")
    with pytest.raises(RunDirError, match="exists; pass --overwrite to replace it"):
        check_output(out, "export", overwrite=False)
    assert check_output(out, "export", overwrite=True) == "replace"
    with pytest.raises(RunDirError, match="holds a lingotune export, not a lingotune export of lm-eval tasks"):
        check_output(out, "lm-eval", overwrite=True)
    old = tmp_path / "old"  # an earlier lingotune's run: a marker without a kind
    old.mkdir()
    (old / MARKER).write_text("")
    (old / "results.json").write_text("{}")
    assert check_output(old, "run", overwrite=True) == "replace"
    with pytest.raises(RunDirError, match="holds a lingotune run of an earlier version .*, not a lingotune export;"):
        check_output(old, "export", overwrite=True)
    assert check_output(tmp_path / "new", "lm-eval", overwrite=False) == "fresh"


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "", "a\\b"])
def test_names_from_task_files_and_recipes_cannot_leave_the_run_directory(tmp_path, name):
    from pydantic import ValidationError

    from lingotune.eval.tasks import TaskSpec
    from lingotune.recipe import RecipeError

    with pytest.raises(ValidationError, match="becomes a file name"):
        TaskSpec(name=name, kind="perplexity", format="lines", file="x.txt")
    with pytest.raises(RecipeError, match="becomes a file name"):
        make_recipe(**{"compare.variants": {name: {"method.name": "lora"}}, "compare.methods": ["lora"]})
    with pytest.raises(RecipeError, match="becomes a file name"):
        make_recipe(**{"compare.datasets": {name: {}}})
    from lingotune.eval import EvalConfig, evaluate

    with pytest.raises(ValueError, match="becomes a file name"):
        evaluate(None, None, EvalConfig(tasks=["starter_heldout"]), tmp_path, label=name)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- checkpoints


def test_two_newest_checkpoints_are_kept(tmp_path):
    _lora(make_recipe(), tmp_path, steps=7)  # checkpoint_every 2: steps 2, 4, 6 and the last, 7
    ck = Checkpoints(tmp_path / "train" / "checkpoint")
    assert [s for s, _ in ck.complete()] == [7, 6]
    assert not list(ck.root.glob("*.tmp"))


def _cut_at(recipe, tmp_path, step):
    def stop(done, loss):
        if done == step:
            raise KeyboardInterrupt

    with pytest.raises(TrainingError, match=f"checkpoint at step {step}"):
        _lora(recipe, tmp_path, on_step=stop)


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    recipe = make_recipe()
    ref, _ = _lora(recipe, tmp_path / "ref")
    _cut_at(recipe, tmp_path / "cut", 4)
    newest = tmp_path / "cut" / "train" / "checkpoint" / "step-00000004" / "state.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # torn by a crash of the disk, not of lingotune
    model, res = _lora(recipe, tmp_path / "cut", resume=True)
    assert res.resumed_from == 2
    assert "step-00000004 is not usable (state.pt is missing or truncated)" in capsys.readouterr().err
    for k, v in _lora_state(ref).items():
        torch.testing.assert_close(_lora_state(model)[k], v, rtol=0, atol=0)


def test_when_every_checkpoint_is_corrupt_resume_stops_with_one_line(tmp_path):
    recipe = make_recipe()
    _cut_at(recipe, tmp_path, 4)
    for state in (tmp_path / "train" / "checkpoint").glob("step-*/state.pt"):
        raw = bytearray(state.read_bytes())
        raw[len(raw) // 2] ^= 0xFF  # one flipped byte: the same size, another checksum
        state.write_bytes(bytes(raw))
    with pytest.raises(TrainingError) as e:
        _lora(recipe, tmp_path, resume=True)
    assert "no usable checkpoint" in str(e.value) and "checksum" in str(e.value) and "\n" not in str(e.value)


def test_a_crafted_checkpoint_cannot_run_code_on_resume(tmp_path):
    """A state.pt whose pickle runs a command when loaded: weights_only refuses it, nothing runs."""
    import hashlib

    recipe = make_recipe()
    _cut_at(recipe, tmp_path, 2)
    folder = tmp_path / "train" / "checkpoint" / "step-00000002"
    flag = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {flag}",)

    torch.save({"params": {}, "optimizer": {}, "scheduler": {}, "rng": Payload()}, folder / "state.pt")
    meta = json.loads((folder / "meta.json").read_text())
    raw = (folder / "state.pt").read_bytes()
    meta.update(bytes=len(raw), sha256=hashlib.sha256(raw).hexdigest())  # a consistent forgery
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(TrainingError, match="cannot be loaded safely"):
        _lora(recipe, tmp_path, resume=True)
    assert not flag.exists()


def test_a_checkpoint_killed_while_being_written_is_ignored(tmp_path):
    recipe = make_recipe()
    _cut_at(recipe, tmp_path, 4)
    root = tmp_path / "train" / "checkpoint"
    half = root / "step-00000006.tmp"  # killed during the write of step 6: never renamed into place
    half.mkdir()
    (half / "state.pt").write_bytes(b"\x00" * 10)
    _, res = _lora(recipe, tmp_path, resume=True)
    assert res.resumed_from == 4 and not half.exists()


@pytest.mark.parametrize("fault", ["enospc", "torch-writer"])
def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, fault):
    recipe = make_recipe()
    real_save, calls = torch.save, []

    def full_disk(obj, f, *a, **kw):
        calls.append(f)
        if len(calls) == 2:  # the second checkpoint (step 4) hits a full disk
            if fault == "enospc":
                raise OSError(errno.ENOSPC, "No space left on device", str(f))
            raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing "
                               "file data/3: file write failed")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(TrainingError) as e:
        _lora(recipe, tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "the checkpoint at step 2 is intact" in msg
    assert ("no space left on device" in msg) if fault == "enospc" else ("is the disk full?" in msg)
    root = tmp_path / "train" / "checkpoint"
    assert [s for s, _ in Checkpoints(root).complete()] == [2] and not list(root.glob("*.tmp"))
    monkeypatch.setattr(torch, "save", real_save)
    _, res = _lora(recipe, tmp_path, resume=True)  # space freed: the run continues from step 2
    assert res.resumed_from == 2


def test_a_torn_metrics_line_does_not_block_resume(tmp_path):
    recipe = make_recipe()
    _cut_at(recipe, tmp_path, 4)
    log = tmp_path / "metrics.jsonl"
    log.write_text(log.read_text() + '{"stage": "train", "step": 5, "lo')  # killed mid-write
    _lora(recipe, tmp_path, resume=True)
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8]


def test_a_restart_without_a_checkpoint_does_not_duplicate_metrics(tmp_path):
    recipe = make_recipe(**{"train.checkpoint_every": 50})
    _cut_at(recipe, tmp_path, 1)  # Ctrl-C at step 1: that step is checkpointed
    for folder in (tmp_path / "train" / "checkpoint").iterdir():
        import shutil

        shutil.rmtree(folder)  # as if the checkpoint had never been written
    _, res = _lora(recipe, tmp_path, resume=True)
    assert res.resumed_from == 0
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == list(range(1, 9))


def test_resume_with_a_changed_recipe_names_the_fields(tmp_path):
    from lingotune.recipe import training_fields

    recipe = make_recipe()
    stage = methods.stages("lora", recipe)[0]

    def go(r, **kw):
        from lingotune.train import train_stage

        torch.manual_seed(0)
        model, groups = stage.setup(fresh_tiny())
        return train_stage(model, groups, make_items(), steps=6, cfg=r.train, seed=r.seed,
                           pad_id=0, stage_dir=tmp_path / "s", log_path=tmp_path / "m.jsonl", log_key={"stage": "s"},
                           fingerprint=training_fields(r), **kw)

    def stop(done, loss):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(TrainingError):
        go(recipe, on_step=stop)
    changed = make_recipe(**{"train.lr": 5e-3, "seed": 3, "eval.limit": 5})
    with pytest.raises(TrainingError, match=r"different recipe \(seed, train\.lr\)"):
        go(changed, resume=True)
    go(make_recipe(**{"eval.limit": 5, "train.checkpoint_every": 3}), resume=True)  # evaluation may change


def test_a_checkpoint_of_an_older_lingotune_resumes_despite_new_recipe_fields(tmp_path):
    """A newer lingotune adds recipe fields (with defaults that keep the old behaviour): they are not a change."""
    from lingotune.recipe import training_fields
    from lingotune.train import train_stage

    recipe = make_recipe()
    stage = methods.stages("lora", recipe)[0]

    def go(**kw):
        torch.manual_seed(0)
        model, groups = stage.setup(fresh_tiny())
        return train_stage(model, groups, make_items(), steps=6, cfg=recipe.train, seed=0, pad_id=0,
                           stage_dir=tmp_path / "s", log_path=tmp_path / "m.jsonl", log_key={"stage": "s"},
                           fingerprint=training_fields(recipe), **kw)

    def stop(done, loss):
        if done == 4:
            raise KeyboardInterrupt

    with pytest.raises(TrainingError):
        go(on_step=stop)
    for meta_path in (tmp_path / "s" / "checkpoint").glob("step-*/meta.json"):
        meta = json.loads(meta_path.read_text())
        meta["recipe"] = {k: v for k, v in meta["recipe"].items() if not k.startswith("method.pref.")}
        meta["recipe"]["method.retired_field"] = 1  # and one the newer lingotune no longer has
        meta_path.write_text(json.dumps(meta))
    assert go(resume=True).resumed_from == 4


# ----------------------------------------------------------------------------- guards


def test_a_non_finite_gradient_stops_before_the_optimizer_step(tmp_path):
    recipe = make_recipe()
    stage = methods.stages("lora", recipe)[0]
    model = fresh_tiny()

    def poison(done, loss):
        if done == 2:  # the backward of step 3 yields an inf gradient; its loss is finite
            p = next(p for n, p in model.named_parameters() if "lora_B" in n)
            p.register_hook(lambda g: g * float("inf"))
            poison.before = _lora_state(model)

    with pytest.raises(TrainingError, match=r"step 3: gradient norm is (inf|nan); stopped before the optimizer step"):
        train_one(model, stage, recipe, tmp_path, on_step=poison)
    after = _lora_state(model)
    for k, v in poison.before.items():
        assert torch.equal(after[k], v), f"{k} was updated"
    assert [s for s, _ in Checkpoints(tmp_path / "train" / "checkpoint").complete()] == [2]


def test_nothing_non_finite_is_ever_saved(tmp_path):
    from lingotune.methods.base import save_embeddings

    model = fresh_tiny()
    with torch.no_grad():
        model.get_input_embeddings().weight[5, 3] = float("nan")
    with pytest.raises(TrainingError, match="model.embed_tokens.weight holds NaN"):
        save_embeddings(model, tmp_path)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    with pytest.raises(TrainingError, match="checkpoint at step 3: model.embed_tokens.weight holds NaN"):
        Checkpoints(tmp_path / "ck").save(3, dict(model.named_parameters()), opt, sched, {})
    assert list(tmp_path.rglob("*.safetensors")) == [] and not list((tmp_path / "ck").glob("step-*"))


def test_a_diverging_loss_stops_the_stage(tmp_path):
    """Full fine-tuning of the tiny model at lr 1.0: the loss jumps from 4.9 to about 29 at once."""
    recipe = make_recipe(**{"train.full_lr": 1.0, "train.max_grad_norm": 1.0})
    with pytest.raises(TrainingError) as e:
        train_one(fresh_tiny(), methods.stages("full", recipe)[0], recipe, tmp_path, steps=12)
    msg = str(e.value)
    assert re.fullmatch(r"train step \d: loss [\d.]+ \(mean of the last 3 steps\) is [\d.]+x the stage's first loss "
                        r"4\.\d+: training diverged .*; the stage is not marked complete", msg), msg
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["loss"] > 4 * 4.8


def test_divergence_check_names_the_ratio_and_can_be_turned_off(tmp_path):
    from lingotune.train import StageRun, _diverged

    run = StageRun.__new__(StageRun)
    run.cfg = make_recipe().train
    run.stats = {"first_loss": 2.1}
    assert _diverged(run, [2.0, 1.9, 1.8]) is None
    assert "11.0x the stage's first loss 2.1" in _diverged(run, [22.0, 23.0, 24.3])
    assert _diverged(run, [0.2, 0.9, 1.0]) is None  # 4x a tiny loss, but less than a nat above it
    run.cfg = make_recipe(**{"train.max_loss_ratio": None}).train
    assert _diverged(run, [22.0, 23.0, 24.3]) is None


def test_ctrl_c_in_the_middle_of_a_step_keeps_the_last_complete_state(tmp_path):
    """A second Ctrl-C (or one outside the main thread) lands inside a step: that step is dropped
    and the newest checkpoint is the last complete step's."""
    recipe = make_recipe(**{"train.checkpoint_every": 1})
    stage = methods.stages("lora", recipe)[0]
    calls, real = [], stage.loss

    class Breaks:
        name = "causal_lm"

        def count(self, batch):
            return real.count(batch)

        def __call__(self, model, batch, label_only):
            calls.append(1)
            if len(calls) == 4:  # the forward of step 4
                raise KeyboardInterrupt
            return real(model, batch, label_only)

    stage.loss = Breaks()
    with pytest.raises(TrainingError, match="interrupted; checkpoint at step 3"):
        train_one(fresh_tiny(), stage, recipe, tmp_path)


# ----------------------------------------------------------------------------- safe defaults


def test_no_torch_load_without_weights_only():
    src = Path(__file__).resolve().parents[1] / "src"
    calls = [(p, m.group(0)) for p in src.rglob("*.py") for m in re.finditer(r"torch\.load\([^)]*\)", p.read_text())]
    assert calls, "the checkpoint loader uses torch.load"
    assert all("weights_only=True" in c for _, c in calls), calls


def test_remote_code_is_off_unless_the_recipe_asks(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lingotune.models import ModelLoadError, load_model

    seen = []

    def spy(*a, **kw):
        seen.append(kw.get("trust_remote_code"))
        raise OSError("stop here")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", spy)
    (tmp_path / "config.json").write_text("{}")
    for kw in ({}, {"trust_remote_code": True}):
        with pytest.raises(ModelLoadError):
            load_model(str(tmp_path), **kw)
    assert seen == [False, True]
    assert make_recipe().model.trust_remote_code is False


def test_an_api_key_never_reaches_an_error_message_or_a_file(tmp_path, monkeypatch):
    """A server that echoes the Authorization header in its error body; the key must not surface."""
    import http.server
    import threading

    from typer.testing import CliRunner

    from lingotune.cli import app

    class Echo(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.dumps({"error": f"bad key {self.headers.get('Authorization')}"}).encode()
            self.send_response(401, f"Unauthorized {self.headers.get('Authorization')}")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    secret = "sk-test-SECRET-4242"
    monkeypatch.setenv("MY_KEY", secret)
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "en.jsonl"
    src.write_text(json.dumps({"instruction": "Hello there, friend", "output": "Hi"}) + "\n")
    res = CliRunner().invoke(app, ["data", "translate", str(src), "--out", "out.jsonl", "--to", "ru", "--model", "m",
                                   "--base-url", f"http://127.0.0.1:{server.server_port}/v1", "--api-key-env", "MY_KEY"])
    server.shutdown()
    assert res.exit_code == 2 and "HTTP 401" in res.output
    assert secret not in res.output
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert secret not in f.read_text(errors="replace"), f


def test_a_non_finite_loss_before_any_checkpoint_says_there_is_none(tmp_path):
    model = fresh_tiny()
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "layers.0" in n).fill_(float("nan"))
    with pytest.raises(TrainingError, match=r"step 1: loss is nan; stopped before the optimizer step; "
                                            r"no checkpoint was written yet"):
        train_one(model, methods.stages("lora", make_recipe())[0], make_recipe(), tmp_path)
    assert not (tmp_path / "train" / "checkpoint").exists() or not Checkpoints(tmp_path / "train" / "checkpoint").complete()


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MB filesystem (tmpfs); skipped where this process may not mount one."""
    import subprocess

    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()[:100]}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_really_full_disk_keeps_the_last_checkpoint_and_resume_continues(tmp_path, small_disk):
    import shutil

    from lingotune.train import train_stage

    recipe = make_recipe()
    stage = methods.stages("lora", recipe)[0]

    def go(out, resume=False):
        torch.manual_seed(0)
        model, groups = stage.setup(fresh_tiny())
        train_stage(model, groups, make_items(), steps=8, cfg=recipe.train, seed=0, pad_id=0,
                    stage_dir=out, log_path=tmp_path / f"{out.name}.jsonl", log_key={"stage": "train"}, resume=resume)
        return model

    ref = go(tmp_path / "ref")
    one = sum(f.stat().st_size for f in (tmp_path / "ref" / "checkpoint" / "step-00000008").iterdir())
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * max(0, free - int(1.5 * one)))  # room for one checkpoint, not two
    with pytest.raises(TrainingError) as e:
        go(small_disk / "run")
    msg = str(e.value)
    assert "\n" not in msg and ("no space left on device" in msg or "is the disk full?" in msg), msg
    assert re.search(r"the checkpoint at step \d is intact", msg), msg
    ck = Checkpoints(small_disk / "run" / "checkpoint")
    assert len(ck.complete()) == 1 and not list(ck.root.glob("*.tmp"))
    (small_disk / "filler").unlink()  # space freed
    model = go(small_disk / "run", resume=True)
    for k, v in _lora_state(ref).items():
        assert torch.equal(_lora_state(model)[k], v)


@pytest.mark.bundled
def test_a_huge_learning_rate_on_the_bundled_model_stops_as_diverged(bundled, tmp_path):
    """The case found by hand: DParT stage 1 at lr 1e6 took the loss from 2.1 to 23 and was saved as complete."""
    import copy

    from lingotune.data.batches import tokenize_all
    from lingotune.data.starter import generate

    model, tok = copy.deepcopy(bundled[0]), bundled[1]
    data = generate("ru", seed=0, n_train=16)
    from lingotune.data.pairs import build_stage1

    examples = build_stage1(data.train_pairs, "ru", 0)[:16]
    items, _ = tokenize_all(examples, tok, 96, "answer")
    recipe = make_recipe(**{"train.embedding_lr": 1e6, "train.batch_size": 4, "train.max_len": 96})
    stage = methods.stages("dpart", recipe)[0]
    with pytest.raises(TrainingError, match=r"training diverged|loss is (nan|inf)|gradient norm is"):
        train_one(model, stage, recipe, tmp_path, items=items, steps=8)
    assert not (tmp_path / "stage1" / "embeddings.safetensors").exists()


def test_atomic_dir_touches_no_folder_of_the_user(tmp_path):
    """The temporary folder has a unique hidden name: a user's `<name>.tmp` next to the target survives, the old
    target is replaced whole, and a failed block leaves the old one intact."""
    from lingotune.files import atomic_dir

    (tmp_path / "model.tmp").mkdir()
    (tmp_path / "model.tmp" / "notes.txt").write_text("mine")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "old.txt").write_text("old")
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "new.txt").write_text("new")
    assert (tmp_path / "model.tmp" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["new.txt"]
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("crash")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "model.tmp"]  # no temporary folder left
