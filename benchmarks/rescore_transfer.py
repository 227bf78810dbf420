"""Add the probe's transfer-proper metrics (gain_other, transfer_excess; `lingotune.eval.transfer`) to a grid's
cells scored before those metrics existed, from each cell's per-item files. Nothing is generated or re-run:
each later model's per-item correctness (eval/<label>/<task>.jsonl) is scored again by the probe's own code
(`transfer._scored`) against the untouched cell's result, with the cell's recipe's bootstrap settings; the
recomputed transfer_gain must equal the recorded one, or the script stops. Each updated result is marked
`rescored: <commit>`, in results.json and in eval/<label>/scores.json.

    python benchmarks/rescore_transfer.py docs/results/grid_ru_ll

Then `lingotune compare ... --resume` (or the next cell) writes the report with them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from lingotune.eval import load_task, transfer
from lingotune.eval.config import EvalConfig
from lingotune.files import save_json


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rescore(grid: Path, commit: str) -> list[str]:
    """Update every later model's transfer results under `grid` in place; what was done, a line per result."""
    cells = {p.parent.name: p for p in sorted(grid.glob("*/*/results.json"))}
    untouched = json.loads(cells.pop("untouched").read_text())["evals"]["untouched"] if "untouched" in cells else {}
    done = []
    for name, path in cells.items():
        res = json.loads(path.read_text())
        if not res.get("complete"):
            continue
        cfg = EvalConfig(**(yaml.safe_load((path.parent / "recipe.yaml").read_text()).get("eval") or {}))
        for label, tasks in res["evals"].items():
            scores_path = path.parent / "eval" / label / "scores.json"
            scores = json.loads(scores_path.read_text())
            for task, r in tasks.items():
                ref = untouched.get(task)
                if not (isinstance(r, dict) and "transfer_gain" in r and ref and "correct_ids" in ref):
                    continue
                _, metrics, cis = transfer._scored(_records(path.parent / "eval" / label / f"{task}.jsonl"), ref, cfg, {})
                if abs(metrics["transfer_gain"] - r["transfer_gain"]) > 1e-3:
                    raise SystemExit(f"{path}: {label}/{task}: transfer_gain {metrics['transfer_gain']:.4f} from the "
                                     f"per-item file, {r['transfer_gain']} recorded; not rescored")
                for target in (r, scores[task]):
                    for key in ("gain_other", "transfer_excess"):
                        target[key] = round(metrics[key], 4)
                        target.setdefault("ci", {})[key] = cis[key]
                    target["rescored"] = commit
                    if "metrics" in target:  # the declarations as the task now makes them
                        target["metrics"] = load_task(task).describe_metrics(target)
                done.append(f"{name} {label} {task}: transfer_gain {r['transfer_gain']:+.1f}, gain_other "
                            f"{r['gain_other']:+.1f}, transfer_excess {r['transfer_excess']:+.1f} {cis['transfer_excess']}")
            save_json(scores_path, scores)
        save_json(path, res)
    return done


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python benchmarks/rescore_transfer.py GRID_OR_RECORD_DIR", file=sys.stderr)
        return 2
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    for line in rescore(Path(argv[0]), commit or "unknown"):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
