"""Answers to open prompts, for pairwise judging: prompt sets, models (local or behind an endpoint), a cache.

Prompts (`load_prompts`):
- a JSONL file (or a JSON array), one object a line: `prompt` (a non-empty string), optionally `reference`
  (a reference answer) and `id`; blank lines are skipped, anything else is a one-line error naming file:line;
- `starter`: lingotune's own stage-2 starter questions in the language (`lingotune.data.starter`), with
  their answers as references;
- `mt_bench`: the first turns of MT-Bench in the language (`mt_bench_<lang>/question_<lang>.jsonl` under the
  data root: ru, ko), with the reference answers of `reference_answer_<lang>_gpt-4.jsonl` where there is one.

Models (`ModelSpec`): `bundled`, a local directory or a hub id, with an optional PEFT adapter and trained
embeddings (`lingotune.models.load_adapted`), or `api:NAME`, the model NAME of an OpenAI-compatible endpoint
(`Endpoint` -> `lingotune.api.ChatClient` -> `inference.ApiModel`).

Answers (`answers_for`): one user turn per prompt, no system prompt, greedy, `max_new_tokens`, generated through
`inference.generate_chat` in batches. Every finished batch is appended to a `JsonlCache` keyed by the model's
identity (source, adapter and embeddings paths with their files' sizes and times; or endpoint and model name,
never the key), the prompt and the generation settings: a rerun generates only what is missing, and a model
whose answers are all cached is not even loaded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lingotune import inference
from lingotune.files import FileFormatError, JsonlCache

BUILTIN_PROMPTS = ("starter", "mt_bench")


# --------------------------------------------------------------------------------------------- the cache

# --------------------------------------------------------------------------------------------- prompts

@dataclass(frozen=True)
class Prompt:
    id: str
    prompt: str
    reference: str | None = None
    where: str = ""  # file:line (or the starter record's source)


def _rows(path: Path) -> Iterator[tuple[str, dict]]:
    """(file:line, object) for each row of a JSONL file (or JSON array); one-line errors naming file:line."""
    from lingotune.data.formats import iter_rows

    for where, obj in iter_rows(path):
        if not isinstance(obj, dict):
            raise FileFormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        yield where, obj


def _prompt_row(where: str, obj: dict) -> Prompt:
    prompt, ref = obj.get("prompt"), obj.get("reference")
    if "prompt" not in obj:
        raise FileFormatError(f"{where}: no 'prompt' field")
    if not isinstance(prompt, str):
        raise FileFormatError(f"{where}: field 'prompt' must be a string")
    if not prompt.strip():
        raise FileFormatError(f"{where}: empty prompt")
    if ref is not None and not isinstance(ref, str):
        raise FileFormatError(f"{where}: field 'reference' must be a string")
    return Prompt(str(obj.get("id", where.rsplit(":", 1)[1])), prompt, ref if ref and ref.strip() else None, where)


def _first_turns(path: Path) -> dict[str, tuple[str, str]]:
    """question_id -> (file:line, first turn) of an MT-Bench question or reference-answer file."""
    out = {}
    for where, obj in _rows(path):
        turns = obj.get("turns") or (obj.get("choices") or [{}])[0].get("turns")
        if "question_id" in obj and isinstance(turns, list) and turns:
            out[str(obj["question_id"])] = (where, str(turns[0]))
    return out


def _mt_bench(lang: str, data_root: str | None) -> list[Prompt]:
    from lingotune.paths import require_data_root

    folder = require_data_root(data_root) / f"mt_bench_{lang}"
    if not folder.is_dir():
        raise FileFormatError(f"{folder}: no MT-Bench for language {lang!r} (there are mt_bench_ru, mt_bench_ko)")
    questions = _first_turns(folder / f"question_{lang}.jsonl")
    ref_path = folder / f"reference_answer_{lang}_gpt-4.jsonl"
    refs = _first_turns(ref_path) if ref_path.exists() else {}
    return [Prompt(qid, text, refs[qid][1] if qid in refs else None, where) for qid, (where, text) in questions.items()]


def _starter(lang: str) -> list[Prompt]:
    from lingotune.data.starter import generate

    return [Prompt(r.id or str(i), r.prompt, r.response, r.source) for i, r in enumerate(generate(lang).stage2)]


def load_prompts(source: str, lang: str, data_root: str | None = None, limit: int | None = None) -> list[Prompt]:
    """The prompts of `source` (a JSONL path, `starter` or `mt_bench`; see the module doc), at most `limit`."""
    if source == "starter":
        prompts = _starter(lang)
    elif source == "mt_bench":
        prompts = _mt_bench(lang, data_root)
    else:
        prompts = [_prompt_row(where, obj) for where, obj in _rows(Path(source))]
    if not prompts:
        raise FileFormatError(f"{source}: no prompts")
    return prompts[:limit] if limit else prompts


# --------------------------------------------------------------------------------------------- models

@dataclass(frozen=True)
class Endpoint:
    """Where API models (and the LLM judge) live; the key is read from `api_key_env` when a client is made."""

    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str | None = None
    timeout: float = 60.0
    retries: int = 3

    def client(self, model: str):
        from lingotune.api import ChatClient, api_key_from_env

        return ChatClient(self.base_url, model, api_key_from_env(self.api_key_env), self.timeout, self.retries)

    def model(self, name: str) -> inference.ApiModel:
        return inference.ApiModel(self.client(name))


def _fingerprint(paths: list[Path]) -> str:
    """Names, sizes and modification times of the files at `paths` (a retrained adapter changes it)."""
    h = hashlib.sha256()
    for p in paths:
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p] if p.is_file() else []
        for f in files:
            st = f.stat()
            h.update(f"{f.relative_to(p) if p.is_dir() else f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class ModelSpec:
    """A model to answer (or judge): `source` is 'bundled', a directory, a hub id, or 'api:NAME'."""

    source: str
    adapter: str | None = None
    embeddings: str | None = None

    @property
    def api_name(self) -> str | None:
        return self.source[4:] if self.source.startswith("api:") else None

    @property
    def label(self) -> str:
        return self.source + (f" + {self.adapter}" if self.adapter else "") + (f" + {self.embeddings}" if self.embeddings else "")

    def check(self, option: str) -> None:
        """Cheap checks before anything is written (the model itself is loaded only when needed)."""
        from lingotune.models import ModelLoadError, resolve

        if self.api_name is not None:
            if not self.api_name.strip():
                raise ValueError(f"option {option}: 'api:' needs a model name (api:NAME)")
            if self.adapter or self.embeddings:
                raise ValueError(f"option {option}: an API model takes no adapter or embeddings")
            return
        if not self.source.startswith("bundled"):
            resolve(self.source)
        if self.adapter and not (Path(self.adapter) / "adapter_config.json").is_file():
            raise ModelLoadError(f"adapter {self.adapter!r}: no adapter_config.json there")
        if self.embeddings and not Path(self.embeddings).is_file():
            raise ModelLoadError(f"embeddings {self.embeddings!r}: no such file")

    def identity(self, endpoint: Endpoint) -> dict:
        """What its answers depend on (for the cache and the summary); never an API key."""
        if self.api_name is not None:
            return {"kind": "api", "base_url": endpoint.base_url.rstrip("/"), "model": self.api_name}
        paths = [Path(p).resolve() for p in (self.source, self.adapter, self.embeddings) if p and Path(p).exists()]
        return {"kind": "local", "source": str(Path(self.source).resolve()) if Path(self.source).exists() else self.source,
                "adapter": str(Path(self.adapter).resolve()) if self.adapter else None,
                "embeddings": str(Path(self.embeddings).resolve()) if self.embeddings else None,
                "files": _fingerprint(paths) if paths else None}

    def load(self, endpoint: Endpoint, device: str = "cpu"):
        """(model, tokenizer): an `inference.ApiModel` with its tokenizer, or a local model."""
        if self.api_name is not None:
            model = endpoint.model(self.api_name)
            return model, model.tokenizer
        from lingotune.models import load_adapted

        return load_adapted(self.source, adapter=self.adapter, embeddings=self.embeddings, device=device)


def answers_for(spec: ModelSpec, prompts: list[Prompt], cache: JsonlCache, endpoint: Endpoint, max_new_tokens: int,
                batch_size: int, device: str = "cpu") -> list[str]:
    """`spec`'s answers to `prompts` (stripped), from the cache or generated (and cached) batch by batch."""
    settings = {"max_new_tokens": max_new_tokens, "greedy": True, "turns": "one user turn"}
    ident = spec.identity(endpoint)
    keys = [cache.key("answer", ident, p.prompt, settings) for p in prompts]
    loaded: list = []

    def compute(idx: list[int]) -> list[str]:
        if not loaded:
            loaded.extend(spec.load(endpoint, device))
        convs = [[{"role": "user", "content": prompts[i].prompt}] for i in idx]
        outs = inference.generate_chat(loaded[0], loaded[1], convs, max_new_tokens, batch_size, desc=f"answers {spec.label}")
        return [o.strip() for o in outs]

    return cache.fill(keys, compute, batch_size)


# --------------------------------------------------------------------------------------------- API models in `lingotune eval`

def refuse_scoring_tasks(specs, mode: str) -> None:
    """ApiModelError naming the tasks an API model cannot run: they need log-likelihoods (perplexity,
    multiple choice, yes/no in loglik or both mode). Called before anything runs."""
    bad = []
    for spec in specs:
        if spec.kind in ("perplexity", "multiple_choice"):
            bad.append(f"{spec.name} ({spec.kind})")
        elif spec.kind == "yesno" and mode != "generate":
            bad.append(f"{spec.name} (yes/no with --mode {mode})")
    if bad:
        raise inference.ApiModelError(f"option --api-model: an API model only generates; these tasks need "
                                      f"log-likelihoods: {', '.join(bad)}")


def eval_api_model(name: str, base_url: str, api_key_env: str | None, tasks: list[str], mode: str,
                   local_extras: bool = False):
    """(ApiModel, its tokenizer) for `lingotune eval --api-model`, after checking the tasks can run on it."""
    from lingotune.eval.tasks import load_task

    if local_extras:
        raise ValueError("option --api-model: an API model takes no --adapter or --embeddings")
    refuse_scoring_tasks([load_task(t) for t in tasks], mode)
    model = Endpoint(base_url, api_key_env).model(name)
    return model, model.tokenizer
