"""Data parallelism across processes (lingotune.distributed): two CPU processes under torchrun (gloo on
127.0.0.1) train like one process with the same global batch, the row-sparse fast path included."""

from __future__ import annotations

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


def torchrun(script: Path, *args: str, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --nproc_per_node nproc script args` on a free port, this lingotune first."""
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(rank 0's result, rank 1's, the 1-process result, the 2-process output folder)."""
    two, one = tmp_path_factory.mktemp("two"), tmp_path_factory.mktemp("one")
    done = torchrun(HERE / "ddp_worker.py", str(two))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [torch.load(two / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
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
