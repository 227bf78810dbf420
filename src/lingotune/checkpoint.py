"""Checkpoints of one training stage: atomic, verified, rotating.

Layout: `<stage_dir>/checkpoint/step-00000020/` holds `state.pt` (trained tensors, optimizer,
scheduler, RNG) and `meta.json` (step, size and sha256 of state.pt, the recipe's training
fields, running statistics). A checkpoint is written into `step-N.tmp/` and renamed into place
once complete, `meta.json` last; the newest `keep` complete checkpoints are kept (default 2).

Loading tries the newest first and verifies size, checksum and structure; a torn or corrupt one
is reported and the previous one used. `state.pt` is read with `torch.load(weights_only=True)`,
which refuses anything but tensors and plain containers, so a crafted file cannot run code.
Nothing that is not finite is ever written: `assert_finite` guards every save.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from lingotune.errors import TrainingError, one_line, write_reason
from lingotune.files import sha256_file

_PREFIX = "step-"
_KEYS = ("params", "optimizer", "scheduler", "rng")


def assert_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    """TrainingError naming the first tensor holding NaN or inf."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise TrainingError(f"{what}: {name} holds NaN or inf values; not saved")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Checkpoints:
    """The checkpoints of one stage under `root`."""

    def __init__(self, root: Path, keep: int = 2):
        self.root, self.keep = Path(root), max(1, keep)

    def complete(self) -> list[tuple[int, Path]]:
        """(step, folder) of every checkpoint whose meta.json was written, newest first."""
        if not self.root.is_dir():
            return []
        out = []
        for p in self.root.iterdir():
            if p.is_dir() and p.name.startswith(_PREFIX) and p.name[len(_PREFIX):].isdigit() and (p / "meta.json").exists():
                out.append((int(p.name[len(_PREFIX):]), p))
        return sorted(out, reverse=True)

    def latest_step(self) -> int:
        found = self.complete()
        return found[0][0] if found else 0

    def save(self, step: int, params: dict[str, torch.Tensor], optimizer, scheduler, meta: dict) -> Path:
        """Write checkpoint `step` atomically and drop all but the newest `keep`; TrainingError on failure."""
        assert_finite(params, f"checkpoint at step {step}")
        final = self.root / f"{_PREFIX}{step:08d}"
        tmp = final.with_name(final.name + ".tmp")
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            state = {"params": {n: p.detach().cpu().clone() for n, p in params.items()},
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "rng": torch.get_rng_state()}
            torch.save(state, tmp / "state.pt")
            info = {"step": step, "bytes": (tmp / "state.pt").stat().st_size, "sha256": sha256_file(tmp / "state.pt"), **meta}
            with open(tmp / "meta.json", "w") as f:
                f.write(json.dumps(info))
                f.flush()
                os.fsync(f.fileno())
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            _fsync_dir(self.root)
        except (OSError, RuntimeError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            last = self.latest_step()
            kept = f"the checkpoint at step {last} is intact" if last else "no earlier checkpoint exists"
            raise TrainingError(f"cannot write checkpoint {final}: {write_reason(e)}; {kept}") from None
        self._prune()
        return final

    def _prune(self) -> None:
        for _, p in self.complete()[self.keep:]:
            shutil.rmtree(p, ignore_errors=True)
        for p in self.root.glob(f"{_PREFIX}*.tmp"):
            shutil.rmtree(p, ignore_errors=True)

    def _load(self, folder: Path) -> tuple[dict, dict]:
        """(state, meta) of one checkpoint folder; ValueError saying why it cannot be used."""
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"meta.json unreadable ({one_line(e)})") from None
        path = folder / "state.pt"
        if not path.exists() or path.stat().st_size != meta.get("bytes"):
            raise ValueError("state.pt is missing or truncated")
        if sha256_file(path) != meta.get("sha256"):
            raise ValueError("state.pt does not match its checksum")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - unpickling refusals and corrupt archives alike
            raise ValueError(f"state.pt cannot be loaded safely ({one_line(e)[:120]})") from None
        if not isinstance(state, dict) or any(k not in state for k in _KEYS):
            raise ValueError(f"state.pt lacks {', '.join(k for k in _KEYS if not isinstance(state, dict) or k not in state)}")
        return state, meta

    def load_latest(self, warn=print) -> tuple[dict, dict] | None:
        """(state, meta) of the newest usable checkpoint; None when there is none at all.

        A checkpoint that fails verification is reported through `warn` and the previous one tried;
        when every one fails, TrainingError lists them (nothing is loaded).
        """
        bad = []
        for step, folder in self.complete():
            try:
                state, meta = self._load(folder)
            except ValueError as e:
                bad.append(f"step {step}: {e}")
                warn(f"checkpoint {folder} is not usable ({e}); trying an earlier one")
                continue
            return state, meta
        if bad:
            raise TrainingError(f"{self.root}: no usable checkpoint ({'; '.join(bad)}); start again with --overwrite")
        return None
