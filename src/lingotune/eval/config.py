"""What an evaluation run does: `EvalConfig` (the pipeline and the CLI build one)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lingotune import languages


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: list[str] = Field(
        default_factory=list,
        description="Task names (files in lingotune/eval/tasks) or paths to task YAML files; empty = the default suite of the run's language.",
    )
    every_stage: list[str] = Field(
        default_factory=list,
        description="Tasks also evaluated after every stage but the last (label '<method>-<stage>', e.g. "
        "dpart-stage1), to see what each stage moves; list them in `tasks` too, so the untouched model has them.",
    )
    limit: int | None = Field(None, ge=1, description="Evaluate at most this many examples per task (None = all).")
    limits: dict[str, int] = Field(
        default_factory=dict,
        description="Per-task caps that override `limit`, e.g. {danetqa: 24, flores_ru_from_en: 8} (slow tasks get fewer examples).",
    )
    generate_limits: dict[str, int] = Field(
        default_factory=dict,
        description="Yes/no tasks in mode both: generate (accuracy, rate, f1) on only the first N of the examples "
        "scored by log-likelihood, e.g. {danetqa: 64} (a whole validation set by log-likelihood, a sample for the rate).",
    )
    sample: bool = Field(
        False, description="With `limit`: draw the examples at random (seeded) instead of taking the first ones."
    )
    seed: int = Field(0, description="Seed for sampling examples, k-shot demonstrations, TERRa prompt choice and bootstrap.")
    batch_size: int = Field(8, ge=1, description="Examples per forward/generate call.")
    max_new_tokens: int = Field(8, ge=1, le=256, description="New tokens generated for a yes/no answer.")
    translation_max_new_tokens: int = Field(
        256, ge=8, le=2048,
        description="Cap on new tokens for a translation (the budget is 2x the source's tokens + 16, capped here).",
    )
    copy_max_new_tokens: int = Field(
        2048, ge=16, le=8192,
        description="Cap on new tokens for a copy task's reply (the budget is 2x the source's tokens + 16, capped here; "
        "a Korean FLORES paragraph is up to 1016 tokens for SmolLM2's tokenizer).",
    )
    mode: Literal["generate", "loglik", "both"] = Field(
        "generate", description="Yes/no scoring: greedy generation (accuracy, rate), log-likelihood of the yes/no words (accuracy_ll), or both."
    )
    shots: list[int] | None = Field(
        None, description="k-shot settings for tasks that allow demonstrations (overrides the task's own `shots`)."
    )
    data_root: str | None = Field(None, description="Root of the shared data (default: lingotune.paths.data_root()).")
    comet_model: str | None = Field(
        None, description="Local COMET checkpoint (.ckpt) for translation; default $LINGOTUNE_COMET; COMET is skipped without one."
    )
    n_bootstrap: int = Field(1000, ge=0, le=100_000, description="Bootstrap resamples for 95% confidence intervals (0 = none).")
    bpc_max_lines: int | None = Field(
        None, ge=1, description="Lines scored by perplexity tasks when `limit` is not set (None = all)."
    )

    def task_names(self, lang: str) -> list[str]:
        """The tasks this config evaluates for language `lang`: `tasks`, or the language's default suite."""
        return list(self.tasks) or list(languages.get_language(lang).eval_suite)

    @field_validator("tasks")
    @classmethod
    def _no_blank(cls, v: list[str]) -> list[str]:
        out = [t.strip() for t in v if t.strip()]
        return out

    @field_validator("shots")
    @classmethod
    def _shots(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(k < 0 or k > 64 for k in v):
            raise ValueError("shots: each k must be between 0 and 64")
        return v
