"""Data parallelism across processes (lingotune.distributed): two CPU processes under torchrun (gloo on
127.0.0.1) train like one process with the same global batch, the row-sparse fast path included."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import ddp_worker  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --nproc_per_node nproc args` (a script or -m module, and its arguments)
    on a free port of 127.0.0.1, with this lingotune first on the path."""
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",  # CPU processes, gloo, also on a GPU box
               PYTHONPATH=os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(rank 0's result, rank 1's, the 1-process result, the 2-process output folder)."""
    two, one = tmp_path_factory.mktemp("two"), tmp_path_factory.mktemp("one")
    done = torchrun(str(HERE / "ddp_worker.py"), str(two))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [torch.load(two / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    if torch.cuda.is_available():  # the reference runs on the CPU too
        done = torchrun(str(HERE / "ddp_worker.py"), str(one), nproc=1)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return ranks[0], ranks[1], torch.load(one / "rank0.pt", weights_only=False), two
    return ranks[0], ranks[1], ddp_worker.main(one), two


VARIANT_CASES = [(v, c) for v in ddp_worker.VARIANTS for c in ddp_worker.CASES]


@pytest.mark.parametrize("variant, case", VARIANT_CASES)
def test_two_processes_train_the_weights_of_one(runs, variant, case):
    r0, _, one, _ = runs
    assert r0["world_size"] == 2 and one["world_size"] == 1
    a, b = r0[variant][case], one[variant][case]
    assert a and set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)  # lr 1e-2: 1e-3 of a step
    if case == "stage1":  # the embeddings did train, and only rows that occurred
        w0, w = r0[variant]["initial"]["model.embed_tokens.weight"], a["model.embed_tokens.weight"]
        changed = (w0 != w).any(1).nonzero().flatten()
        assert len(changed) > 10 and changed.min() >= 3 and changed.max() < 60


def test_replicas_and_lazy_adam_state_stay_equal(runs):
    r0, r1, one, _ = runs
    for variant in ddp_worker.VARIANTS:
        for case in ddp_worker.CASES:
            for k, t in r0[variant][case].items():
                assert torch.equal(t, r1[variant][case][k]), (variant, case, k)
        s0, s1, s = r0[variant]["stage1_state"], r1[variant]["stage1_state"], one[variant]["stage1_state"]
        assert set(s0) == set(s1) == set(s) >= {"ids", "step", "exp_avg", "exp_avg_sq"}
        for k in s0:
            assert torch.equal(s0[k], s1[k]), (variant, k)
        assert torch.equal(s0["ids"], s["ids"]) and torch.equal(s0["step"], s["step"])  # the same touched rows
        torch.testing.assert_close(s0["exp_avg"], s["exp_avg"], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(s0["exp_avg_sq"], s["exp_avg_sq"], rtol=1e-5, atol=1e-9)


def test_fast_path_stays_on_across_processes(runs):
    r0, _, one, _ = runs
    for variant in ddp_worker.VARIANTS:
        notes = r0[variant]["stage1_notes"]
        assert "row-sparse embeddings, lazy row Adam" in notes and "label-only logits" in notes
        assert "2 processes" in notes and "2 processes" not in one[variant]["stage1_notes"]
        assert r0[variant]["results"]["lora"]["world_size"] == 2
        assert r0[variant]["results"]["lora"]["final_loss"] == pytest.approx(one[variant]["results"]["lora"]["final_loss"],
                                                                            rel=1e-5)


@pytest.mark.parametrize("case", ddp_worker.CASES)
def test_data_is_sharded_without_duplicates_or_losses(runs, case):
    r0, r1, one, _ = runs
    for variant in ddp_worker.VARIANTS:
        a, b, both = r0[variant]["seen"][case], r1[variant]["seen"][case], one[variant]["seen"][case]
        assert len(a) == len(b) == len(both) // 2 == ddp_worker.STEPS * 2
        assert Counter(a) + Counter(b) == Counter(both)


def test_only_rank_zero_writes(runs):
    *_, two = runs
    for variant in ddp_worker.VARIANTS:
        lines = (two / variant / "lora" / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == ddp_worker.STEPS  # one line per step, not one per process
        steps = sorted(p.name for p in (two / variant / "lora" / "checkpoint").iterdir())
        assert steps == ["step-00000002", "step-00000004"]


SMALL = ["--set", "data.max_stage1=8", "--set", "data.max_stage2=8", "--set", "method.stage1.steps=2",
         "--set", "method.stage2.steps=2", "--set", "train.batch_size=2", "--set", "train.max_len=64",
         "--set", "train.precision=fp32", "--set", "train.checkpoint_every=2", "--set", "eval.tasks=[starter_heldout]",
         "--set", "eval.limit=2", "--set", "output.sample_prompts=1"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama with the character-level chat tokenizer of test_eval_run, saved."""
    from helpers import fresh_tiny
    from test_eval_run import tiny_tokenizer

    tok = tiny_tokenizer()
    out = tmp_path_factory.mktemp("tiny-chat")
    fresh_tiny(eos_token_id=tok.eos_token_id).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_cli_run_under_torchrun_matches_one_process(tiny_dir, tmp_path):
    """The documented launch, `torchrun --nproc_per_node 2 -m lingotune.cli run ...`: one run directory written
    by rank 0 (world_size 2 in results.json, its evaluations), the same trained weights as one process."""
    from safetensors.torch import load_file

    args = ["run", "--set", f"model.source={tiny_dir}", *SMALL]
    done = torchrun("-m", "lingotune.cli", *args, "--out", str(tmp_path / "two"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # the reference: torchrun with one process (a launch that accelerate still sees as distributed)
    res = torchrun("-m", "lingotune.cli", *args, "--out", str(tmp_path / "one"), nproc=1)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert set(two["evals"]) == set(one["evals"]) == {"untouched", "dpart-stage1", "dpart"}  # rank 0 evaluated
    assert (tmp_path / "two" / "report.md").exists()
    for name in ("stage1", "stage2"):
        assert two["stages"][name]["world_size"] == 2
        assert two["stages"][name]["final_loss"] == pytest.approx(one["stages"][name]["final_loss"], rel=1e-5)
    assert "row-sparse embeddings, lazy row Adam" in two["stages"]["stage1"]["fast_path"]
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 1, 2]  # one line per step, written once
    assert done.stdout.count("done in") == 1  # rank 0 alone speaks
    for rel in ("dpart/stage1/embeddings.safetensors", "dpart/stage2/embeddings.safetensors",
                "dpart/stage2/adapter/adapter_model.safetensors"):
        a, b = load_file(tmp_path / "two" / rel), load_file(tmp_path / "one" / rel)
        assert set(a) == set(b)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("env, what", [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")])
def test_fsdp_and_deepspeed_on_cpu_are_one_line_errors(tmp_path, monkeypatch, env, what):
    from typer.testing import CliRunner

    from lingotune.cli import app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(env, "true")
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), "--set", "model.source=./no/such/model"])
    assert res.exit_code == 2
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {what}") and "torchrun --nproc_per_node" in lines[0]
    assert not (tmp_path / "r").exists()


def test_global_batch_must_split_evenly_over_processes():
    from lingotune import distributed
    from lingotune.errors import UserError

    distributed.check_batch(3, 1, 1)
    distributed.check_batch(1, 4, 2)
    with pytest.raises(UserError, match=r"batch_size x train.grad_accum = 3 .* multiple of the 2 processes"):
        distributed.check_batch(3, 1, 2)
    assert [distributed.shard(list(range(6)), r, 3) for r in range(3)] == [[0, 1], [2, 3], [4, 5]]
