"""The metrics a task declares, and how the names in its results map back to them.

A task file declares each metric it reports (`MetricSpec`: name, primary, higher_is_better);
the names are those its kind produces (`KIND_METRICS`). One declaration governs every name the
metric takes in a result:
- yes/no log-likelihood mode inserts `_ll` (accuracy -> accuracy_ll, f1 -> f1_ll; rate has none);
- a k-shot setting appends `_{k}shot` (accuracy_5shot, accuracy_ll_5shot, f1_norm_5shot).
`describe` writes that mapping into each task's result (`result["metrics"]`): per result name,
the metric it comes from, primary, higher_is_better, shots and the per-example JSONL field of 0/1
correctness (`correct`, `correct_ll`, a copy task's `lcs`; null for the others). `lingotune compare` and the
reports read it from results.json alone, never from the task file.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# what each kind of task produces: metric -> higher is better
KIND_METRICS: dict[str, dict[str, bool]] = {
    "yesno": {"accuracy": True, "rate": True, "f1": True},
    "multiple_choice": {"accuracy": True, "f1": True, "accuracy_norm": True, "f1_norm": True},
    "translation": {"chrf++": True, "bleu": True, "comet": True},
    "perplexity": {"bits_per_char": False, "perplexity": False, "nll_per_token": False},
    "copy": {"len": True, "lcs": True},
    "transfer": {"transfer": True, "transfer_gain": True, "gain_other": True, "transfer_excess": True, "accuracy": True,
                 "accuracy_en": True, "lang_share": True},
    "alignment": {"cos_dist": False, "l2_dist": False, "cos_margin": True, "l2_margin": True, "cos_dist_change": False},
}
# the primary metric when a task file declares none
DEFAULT_PRIMARY = {"yesno": "accuracy", "multiple_choice": "accuracy", "translation": "chrf++",
                   "perplexity": "bits_per_char", "copy": "lcs", "transfer": "transfer", "alignment": "cos_margin"}
# the per-example record field holding each example's correctness, where a metric has one
PER_EXAMPLE = {("yesno", "accuracy"): "correct", ("multiple_choice", "accuracy"): "correct", ("copy", "lcs"): "lcs",
               ("transfer", "transfer"): "transferred", ("transfer", "accuracy"): "correct"}
# scoring modes that rename a kind's metrics (and their per-example field): mode -> infix
MODES = {"yesno": {"generate": "", "loglik": "_ll"}}

_SHOTS = re.compile(r"(.+?)(?:_(\d+)shot)?")


class MetricSpec(BaseModel):
    """One metric a task reports."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The metric as the task's kind produces it (accuracy, f1, chrf++, bits_per_char, ...).")
    primary: bool = Field(False, description="The task's headline metric (exactly one per task): compare's significance test and plots.")
    higher_is_better: bool | None = Field(
        None, description="Direction of improvement; null = the metric's own (a contradicting value is an error).")
    compare: bool = Field(False, description="Also tested in compare's significance beside the primary: a secondary "
                          "metric a claim rests on (the probe's transfer_excess).")


def default_metrics(kind: str) -> list[MetricSpec]:
    return [MetricSpec(name=n, primary=n == DEFAULT_PRIMARY[kind], higher_is_better=h)
            for n, h in KIND_METRICS[kind].items()]


def check_metrics(kind: str, specs: list[MetricSpec] | None) -> list[MetricSpec]:
    """The declarations with directions filled in (the kind's defaults for None); ValueError in one line."""
    if specs is None:
        return default_metrics(kind)
    known = KIND_METRICS[kind]
    names = [m.name for m in specs]
    for m in specs:
        if m.name not in known:
            raise ValueError(f"{m.name!r} is not a metric of kind {kind!r} (it has {', '.join(known)}; "
                             "declare the base name: it also covers its _ll and _<k>shot forms)")
        if m.higher_is_better is not None and m.higher_is_better != known[m.name]:
            raise ValueError(f"{m.name}: higher_is_better must be {str(known[m.name]).lower()}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{', '.join(twice)} declared more than once")
    primary = [m.name for m in specs if m.primary]
    if len(primary) != 1:
        raise ValueError(f"{len(primary)} primary metrics ({', '.join(primary)}); mark exactly one `primary: true`"
                         if primary else "no primary metric; mark one with `primary: true`")
    return [m.model_copy(update={"higher_is_better": known[m.name]}) for m in specs]


def parse_name(kind: str, key: str) -> tuple[str, str, int] | None:
    """(metric, mode infix, shots) of a result name, e.g. yesno 'accuracy_ll_5shot' -> ('accuracy', '_ll', 5)."""
    base, k = _SHOTS.fullmatch(key).groups()
    for infix in sorted(MODES.get(kind, {"": ""}).values(), key=len, reverse=True):
        name = base[: len(base) - len(infix)] if base.endswith(infix) else None
        if name in KIND_METRICS.get(kind, {}):
            return name, infix, int(k or 0)
    return None


def describe(kind: str, specs: list[MetricSpec], keys) -> dict[str, dict[str, Any]]:
    """Result name -> its declaration, for the names in `keys` a declared metric governs (in declared order)."""
    parsed = {key: p for key in keys if isinstance(key, str) and (p := parse_name(kind, key))}
    out = {}
    for m in specs:
        for key, (name, infix, k) in parsed.items():
            if name == m.name:
                field = PER_EXAMPLE.get((kind, name))
                out[key] = {"metric": name, "primary": m.primary, "higher_is_better": m.higher_is_better,
                            "shots": k, "per_example": field + infix if field else None}
                if m.compare:
                    out[key]["compare"] = True
    return out


def _legacy_kind(result: dict) -> str | None:
    """The kind of a result written before tasks declared their metrics, from its metric names."""
    names = {_SHOTS.fullmatch(k).group(1) for k in result if isinstance(k, str)}
    for mark, kind in (("accuracy_norm", "multiple_choice"), ("chrf++", "translation"), ("bits_per_char", "perplexity")):
        if mark in names:
            return kind
    return "yesno" if names & {"accuracy", "accuracy_ll"} else None


def result_metrics(result: dict) -> dict[str, dict[str, Any]]:
    """A task result's declared metrics (`describe`); an older result gets its kind's defaults."""
    if isinstance(result.get("metrics"), dict):
        return result["metrics"]
    kind = result.get("kind") or _legacy_kind(result)
    return describe(kind, default_metrics(kind), list(result)) if kind in KIND_METRICS else {}


def arrow(info: dict) -> str:
    """'↑' for a higher-is-better metric, '↓' for a lower-is-better one."""
    return "↑" if info.get("higher_is_better", True) else "↓"
