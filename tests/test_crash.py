"""kill -9 during training, then `--resume`: the same artefacts as a run that was never killed.

Every run here is a real `lingotune train` process on the tiny model. A killed run gets SIGKILL
from inside (no handler, no cleanup: what `kill -9` does) at a step drawn at random, either in
the middle of a step (after backward, before the optimizer step) or in the middle of writing a
checkpoint (state.pt written, meta.json not). The drawn steps come from a seeded generator, so
a failure names a case that can be rerun.

Tolerance: fp32 runs must be bit-identical. Under bf16 autocast the resumed run must match
within 1e-6 absolute on weights and 1e-6 relative on losses (measured: bit-identical too on the
machines tried; the margin allows a kernel that is not run-to-run deterministic).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

STEPS = 6
DRIVER = r"""
import json, os, signal, sys
kill = json.loads(os.environ.get("LINGOTUNE_TEST_KILL") or "null")
if kill:
    import torch
    import lingotune.train as train

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if kill["where"] in ("step", "sigint"):
        real_accumulate = train.accumulate

        def accumulate(run, step):
            out = real_accumulate(run, step)
            if run.name == kill["stage"] and step + 1 == kill["step"]:
                if kill["where"] == "sigint":
                    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of a step
                else:
                    die()  # gradients computed, optimizer step not taken
            return out

        train.accumulate = accumulate
    else:
        real_save = torch.save

        def save(obj, f, *a, **kw):
            real_save(obj, f, *a, **kw)
            if f"/{kill['stage']}/checkpoint/step-{kill['step']:08d}.tmp/" in str(f):
                die()  # state.pt written, meta.json not, the folder not renamed into place

        torch.save = save
from lingotune.cli import app
app(sys.argv[1:], prog_name="lingotune")
"""


def _lingotune(args: list[str], kill: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               LINGOTUNE_TEST_KILL=json.dumps(kill) if kill else "")
    return subprocess.run([sys.executable, "-c", DRIVER, *args], capture_output=True, text=True, env=env, timeout=300)


def _args(model: Path, out: Path, precision: str) -> list[str]:
    sets = [f"model.source={model}", f"output.dir={out}", f"train.precision={precision}", "data.max_stage1=24",
            "data.max_stage2=16", f"method.stage1.steps={STEPS}", f"method.stage2.steps={STEPS}",
            "train.batch_size=2", "train.grad_accum=2", "train.max_len=96", "train.checkpoint_every=2"]
    return ["train", *[x for s in sets for x in ("--set", s)]]


def _artefacts(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = {}
    for f in sorted(out.rglob("*.safetensors")):
        for k, v in load_file(str(f)).items():
            tensors[f"{f.relative_to(out)}:{k}"] = v
    return tensors


def _record(out: Path) -> tuple[dict, list, dict]:
    results = json.loads((out / "results.json").read_text())
    stages = {n: {k: s[k] for k in ("steps", "tokens", "first_loss", "final_loss", "examples")}
              for n, s in results["stages"].items()}
    metrics = [(r["stage"], r["step"], r["loss"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
    return stages, metrics, _artefacts(out)


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    cache = {}

    def get(precision: str):
        if precision not in cache:
            out = tmp_path_factory.mktemp(f"ref-{precision}") / "r"
            res = _lingotune(_args(tiny_model_dir, out, precision))
            assert res.returncode == 0, res.stderr[-2000:]
            cache[precision] = _record(out)
        return cache[precision]

    return get


CASES = [  # (precision, kills: (stage, where) in order, seed of the drawn steps)
    ("fp32", [("stage1", "step"), ("stage2", "step")], 1),  # killed in stage 1, resumed, killed again in stage 2
    ("fp32", [("stage2", "checkpoint")], 2),
    ("bf16", [("stage1", "checkpoint"), ("stage2", "step")], 3),
]


def _draw(rng: random.Random, where: str) -> int:
    return rng.choice(range(2, STEPS + 1, 2)) if where == "checkpoint" else rng.randint(1, STEPS)


@pytest.mark.parametrize("precision, kills, seed", CASES,
                         ids=["-".join([p] + [f"{s}@{w}" for s, w in k]) for p, k, _ in CASES])
def test_kill_9_then_resume_gives_the_uninterrupted_result(precision, kills, seed, reference, tiny_model_dir, tmp_path):
    rng = random.Random(seed)
    out = tmp_path / "r"
    for i, (stage, where) in enumerate(kills):
        step = _draw(rng, where)
        args = _args(tiny_model_dir, out, precision) + (["--resume"] if i else [])
        killed = _lingotune(args, {"where": where, "stage": stage, "step": step})
        assert killed.returncode == -9, f"not killed at {stage} {where} {step}: {killed.stderr[-1500:]}"
    resumed = _lingotune(_args(tiny_model_dir, out, precision) + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    stages, metrics, tensors = _record(out)
    ref_stages, ref_metrics, ref_tensors = reference(precision)
    assert set(tensors) == set(ref_tensors) and tensors
    assert [m[:2] for m in metrics] == [m[:2] for m in ref_metrics]  # every step once, in order
    if precision == "fp32":
        assert stages == ref_stages and metrics == ref_metrics
        for k in tensors:
            assert torch.equal(tensors[k], ref_tensors[k]), f"{k} differs after kills {kills} (seed {seed})"
    else:
        assert [m[2] for m in metrics] == pytest.approx([m[2] for m in ref_metrics], rel=1e-6)
        for k in tensors:
            torch.testing.assert_close(tensors[k], ref_tensors[k], rtol=0, atol=1e-6)
    assert not list(out.rglob("*.tmp")), "a half-written checkpoint was left behind"


def test_ctrl_c_checkpoints_the_step_exits_130_and_resume_matches(reference, tiny_model_dir, tmp_path):
    out = tmp_path / "r"
    cut = _lingotune(_args(tiny_model_dir, out, "fp32"), {"where": "sigint", "stage": "stage2", "step": 3})
    assert cut.returncode == 130, cut.stderr[-1500:]
    errors = [line for line in cut.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "stage2: interrupted; checkpoint at step 3 in" in errors[0] and "--resume" in errors[0]
    assert "Traceback" not in cut.stderr
    assert _lingotune(_args(tiny_model_dir, out, "fp32") + ["--resume"]).returncode == 0
    stages, metrics, tensors = _record(out)
    ref_stages, ref_metrics, ref_tensors = reference("fp32")
    assert stages == ref_stages and metrics == ref_metrics
    assert all(torch.equal(tensors[k], ref_tensors[k]) for k in ref_tensors)
