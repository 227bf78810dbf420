"""What every method is made of: a `Stage`, and the few weight-selection helpers they share."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from lingotune.checkpoint import assert_finite
from lingotune.losses import CausalLM, Loss
from lingotune.models import is_tied, untie
from lingotune.files import atomic_dir, atomic_write_bytes


@dataclass
class Stage:
    """One training stage.

    name: directory and log name ("stage1", "stage2", "train").
    data: which built datasets it trains on, in order ("stage1": DParT pairs, "stage2": target-language instructions).
    steps: optimizer steps.
    setup(model) -> (model, param_groups): freezes/wraps the model and says what trains at which LR.
        Each group is a dict with "name", "params" and "lr".
    save(model, out_dir, tokenizer=None) -> dict of artefact names to paths written (a whole-model
        artefact is written with its tokenizer, so transformers loads it unchanged).
    row_sparse: the stage trains the input embeddings alone, so the loop may train them row by row
        (only the rows a batch uses get gradients and optimizer state; see lingotune.fast).
    loss: the training loss (a `lingotune.losses.Loss`); next-token cross-entropy by default.
    """

    name: str
    data: list[str]
    steps: int
    setup: Callable[[torch.nn.Module], tuple[torch.nn.Module, list[dict]]]
    save: Callable[[torch.nn.Module, Path], dict[str, str]]
    notes: dict = field(default_factory=dict)
    row_sparse: bool = False
    loss: Loss = field(default_factory=CausalLM)


def freeze_all(model: torch.nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def embedding_weight(model) -> torch.nn.Parameter:
    return model.get_input_embeddings().weight


def prepare_embeddings(model, tie: str) -> torch.nn.Parameter:
    """Make the input embeddings trainable. tie="untie" gives the head its own frozen copy first;
    tie="tied" trains the shared matrix (input embeddings and output head move together)."""
    if tie == "untie":
        untie(model)
    w = embedding_weight(model)
    w.requires_grad_(True)
    return w


def add_lora(model, lora_cfg):
    """Wrap `model` with PEFT LoRA adapters (only the adapters train)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=list(lora_cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # PEFT asks transformers a deprecated question; not the user's concern
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, cfg)


def lora_groups(model, lora_cfg, lr: float, embeddings: tuple[str, float] | None = None):
    """Freeze everything and add LoRA: (model, groups) with the adapters at `lr` and, when
    `embeddings` = (tie, lr) is given, the input embeddings beside them."""
    freeze_all(model)
    model = add_lora(model, lora_cfg)
    groups = [{"name": "lora", "params": lora_params(model), "lr": lr}]
    if embeddings:
        tie, emb_lr = embeddings
        groups.append({"name": "embeddings", "params": [prepare_embeddings(model.get_base_model(), tie)], "lr": emb_lr})
    return model, groups


def full_groups(model, lr: float):
    """Every weight trains at `lr` (a shared matrix once): (model, one group "all")."""
    params, seen = [], set()
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            p.requires_grad_(True)
            params.append(p)
    return model, [{"name": "all", "params": params, "lr": lr}]


def tuned_groups(model, recipe, embeddings: tuple[str, float] | None = None):
    """What trains in the sft, dpo and orpo stages, per `method.pref.weights`: LoRA adapters at `train.lr`
    (with the input embeddings beside them when `embeddings` = (tie, lr) is given), or every weight at
    `train.full_lr`."""
    if recipe.method.pref.weights == "lora":
        return lora_groups(model, recipe.method.lora, recipe.train.lr, embeddings)
    return full_groups(model, recipe.train.full_lr)


def tuned_save(recipe, embeddings: bool = False) -> Callable:
    """The save of a stage trained by `tuned_groups`: its adapter (and the input embeddings, with
    `embeddings`), or the whole model with its tokenizer (when `output.save_full_model`)."""
    def save(model, out_dir: Path, tokenizer=None) -> dict[str, str]:
        if recipe.method.pref.weights == "lora" and embeddings:
            return save_adapter_and_embeddings(model, out_dir)
        if recipe.method.pref.weights == "lora":
            return {"adapter": save_adapter(model, out_dir)}
        return {"model": save_model(model, out_dir, tokenizer)} if recipe.output.save_full_model else {}

    return save


def check_tuned(recipe, model) -> None:
    """sft, dpo, orpo: with LoRA, its target modules must exist in the model."""
    if recipe.method.pref.weights == "lora":
        check_lora_targets(model, recipe.method.lora)


def merge_adapters(model):
    """The model with its LoRA adapters merged into the weights (a plain model again); a model without
    adapters as it is. A later stage then trains on top of the earlier stage's result."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def frozen_copy(model) -> torch.nn.Module:
    """A copy of `model` that never trains (no gradients, eval mode): a reference model."""
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref.eval()


def save_adapter_and_embeddings(model, out_dir: Path, tokenizer=None) -> dict[str, str]:
    return {"adapter": save_adapter(model, out_dir), "embeddings": save_embeddings(model, out_dir)}


def check_lora_targets(model, lora_cfg) -> None:
    """ValueError naming the `method.lora.target_modules` entries that match no module of `model`
    (PEFT matches a name or a dotted suffix); checked before anything trains."""
    names = [n for n, _ in model.named_modules()]
    bad = [t for t in lora_cfg.target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if bad:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ValueError(f"method.lora.target_modules: {', '.join(map(repr, bad))} match no module of this model "
                         f"(its linear layers: {', '.join(linear)})")


def lora_params(model) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]


def _trained(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_embeddings(model, out_dir: Path, name: str = "embeddings.safetensors") -> str:
    """The input embedding matrix as safetensors, key `model.embed_tokens.weight` (written atomically)."""
    from safetensors.torch import save

    w = model.get_input_embeddings().weight.detach().contiguous().cpu()
    assert_finite({"model.embed_tokens.weight": w}, f"{out_dir / name}")
    tie = "tied" if is_tied(model) else "untie"
    data = save({"model.embed_tokens.weight": w}, metadata={"format": "pt", "producer": "lingotune", "tie": tie})
    return str(atomic_write_bytes(out_dir / name, data))


def save_adapter(model, out_dir: Path) -> str:
    """The PEFT adapter, loadable with PeftModel.from_pretrained(base, path) (written atomically)."""
    path = out_dir / "adapter"
    assert_finite(_trained(model), str(path))
    with atomic_dir(path) as tmp:
        model.save_pretrained(str(tmp))
    return str(path)


def save_model(model, out_dir: Path, tokenizer=None) -> str:
    """The whole model as a transformers directory, with its tokenizer when given (written atomically)."""
    path = out_dir / "model"
    assert_finite(dict(model.named_parameters()), str(path))
    with atomic_dir(path) as tmp:
        model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return str(path)
