"""Embedding propagation (LEP step 4, `../shared/papers/lep.txt`): an instruct model gets the new vocabulary.

LEP adapts a *base* model to a new vocabulary and trains its embeddings; propagation carries the
trained rows into an *instruct* model of the same family, with no instruction tuning. Each new
matrix (input embeddings; output head apart unless both models are tied) is `E_adapted @ W`, W a
d x d map fitted in float64 by least squares from the base model's space to the instruct model's:

- `swap`: W = I (the adapted rows as they are).
- `overlap`: `E_base[S] @ W ~ E_instruct[S]`, S the tokens both vocabularies hold (same string, same role).
- `conversion` (the paper's best): both old matrices are written in the new vocabulary by the same
  map C (new row i = mean of the old rows that spell token i, `vocab.piece_map`), then
  `C(E_base) @ W ~ C(E_instruct)`. A new token with no old spelling is left out of the fit.

`copy` says which rows take the instruct model's own row instead of `E_adapted @ W`:
- "special" (the default): special and added tokens the instruct model has (chat markers, eos). The
  instruct model learned their roles in instruction tuning, which the adapted base never saw, and no
  linear map of a base row recovers them; every other row comes from the adapted model, so the
  new-language rows and the shared rows trained beside them stay in one space.
- "single": every token spelled by a single old id (shared tokens keep the instruct's rows exactly;
  what embedding training taught the adapted rows of those tokens is dropped).
- "none": every row of the adapted vocabulary is `E_adapted @ W` (`swap` + "none" = the adapted rows).
Tokens the instruct tokenizer adds beyond the adapted vocabulary always take the instruct's rows.

The output is the instruct model resized to the new vocabulary, with the adapted tokenizer plus the
instruct's added tokens, special-token map and chat template; `save_propagation` writes it, with
`propagation.json`, as one atomically renamed directory.
"""

from __future__ import annotations

import copy as copying
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import typer
from pydantic import BaseModel, ConfigDict, Field

from lingotune.errors import UserError
from lingotune.files import atomic_dir, save_json
from lingotune.models import is_tied, load_model
from lingotune.rundir import check_output, prepare
from lingotune.vocab import embedding_matrix, mean_of_pieces, piece_map, remap_special_ids, set_rows

MODES = ("conversion", "overlap", "swap")
COPIES = ("special", "single", "none")
SPECIAL_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class PropagationError(UserError, ValueError):
    """The three models cannot be propagated as asked (family, sizes, tokenizer, options); one line."""


@dataclass
class Fit:
    """One d x d map W with `source @ W ~ target`; `map` None means W = I (swap)."""

    map: torch.Tensor | None
    residual: float | None  # ||source @ W - target||_F / ||target||_F over the fitted rows
    rows: int

    def record(self) -> dict:
        return {"residual": self.residual, "rows": self.rows}


@dataclass
class Propagation:
    """The instruct model with the new vocabulary, its tokenizer, and what the fits found."""

    model: torch.nn.Module
    tokenizer: object
    mode: str
    copy: str
    tied: bool
    fits: dict[str, Fit]  # "tied", or "input" and "head"
    rows_copied: int
    rows_without_spelling: int
    added_from_instruct: list[str] = field(default_factory=list)

    def record(self, sources: dict[str, str]) -> dict:
        """What propagation.json holds."""
        return {"mode": self.mode, "copy": self.copy, "sources": sources, "tied": self.tied,
                "vocab_size": len(self.tokenizer), "fits": {k: f.record() for k, f in self.fits.items()},
                "rows_copied": self.rows_copied, "rows_without_old_spelling": self.rows_without_spelling,
                "added_from_instruct": self.added_from_instruct}


# ----------------------------------------------------------------------------- the maps


def fit_map(source: torch.Tensor, target: torch.Tensor) -> Fit:
    """W minimizing ||source @ W - target||_F, in float64 on the CPU, and its relative residual."""
    x, y = source.detach().cpu().double(), target.detach().cpu().double()
    w = torch.linalg.lstsq(x, y).solution
    scale = torch.linalg.norm(y).item()
    residual = torch.linalg.norm(x @ w - y).item() / scale if scale else 0.0
    return Fit(w, residual, x.shape[0])


def fit_slot(mode: str, base: torch.Tensor, instruct: torch.Tensor, pieces: list[list[int]],
             shared: list[tuple[int, int]]) -> Fit:
    """The map of one matrix: `pieces` (conversion) and `shared` (overlap) cover the adapted vocabulary.

    Old ids past the base matrix (tokens only the instruct model has) take no part in a fit."""
    if mode == "swap":
        return Fit(None, None, 0)
    n_old = min(base.shape[0], instruct.shape[0])
    if mode == "overlap":
        old = [j for _, j in shared if j < n_old]
        x, y = base[old], instruct[old]
    else:
        spelled = [p for p in pieces if p and max(p) < n_old]
        x, y = mean_of_pieces(base[:n_old], spelled), mean_of_pieces(instruct[:n_old], spelled)
    d = base.shape[1]
    if x.shape[0] < d:
        raise PropagationError(f"--mode {mode}: only {x.shape[0]} rows to fit a {d} x {d} map (at least {d} "
                               f"needed); the vocabularies share too little for this mode")
    return fit_map(x, y)


def propagated_rows(adapted: torch.Tensor, fit: Fit, instruct: torch.Tensor, copied: dict[int, int],
                    n_rows: int) -> torch.Tensor:
    """The new matrix in float64: `adapted @ W`, rows `copied` (new id -> old id) from `instruct`."""
    out = torch.zeros(n_rows, adapted.shape[1], dtype=torch.float64)
    rows = adapted.detach().cpu().double()
    out[: rows.shape[0]] = rows if fit.map is None else rows @ fit.map
    if copied:
        new, old = zip(*sorted(copied.items()))
        out[list(new)] = instruct.detach().cpu().double()[list(old)]
    return out


# ----------------------------------------------------------------------------- vocabularies


def special_contents(tok) -> set[str]:
    """The special and added tokens' strings (their role differs from the regular vocabulary's)."""
    return set(tok.all_special_tokens) | {t.content for t in tok.added_tokens_decoder.values()}


def shared_tokens(new_tok, old_tok) -> list[tuple[int, int]]:
    """(new id, old id) of the tokens both vocabularies hold: the same string in the same role."""
    old = old_tok.get_vocab()
    new_special, old_special = special_contents(new_tok), special_contents(old_tok)
    return sorted((i, old[t]) for t, i in new_tok.get_vocab().items()
                  if t in old and (t in new_special) == (t in old_special))


def copied_rows(pieces: list[list[int]], copy: str, n_adapted: int, special_ids: set[int]) -> dict[int, int]:
    """New id -> old id of the rows taken from the instruct model (see the module's doc for `copy`)."""
    rows = {i: p[0] for i, p in enumerate(pieces) if i >= n_adapted}  # the instruct's own added tokens
    if copy == "single":
        rows |= {i: p[0] for i, p in enumerate(pieces[:n_adapted]) if len(p) == 1}
    elif copy == "special":
        rows |= {i: pieces[i][0] for i in special_ids if i < n_adapted and len(pieces[i]) == 1}
    return rows


def _extra_specials(tok) -> list[str]:
    extra = getattr(tok, "extra_special_tokens", None) or getattr(tok, "additional_special_tokens", None) or []
    return [str(t) for t in (extra.values() if isinstance(extra, dict) else extra)]


def merged_tokenizer(adapted_tok, instruct_tok):
    """The adapted tokenizer plus the instruct's added tokens, special-token map and chat template.

    The adapted ids stay as they are; the instruct's added tokens it lacks follow, in the instruct's order."""
    tok = copying.deepcopy(adapted_tok)
    have = tok.get_vocab()
    for _, added in sorted(instruct_tok.added_tokens_decoder.items()):
        if added.content not in have:
            tok.add_tokens([copying.copy(added)], special_tokens=added.special)
    specials = {a: getattr(instruct_tok, a) for a in SPECIAL_ATTRIBUTES if getattr(instruct_tok, a, None)}
    extra = _extra_specials(instruct_tok)
    tok.add_special_tokens({**specials, **({"additional_special_tokens": extra} if extra else {})})
    for attr in SPECIAL_ATTRIBUTES:
        if attr not in specials and getattr(tok, attr, None) is not None:
            setattr(tok, attr, None)
    tok.chat_template = instruct_tok.chat_template
    tok.init_kwargs.pop("lingotune_fallback_template", None)
    return tok


# ----------------------------------------------------------------------------- the models


class PropagateConfig(BaseModel):
    """The recipe's `propagate:` section: after training, carry the trained rows into an instruct model."""

    model_config = ConfigDict(extra="forbid")

    instruct: str | None = Field(None, description="The target instruct model (same family and hidden size as "
                                 "model.source): a hub id, a local directory or 'bundled'. null: no propagation.")
    mode: Literal["conversion", "overlap", "swap"] = Field("conversion", description="How the map W is fitted "
                                                           "(conversion: the paper's best).")
    copy_rows: Literal["special", "single", "none"] = Field("special", description="Which rows take the instruct "
                                                            "model's own row (see lingotune.propagate: copy).")


def check_options(mode: str, copy: str) -> None:
    if mode not in MODES:
        raise PropagationError(f"--mode {mode!r}: use one of {', '.join(MODES)}")
    if copy not in COPIES:
        raise PropagationError(f"--copy {copy!r}: use one of {', '.join(COPIES)}")


def check_models(base, adapted, adapted_tok, instruct, instruct_tok) -> None:
    """PropagationError (one line) unless the three models and two tokenizers can be propagated."""
    models = {"base": base, "adapted": adapted, "instruct": instruct}
    families = {name: m.config.model_type for name, m in models.items()}
    if len(set(families.values())) > 1:
        raise PropagationError("models of different families: " + ", ".join(f"--{k} is {v!r}" for k, v in families.items()))
    sizes = {name: m.get_input_embeddings().weight.shape[1] for name, m in models.items()}
    if len(set(sizes.values())) > 1:
        raise PropagationError("models of different hidden sizes: " + ", ".join(f"--{k} {v}" for k, v in sizes.items()))
    rows = {name: {embedding_matrix(m, slot).shape[0] for slot in ("input", "head")} for name, m in models.items()}
    if rows["adapted"] != {len(adapted_tok)}:
        raise PropagationError(f"--adapted: the model has {'/'.join(map(str, sorted(rows['adapted'])))} embedding rows "
                               f"but its tokenizer {len(adapted_tok)} tokens; resize the model to its tokenizer")
    if min(rows["instruct"]) < len(instruct_tok):
        raise PropagationError(f"--instruct: its tokenizer has {len(instruct_tok)} tokens but the model only "
                               f"{min(rows['instruct'])} rows")
    if instruct_tok.init_kwargs.get("lingotune_fallback_template") or not instruct_tok.chat_template:
        raise PropagationError("--instruct: its tokenizer has no chat template (is it an instruct model?)")


def propagate(base, adapted, adapted_tok, instruct, instruct_tok, mode: str = "conversion",
              copy: str = "special") -> Propagation:
    """Give `instruct` (changed in place) the adapted vocabulary and rows; see the module's doc.

    The output is tied when the adapted and instruct models both are; otherwise the input embeddings
    and the head are mapped apart, each by its own fit."""
    check_options(mode, copy)
    check_models(base, adapted, adapted_tok, instruct, instruct_tok)
    tok = merged_tokenizer(adapted_tok, instruct_tok)
    n_adapted = len(adapted_tok)
    pieces = piece_map(tok, instruct_tok)
    shared = shared_tokens(adapted_tok, instruct_tok) if mode == "overlap" else []
    special_ids = set(tok.added_tokens_decoder) | set(tok.all_special_ids)
    copied = copied_rows(pieces, copy, n_adapted, special_ids)
    tied = is_tied(adapted) and is_tied(instruct)
    fits, rows = {}, {}
    for slot in ("tied",) if tied else ("input", "head"):
        old = embedding_matrix(instruct, slot)
        fits[slot] = fit_slot(mode, embedding_matrix(base, slot), old, pieces[:n_adapted], shared)
        rows[slot] = propagated_rows(embedding_matrix(adapted, slot), fits[slot], old, copied, len(tok))
    set_rows(instruct, rows, tied)
    remap_special_ids(instruct, instruct_tok, tok)
    added = tok.convert_ids_to_tokens(list(range(n_adapted, len(tok))))
    return Propagation(instruct, tok, mode, copy, tied, fits, len(copied),
                       sum(not p for p in pieces[:n_adapted]), added)


# ----------------------------------------------------------------------------- the output directory


def save_propagation(result: Propagation, out: Path, sources: dict[str, str], overwrite: bool = False) -> dict:
    """Write the model (safetensors), tokenizer and propagation.json into `out` at once; the record."""
    from lingotune.checkpoint import assert_finite

    out = Path(out)
    check_output(out, "run", overwrite)
    assert_finite(dict(result.model.named_parameters()), str(out))
    record = result.record(sources)
    with atomic_dir(out) as tmp:
        prepare(tmp, "fresh", "run")
        result.model.save_pretrained(str(tmp))
        result.tokenizer.save_pretrained(str(tmp))
        save_json(tmp / "propagation.json", record)
    return record


def propagate_dirs(base: str, adapted: str, instruct: str, out: Path, mode: str = "conversion",
                   copy: str = "special", overwrite: bool = False) -> dict:
    """Load the three models, propagate and write `out`; every check runs before anything is written."""
    check_options(mode, copy)
    check_output(Path(out), "run", overwrite)
    base_model, _ = load_model(base)
    adapted_model, adapted_tok = load_model(adapted)
    instruct_model, instruct_tok = load_model(instruct)
    result = propagate(base_model, adapted_model, adapted_tok, instruct_model, instruct_tok, mode=mode, copy=copy)
    return save_propagation(result, Path(out), {"base": base, "adapted": adapted, "instruct": instruct}, overwrite)


def propagate_command(
    base: str = typer.Option(..., "--base", help="The source base model (old vocabulary): 'bundled', a directory or a hub id."),
    adapted: str = typer.Option(..., "--adapted", help="The adapted base model (new vocabulary, trained embeddings and head)."),
    instruct: str = typer.Option(..., "--instruct", help="The instruct model of the base's family (old vocabulary)."),
    mode: str = typer.Option("conversion", "--mode", help="conversion | overlap | swap: how W is fitted."),
    out: Path = typer.Option(..., "--out", "-o", help="Output model directory."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier output directory."),
    copy: str = typer.Option("special", "--copy", help="Rows taken from the instruct model: special | single | none."),
) -> None:
    """Propagate an adapted base model's embeddings into an instruct model (LEP): a new-vocabulary instruct model."""
    from rich.console import Console

    record = propagate_dirs(base, adapted, instruct, out, mode=mode, copy=copy, overwrite=overwrite)
    fits = ", ".join(f"{slot}: residual {f['residual']:.4g} over {f['rows']} rows" for slot, f in record["fits"].items()
                     if f["residual"] is not None) or "W = I"
    Console().print(f"[green]propagated[/] ({mode}; {fits}; {record['rows_copied']} rows copied from the instruct "
                    f"model): {out}", highlight=False)
