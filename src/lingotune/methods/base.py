"""What every method is made of: a `Stage`, and the few weight-selection helpers they share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from lingotune.models import is_tied, untie


@dataclass
class Stage:
    """One training stage.

    name: directory and log name ("stage1", "stage2", "train").
    data: which built datasets it trains on, in order ("stage1": DParT pairs, "stage2": target-language instructions).
    steps: optimizer steps.
    setup(model) -> (model, param_groups): freezes/wraps the model and says what trains at which LR.
        Each group is a dict with "name", "params" and "lr".
    save(model, out_dir) -> dict of artefact names to paths written.
    """

    name: str
    data: list[str]
    steps: int
    setup: Callable[[torch.nn.Module], tuple[torch.nn.Module, list[dict]]]
    save: Callable[[torch.nn.Module, Path], dict[str, str]]
    notes: dict = field(default_factory=dict)


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
    return get_peft_model(model, cfg)


def lora_params(model) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]


def save_embeddings(model, out_dir: Path, name: str = "embeddings.safetensors") -> str:
    """The input embedding matrix as safetensors, key `model.embed_tokens.weight`."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    w = model.get_input_embeddings().weight.detach().contiguous().cpu()
    tie = "tied" if is_tied(model) else "untie"
    save_file({"model.embed_tokens.weight": w}, str(path), metadata={"format": "pt", "producer": "lingotune", "tie": tie})
    return str(path)


def save_adapter(model, out_dir: Path) -> str:
    """The PEFT adapter, loadable with PeftModel.from_pretrained(base, path)."""
    path = out_dir / "adapter"
    model.save_pretrained(str(path))
    return str(path)
