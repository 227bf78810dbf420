"""This machine's matmul peak: bf16 and fp32 FLOP/s of square torch matmuls, best of N.

The denominator of the model FLOPs utilisation (MFU) that `bench_train.py` reports. For each size n,
one matmul of two n x n matrices is 2 n^3 FLOPs; the best time over `--repeats` timed calls (after a
warm-up call) gives that size's rate, and the peak of a dtype is the best rate over the sizes.

    python benchmarks/bench_matmul.py                 # CPU (and CUDA when available), JSON on stdout
    python benchmarks/bench_matmul.py --json peak.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
SIZES = {"cpu": [256, 512, 1024, 2048], "cuda": [2048, 4096, 8192]}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_rate(n: int, dtype: torch.dtype, device: str, repeats: int) -> float:
    """Best FLOP/s of `a @ b` for n x n matrices over `repeats` timed calls (after one warm-up)."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.matmul(a, b, out=out)
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(a, b, out=out)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def measure(device: str = "cpu", sizes: list[int] | None = None, repeats: int = 5) -> dict:
    """{"device", "threads", "rates": {dtype: {n: FLOP/s}}, "peak": {dtype: FLOP/s}} for bf16 and fp32."""
    sizes = sizes or SIZES["cuda" if device.startswith("cuda") else "cpu"]
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32, not TF32
    rates = {name: {n: matmul_rate(n, dt, device, repeats) for n in sizes} for name, dt in DTYPES.items()}
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    return {"device": device, "name": name, "threads": torch.get_num_threads(), "repeats": repeats,
            "rates": rates, "peak": {k: max(v.values()) for k, v in rates.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", action="append", help="cpu, cuda (repeatable; default: cpu, and cuda when present)")
    ap.add_argument("--sizes", type=int, nargs="*", help="matrix sizes (default: per device)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    out = {d: measure(d, args.sizes, args.repeats) for d in devices}
    for d, r in out.items():
        for dt, rates in r["rates"].items():
            row = "  ".join(f"{n}: {v / 1e12:.3f}" for n, v in rates.items())
            print(f"{d} ({r['name']}, {r['threads']} threads) {dt}: peak {r['peak'][dt] / 1e12:.3f} TFLOP/s  [{row}]")
    text = json.dumps(out, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
