"""`lingotune export RUN_DIR --out DIR`: a finished run as one plain Hugging Face model, with a model card.

The merged export (the default) rebuilds the run's model from the base model and the run's artefacts,
stage by stage (`chain`): a whole saved model replaces what came before, trained embeddings are put in
place (`models.apply_embeddings`: the input matrix alone when the run untied the head, the shared
matrix when it trained it tied), a PEFT adapter is merged into the weights. An adapted vocabulary
(the run's `tokenizer/`: `vocab:` or `model.chat_tokens`) first resizes the base model the way the run
did (`vocab.init_new_rows`; a replacing scenario rebuilds the whole matrix). An LEP run that propagated exports the propagated instruct model. The
result is saved with `save_pretrained` (safetensors; an untied head as its own tensor, a tied model's
one matrix once), with the tokenizer and its chat template, and a generation config that stops at the
end of a turn (`inference.stop_ids`).

`--adapter-only` writes one PEFT LoRA adapter instead, for runs whose result is one adapter on the
base model's vocabulary (not one that grew or was replaced): the changed input-embedding rows travel in the same adapter as PEFT's
`trainable_token_indices` (only the rows that differ from the base model, so the adapter stays small;
PEFT replaces those rows). A tied base model trained with `model.tie: untie` keeps its head: the head
gets its own one-row entry with its original values, so PEFT does not tie the two.

Both write `README.md` (a model card with Hugging Face metadata), `lingotune-recipe.yaml` (the run's
recipe) and a marker file, into a temporary directory renamed into place: a failed export leaves no
half directory, and an existing one is replaced only with `--overwrite` (and only an earlier export).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from lingotune import files, methods, rundir
from lingotune.errors import UserError
from lingotune.models import (
    BUNDLED, apply_adapter, apply_embeddings, is_tied, load_model, load_tokenizer, read_embeddings, resolve,
)
from lingotune.recipe import parse_recipe

KIND = "export"


class ExportError(UserError, ValueError):
    """A run directory that cannot be exported as asked, or an output directory that may not be written."""


# ----------------------------------------------------------------------------- the run


def read_run(run_dir: Path):
    """(recipe, results) of a finished run; ExportError (one line) for anything else."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: no such run directory")
    if not rundir.is_marked(run_dir) or rundir.marker_kind(run_dir) not in ("run", None):
        raise ExportError(f"{run_dir}: not a lingotune run directory (no {rundir.MARKER} marker of a run)")
    for name in ("recipe.yaml", "results.json"):
        if not (run_dir / name).is_file():
            raise ExportError(f"{run_dir}: not a finished run (no {name}); finish it with lingotune run --resume")
    recipe = parse_recipe(files.read_yaml(run_dir / "recipe.yaml", "recipe") or {}, str(run_dir / "recipe.yaml"))
    results = files.read_json(run_dir / "results.json")
    done = results.get("stages", {})
    for stage in methods.stages(recipe.method.name, recipe):
        if not done.get(stage.name, {}).get("complete"):
            raise ExportError(f"{run_dir}: not a finished run (stage {stage.name} of {recipe.method.name} is not "
                              f"trained); finish it with lingotune run --resume")
    if recipe.propagate.instruct and not results.get("propagation"):
        raise ExportError(f"{run_dir}: not a finished run (propagation into {recipe.propagate.instruct} is missing); "
                          "finish it with lingotune run --resume")
    return recipe, results


def chain(run_dir: Path, recipe, results: dict) -> list[tuple[str, str, Path]]:
    """(stage, kind, path) of every artefact, in the order they build the model: per stage a whole
    model, then embeddings, then an adapter. A one-line error when one is missing."""
    out = []
    for stage in methods.stages(recipe.method.name, recipe):
        saved = results["stages"][stage.name].get("artefacts") or {}
        for kind in ("model", "embeddings", "adapter"):
            if kind in saved:
                path = run_dir / recipe.method.name / stage.name / Path(saved[kind]).name
                if not path.exists():
                    raise ExportError(f"{run_dir}: not a finished run ({path} is missing)")
                out.append((stage.name, kind, path))
    if not out:
        hint = " (output.save_full_model was false)" if recipe.method.name in ("full", "sft", "dpo", "orpo") else ""
        raise ExportError(f"{run_dir}: the run saved no weights to export{hint}")
    return out


def build_model(run_dir: Path, recipe, results: dict):
    """(model, tokenizer, what it is made of): the run's final model as plain transformers weights."""
    from lingotune.methods.base import merge_adapters

    run_dir = Path(run_dir)
    if results.get("propagation"):  # LEP: the product is the propagated instruct model
        where = run_dir / "propagated"
        model, tok = load_model(str(where), **recipe.model.loading())
        return model, tok, [f"the propagated model ({where.name}/)"]
    model, tok = load_model(recipe.model.source, **recipe.model.loading())
    parts = [f"base model {recipe.model.source}"]
    if (run_dir / "tokenizer").is_dir():  # an adapted vocabulary: resize (rebuild) as the run did before training
        from lingotune.vocab import init_new_rows

        new_tok = load_tokenizer(str(run_dir / "tokenizer"), recipe.model.trust_remote_code)
        init_new_rows(model, tok, new_tok)
        tok = new_tok
        parts.append(f"vocabulary of {len(tok)} tokens (tokenizer/)")
    for stage, kind, path in chain(run_dir, recipe, results):
        rel = path.relative_to(run_dir)
        if kind == "model":
            model, tok = load_model(str(path), **recipe.model.loading())
        elif kind == "embeddings":
            apply_embeddings(model, path)
        else:
            model = merge_adapters(apply_adapter(model, path))
        parts.append(f"{kind} {rel}")
    return model.eval(), tok, parts


# ----------------------------------------------------------------------------- adapter only


def build_adapter(run_dir: Path, recipe, results: dict):
    """(a PeftModel on the base model that reproduces the run, tokenizer, parts): the run's one LoRA adapter
    plus its changed embedding rows as `trainable_token_indices`. ExportError where PEFT cannot carry it."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    steps = chain(run_dir, recipe, results)
    kinds = [k for _, k, _ in steps]
    merged = f"use the merged export (lingotune export {run_dir} --out DIR)"
    if results.get("propagation") or "model" in kinds:
        raise ExportError(f"{run_dir}: --adapter-only: the run changed every weight ({recipe.method.name}); {merged}")
    if kinds.count("adapter") != 1:
        raise ExportError(f"{run_dir}: --adapter-only: the run stacks {kinds.count('adapter')} adapters, one merged "
                          f"into the weights before the next; one PEFT adapter cannot carry that; {merged}")
    base, tok = load_model(recipe.model.source, **recipe.model.loading())
    rows = base.get_input_embeddings().weight.shape[0]
    if (run_dir / "tokenizer").is_dir():
        from lingotune.vocab import extends

        base_tok, tok = tok, load_tokenizer(str(run_dir / "tokenizer"), recipe.model.trust_remote_code)
        if not extends(tok, base_tok):
            raise ExportError(f"{run_dir}: --adapter-only: the run replaced the vocabulary (vocab.scenario "
                              f"{recipe.vocab.scenario}): the base model's rows no longer mean the same tokens; {merged}")
        if len(tok) > rows:
            raise ExportError(f"{run_dir}: --adapter-only: the run extended the vocabulary ({rows} -> {len(tok)} "
                              f"tokens) and a PEFT adapter cannot add rows to the base model; {merged}")
    adapter = next(p for _, k, p in steps if k == "adapter")
    embeddings = [p for _, k, p in steps if k == "embeddings"]
    cfg = LoraConfig.from_pretrained(str(adapter))
    cfg.base_model_name_or_path = recipe.model.source
    trained = None
    if embeddings:
        trained, tie = read_embeddings(embeddings[-1])  # the last saved matrix is the final one
        original = base.get_input_embeddings().weight.detach()
        if trained.shape != original.shape:
            raise ExportError(f"{embeddings[-1]}: shape {tuple(trained.shape)} != the base model's {tuple(original.shape)}")
        trained = trained.to(original.dtype)
        changed = (trained != original).any(dim=1).nonzero().flatten().tolist()
        if changed:
            cfg.trainable_token_indices = changed
            if is_tied(base) and tie == "untie":  # the head keeps its values: a one-row no-op entry keeps PEFT from tying
                names = {m: n for n, m in base.named_modules()}
                cfg.trainable_token_indices = {names[base.get_input_embeddings()].rsplit(".", 1)[-1]: changed,
                                               names[base.get_output_embeddings()].rsplit(".", 1)[-1]: [changed[0]]}
    cfg.inference_mode = True
    model = get_peft_model(base, cfg)
    state = {**get_peft_model_state_dict(model), **load_file(str(adapter / "adapter_model.safetensors"))}
    result = set_peft_model_state_dict(model, state)  # the run's LoRA weights; the token rows follow
    if getattr(result, "unexpected_keys", None):
        raise ExportError(f"{adapter}: adapter weights that do not fit the base model ({result.unexpected_keys[:3]})")
    parts = [f"base model {recipe.model.source}", f"adapter {adapter.relative_to(run_dir)}"]
    if cfg.trainable_token_indices:
        n = len(changed)
        layer = model.get_input_embeddings().token_adapter
        with torch.no_grad():
            layer.trainable_tokens_delta["default"].copy_(trained[changed].to(layer.trainable_tokens_delta["default"]))
        parts.append(f"{n} changed embedding rows of {embeddings[-1].relative_to(run_dir)}")
    return model.eval(), tok, parts


# ----------------------------------------------------------------------------- the model card


def _origin(source: str) -> tuple[str | None, str | None]:
    """(hub id, licence) of the base model where known: bundled models, a hub id, a local copy's card."""
    name = source.split(":", 1)[1] if source.startswith("bundled:") else "smollm2-135m-instruct" if source == "bundled" else None
    if name in BUNDLED:
        return BUNDLED[name].origin, BUNDLED[name].licence
    hub = source if not Path(source).expanduser().exists() else None
    card = Path(source).expanduser() / "README.md"
    licence = None
    if card.is_file():
        for line in card.read_text(encoding="utf-8", errors="replace").splitlines()[:40]:
            if line.startswith("license:"):
                licence = line.split(":", 1)[1].strip()
    return hub, licence


def data_provenance(run_dir: Path, results: dict) -> list[str]:
    """The data section of the card: every source with its record counts, every built set with its hash."""
    report = results.get("data") or {}
    lines = [f"Data root: `{report.get('root')}`; seed {report.get('seed')}.", "",
             "| source | format | path | use | records read | kept (pairs / stage-2) |", "|---|---|---|---|---|---|"]
    for s in report.get("sources", []):
        read = f"{s.get('pairs_read', '–')} / {s.get('stage2_read', '–')}"
        lines.append(f"| {s.get('index')} | {s.get('format')} | `{s.get('path') or '(built in)'}` | {s.get('use', '')} | "
                     f"{read} | {s.get('pairs', '–')} / {s.get('stage2', '–')} |")
    lines += ["", "The sets the run trained on (the run's `data/`):", "", "| set | records | sha256 |", "|---|---|---|"]
    for path in sorted((run_dir / "data").glob("*.jsonl")):
        n = sum(1 for line in path.open(encoding="utf-8") if line.strip())
        lines.append(f"| {path.stem} | {n} | `{files.sha256_file(path)}` |")
    return lines


def model_card(run_dir: Path, recipe, results: dict, parts: list[str], adapter_only: bool, licence: str | None,
               out: Path) -> str:
    from lingotune.languages import get_language
    from lingotune.report import EVAL_NOTE, eval_table, stages_table

    hub, found = _origin(recipe.model.source)
    licence = licence or found or "other"
    lang = get_language(recipe.language)
    meta = {"license": licence, "language": [recipe.language],
            "library_name": "peft" if adapter_only else "transformers",
            "tags": ["lingotune", recipe.method.name, "language-adaptation"]}
    if hub:
        meta["base_model"] = hub
    front = ["---"] + [f"{k}: {json.dumps(v, ensure_ascii=False)}" for k, v in meta.items()] + ["---", ""]
    what = "A PEFT adapter (LoRA + changed embedding rows)" if adapter_only else "A merged model"
    out_lines = front + [
        f"# {recipe.name or recipe.method.name}: {recipe.model.source} adapted to {lang.name}", "",
        f"{what}, trained with [lingotune](https://pypi.org/project/lingotune/) method `{recipe.method.name}`.", "",
        "## Base model and licence", "",
        f"Base model: `{recipe.model.source}`" + (f" (hub: [{hub}](https://huggingface.co/{hub}))" if hub else "") + ".",
        f"Licence: `{licence}`" + ("" if found else " (not recorded with the base model here: the base model's "
                                   "licence applies; check it before publishing)") + ".", "",
        "## Method and recipe", "",
        f"Method `{recipe.method.name}`, seed {recipe.seed}, tied embeddings handled as `{recipe.model.tie}`, "
        f"chat tokens `{recipe.model.chat_tokens}`. Built from: " + "; ".join(parts) + ".", "",
    ] + stages_table(results.get("stages", {})) + [
        "", "The whole recipe is `lingotune-recipe.yaml` in this directory.", "",
        "## Data provenance", ""] + data_provenance(run_dir, results)
    if results.get("evals"):
        out_lines += ["", "## Evaluation", "", "Before (`untouched`) and after training, as the run measured it. "
                      + EVAL_NOTE + " n: examples per task.", ""] + eval_table(results["evals"])
    load = (f"base = AutoModelForCausalLM.from_pretrained({(hub or recipe.model.source)!r})\n"
            f"model = PeftModel.from_pretrained(base, {str(out)!r})" if adapter_only
            else f"model = AutoModelForCausalLM.from_pretrained({str(out)!r})")
    out_lines += ["", "## Reproduce", "", "```",
                  f"lingotune run lingotune-recipe.yaml --out {run_dir}",
                  f"lingotune export {run_dir} --out {out}" + (" --adapter-only" if adapter_only else ""),
                  "```", "", "Load it:", "", "```python",
                  "from transformers import AutoModelForCausalLM, AutoTokenizer" + (
                      "\nfrom peft import PeftModel" if adapter_only else ""),
                  load, f"tok = AutoTokenizer.from_pretrained({str(out)!r})", "```", ""]
    return "\n".join(out_lines)


# ----------------------------------------------------------------------------- the output directory


def export(run_dir: Path, out: Path, *, adapter_only: bool = False, overwrite: bool = False,
           licence: str | None = None) -> dict:
    """Write the run's model (or adapter) with its tokenizer and model card to `out`; a summary."""
    from lingotune import __version__
    from lingotune.inference import stop_ids

    t0 = time.perf_counter()
    run_dir, out = Path(run_dir), Path(out)
    rundir.check_output(out, KIND, overwrite)  # writes nothing
    recipe, results = read_run(run_dir)
    resolve(recipe.model.source)  # a base model that is gone fails here, in one line
    build = build_adapter if adapter_only else build_model
    model, tok, parts = build(run_dir, recipe, results)
    tok.init_kwargs.pop("lingotune_fallback_template", None)  # the template is the tokenizer's own from here on
    out.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_dir(out) as tmp:
        if adapter_only:
            model.save_pretrained(str(tmp))
        else:
            model.config.use_cache = True
            model.generation_config.eos_token_id = stop_ids(model, tok)
            model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        files.atomic_write_text(tmp / "README.md", model_card(run_dir, recipe, results, parts, adapter_only, licence, out))
        files.atomic_write_text(tmp / "lingotune-recipe.yaml", (run_dir / "recipe.yaml").read_text(encoding="utf-8"))
        files.save_json(tmp / rundir.MARKER, {"kind": KIND, "lingotune": __version__, "run": str(run_dir),
                                             "adapter_only": adapter_only, "parts": parts})
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"out": str(out), "parts": parts, "bytes": size, "tied": None if adapter_only else is_tied(model),
            "seconds": round(time.perf_counter() - t0, 2)}
