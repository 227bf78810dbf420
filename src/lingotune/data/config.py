"""The recipe's `data:` section: where training data comes from and how it is checked
(`lingotune.data.build.build_datasets` turns it into the stage-1 and stage-2 sets).

    data:
      root: null                 # data root; null = lingotune.paths.data_root()
      sources:
        - format: starter        # the project's own CLDR/num2words data (default)
        - format: xquad          # path defaults to the set's folder under the root
          limit: 500
        - format: paired         # an English file and its translation
          en: my/alpaca_en.json
          target: my/alpaca_ru.jsonl
          align: id
        - format: paired         # both sides from the hub: one dataset's en and ru configs, joined on `id`
          en_hub: {path: org/parallel, name: en, split: train}
          target_hub: {path: org/parallel, name: ru, split: train}
          align: id
        - format: hub            # target-language instructions from the hub (stage 2)
          hub: {path: org/alpaca-ru, split: train, columns: {question: instruction, answer: output}}
      pairs: {instruction: en, both_share: 1.0}
      max_stage1: null
      checks: {script_check: true, leakage_check: true}

Paths are relative to the data root unless absolute. Every source yields aligned (English, target) pairs for
stage 1 and/or target-language records for stage 2 (`use`); single-file formats (alpaca, openorca, sharegpt,
prompt_completion, hf_disk, hub) have no English side and feed stage 2 only. Format `prefs` (a JSONL of
prompt/chosen/rejected strings, `lingotune.data.formats.read_prefs`) feeds the `prefs` set of preference pairs
(the dpo and orpo stages) and nothing else.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lingotune.hub import HubSpec


Format = Literal["starter", "alpaca", "openorca", "sharegpt", "prompt_completion", "parallel_text", "hf_disk", "hub",
                 "paired", "xquad", "gsm8k", "msvamp", "mt_bench", "ifeval", "mintaka", "flores", "tatoeba", "text",
                 "prefs"]
SINGLE = {"alpaca", "openorca", "sharegpt", "prompt_completion", "hf_disk", "hub"}
TWO_FILES = {"paired", "parallel_text"}
# Default location of each shared set under the data root ({lang} = target language).
DEFAULT_PATH = {
    "xquad": "xquad", "gsm8k": "gsm8k_questions_ru_en", "msvamp": "msvamp", "mt_bench": "mt_bench_{lang}",
    "ifeval": "ifeval_en_{lang}", "mintaka": "mintaka_en_{lang}/mintaka_dev.json", "flores": "flores200",
    "tatoeba": "tatoeba_v1",
}
# Sources whose target prompt quotes English text on purpose (translation instructions): no script check on it.
TRANSLATION_FORMATS = {"parallel_text", "flores", "tatoeba", "ifeval"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceSpec(Strict):
    format: Format = Field(description="Layout of the source: starter (the project's own data), a single-file "
                           "format (alpaca, openorca, sharegpt, prompt_completion, hf_disk, hub), two files "
                           "(paired, parallel_text), a shared set (xquad, gsm8k, msvamp, mt_bench, ifeval, mintaka, "
                           "flores, tatoeba), plain target-language text (text: .txt one text a line, JSON/JSONL "
                           "with a 'text' field, or TSV with a header), or preference pairs (prefs: JSONL of prompt/chosen/rejected "
                           "strings, optional system and id).")
    path: str | None = Field(None, description="File or folder (hub: the dataset id). Relative paths resolve against the "
                             "data root, except those starting with './' (the current directory: files you built, "
                             "e.g. ./runs/prefs_ko/labels.jsonl). Shared sets default to their folder under the root.")
    en: str | None = Field(None, description="paired / parallel_text: the English file.")
    target: str | None = Field(None, description="paired / parallel_text: the target-language file.")
    hub: HubSpec | None = Field(None, description="format hub: the dataset as {path, name, split, revision, columns, "
                                "values} (instead of 'path' and 'split'); path may be a local folder in the hub's layout.")
    en_hub: HubSpec | None = Field(None, description="paired: the English side from a hub dataset (instead of 'en').")
    target_hub: HubSpec | None = Field(None, description="paired: the target side from a hub dataset (instead of "
                                       "'target'), e.g. the same dataset's other config, joined by align: id.")
    lang: str | None = Field(None, description="Single-file formats and prefs: the language the file is written "
                             "in (default: the recipe's language).")
    align: Literal["index", "id"] = Field("index", description="paired: align records by position or by `id_field`.")
    id_field: str = Field("id", min_length=1, description="Field holding a record's id (paired with align: id).")
    text_field: str = Field("text", min_length=1, description="format text, JSON/JSONL files: the field holding "
                            "each row's text (e.g. 'passage'); TSV files with a header: the column (e.g. 'Text').")
    mode: Literal["qa", "translate"] = Field("qa", description="qa: question -> target-language answer; translate: "
                                             "English text -> its translation (ifeval, flores, tatoeba always translate).")
    split: str = Field("train", min_length=1, description="hf_disk / hub: the split to read.")
    all_turns: bool = Field(False, description="sharegpt: keep every user->assistant exchange, not only the first.")
    limit: int | None = Field(None, ge=1, description="Use at most this many records/pairs of the source (first N; "
                              "starter: the number of training pairs, default 400).")
    use: Literal["pairs", "stage2", "both", "text", "prefs"] | None = Field(
        None, description="pairs: stage-1 DParT pairs; stage2: target-language instructions for stage 2; both; text: "
        "the source's target-language records as plain text (the `text` set, e.g. LEP's embedding training); prefs: "
        "preference pairs (format prefs only). Default: both, stage2 for single-file formats, text for format text, "
        "prefs for format prefs.")

    @model_validator(mode="after")
    def _check(self):
        if self.hub and self.format != "hub":
            raise ValueError(f"'hub' is for format hub (format {self.format}: 'en_hub'/'target_hub' for paired)")
        if (self.en_hub or self.target_hub) and self.format != "paired":
            raise ValueError("'en_hub' and 'target_hub' are for format paired")
        if self.format in SINGLE and not (self.path or self.hub):
            raise ValueError(f"format {self.format} needs 'path'" + (" or 'hub'" if self.format == "hub" else ""))
        if self.format in SINGLE and self.use in ("pairs", "both"):
            raise ValueError(f"format {self.format} has no English side, so use must be 'stage2' "
                             f"(for pairs use format 'paired' with a translation, see `lingotune data translate`)")
        if self.format in TWO_FILES and not ((self.en or self.en_hub) and (self.target or self.target_hub)):
            raise ValueError(f"format {self.format} needs 'en' and 'target' files" +
                             (" (or 'en_hub' and 'target_hub')" if self.format == "paired" else ""))
        if self.format == "text" and (not self.path or self.use not in (None, "text")):
            raise ValueError("format text needs 'path' and is used as text only")
        is_prefs = self.format == "prefs"
        if is_prefs != (self.uses == "prefs") or (is_prefs and not self.path):
            raise ValueError("format prefs needs 'path' and is used as prefs only (and only format prefs is)")
        return self

    def hub_spec(self) -> HubSpec:
        """format hub: `hub`, or `path` and `split`."""
        return self.hub or HubSpec(path=self.path, split=self.split)

    def where(self) -> str:
        """The source's file, folder or hub dataset, for reports."""
        side = self.hub or self.target_hub
        return side.label() if side else self.path or self.target or ""

    @property
    def uses(self) -> str:
        default = {"text": "text", "prefs": "prefs"}.get(self.format, "stage2" if self.format in SINGLE else "both")
        return self.use or default


class PairConfig(Strict):
    instruction: str = Field("en", min_length=1, description="Instruction appended to the English question in stage 1: "
                             "'en' (Language.answer_in_en, 'Answer in Russian.'), 'native' (answer_in_native, "
                             "'Ответь на русском языке.') or a custom string used as written.")
    both_share: float = Field(1.0, ge=0.0, le=1.0, description="Share of pairs that yield both examples (target and "
                              "English+instruction); the rest yield one.")
    single_kind: Literal["random", "target", "en2target"] = Field("random", description="Which example a single-variant "
                                                                   "pair yields.")


class CheckConfig(Strict):
    script_check: bool = Field(True, description="Drop records whose text is not in their language's script.")
    script_threshold: float = Field(0.5, gt=0.0, le=1.0, description="Minimum share of letters in the language's script.")
    min_letters: int = Field(10, ge=0, description="Texts with fewer letters are not script-checked.")
    drop_duplicates: bool = Field(True, description="Drop repeated (target prompt, answer) records (always counted).")
    leakage_check: bool = Field(True, description="Drop training records sharing a word n-gram with an evaluation text.")
    leakage_ngram: int = Field(8, ge=3, le=50, description="n of the word n-grams of the leakage check.")
    leakage_tasks: list[str] = Field(
        default_factory=list, description="Tasks the leakage check also holds out, besides those the run evaluates "
        "(e.g. a grid's tasks, when a second grid evaluates the same training on other tasks).")
    strict: bool = Field(False, description="Raise on the first problem instead of dropping and counting.")


class DataConfig(Strict):
    root: str | None = Field(None, description="Data root for relative paths; null: lingotune.paths.data_root() "
                             "($LINGOTUNE_DATA or ../shared/data).")
    sources: list[SourceSpec] = Field(default_factory=lambda: [SourceSpec(format="starter")], min_length=1,
                                      description="Where training data comes from (default: the starter data).")
    pairs: PairConfig = Field(default_factory=PairConfig, description="How DParT stage-1 pairs are built.")
    pair_batching: Literal["together", "shuffled"] = Field(
        "shuffled", description="How the stage-1 DParT pairs are batched. shuffled (default, and what runs before "
        "this setting did): every example on its own. together (as the paper presents them): both questions of a "
        "pair (target-language, and English + instruction) in the same optimizer step (the step's batch_size x "
        "grad_accum examples; the halves may land in different micro-batches, processes or packed rows, and never "
        "attend to each other); with an odd step batch and no single examples to fill the odd slot, one pair is "
        "split over two consecutive steps every second step. Not the default: in the default recipe's 36-step "
        "stage 1 (one seed) together fitted the stage-1 data worse (README). No effect on data without pairs "
        "(stage2, text, prefs).")
    max_stage1: int | None = Field(None, ge=1, description="Keep at most this many stage-1 examples (after shuffling).")
    max_stage2: int | None = Field(None, ge=1, description="Keep at most this many stage-2 examples (after shuffling).")
    checks: CheckConfig = Field(default_factory=CheckConfig, description="Validation on load.")
