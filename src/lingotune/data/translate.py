"""Translate English records into the target language, for users who only have English data.

Backends (each has `name`, `model` and `translate(texts, src, tgt) -> list[str]` for one batch):
- `HTTPTranslator`: an OpenAI-compatible server, through `lingotune.api.ChatClient`.
- `Seq2SeqTranslator`: a local Hugging Face seq2seq model (Marian, NLLB, M2M) via AutoModelForSeq2SeqLM.
- `CausalTranslator`: a local causal LM prompted with `translation_messages` through its chat template.

`translate_texts` runs batches under a rich progress bar and is resumable: every finished translation is appended
(and flushed) to `<cache_dir>/translations.jsonl`, keyed by sha256 of (backend, model, src, tgt, text). A rerun,
or a run after an interruption, translates only what is missing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

from lingotune.data.records import Record
from lingotune.errors import UserError
from lingotune.files import JsonlCache
from lingotune.languages import get_language


class TranslationError(UserError, RuntimeError):
    """A translation backend failed; the message is one line saying which and why."""


def translation_messages(text: str, src: str, tgt: str) -> list[dict[str, str]]:
    """The chat prompt used by the HTTP and causal-LM backends."""
    s, t = get_language(src).name, get_language(tgt).name
    return [
        {"role": "system", "content": f"You are a professional translator from {s} into {t}."},
        {"role": "user", "content": f"Translate the following text from {s} into {t}. Keep the formatting "
                                    f"(line breaks, lists, code) and reply with the translation only.\n\n{text}"},
    ]


# --------------------------------------------------------------------------------------------- backends

class HTTPTranslator:
    """An OpenAI-compatible server, through lingotune's one endpoint client (`lingotune.api.ChatClient`:
    retries with backoff, the API key never in an error)."""

    name = "http"

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 120.0,
                 max_tokens: int = 2048, temperature: float = 0.0, retries: int = 3):
        from lingotune.api import ApiError, ChatClient

        try:
            self.client = ChatClient(base_url, model, api_key, timeout, retries, temperature=temperature)
        except ApiError as e:
            raise TranslationError(str(e)) from None
        self.model, self.max_tokens = model, max_tokens

    def translate(self, texts: list[str], src: str, tgt: str) -> list[str]:
        from lingotune.api import ApiError

        try:
            return [self.client.chat(translation_messages(t, src, tgt), self.max_tokens).strip() for t in texts]
        except ApiError as e:
            raise TranslationError(str(e)) from None


class Seq2SeqTranslator:
    name = "seq2seq"

    def __init__(self, model: str, device: str = "cpu", max_new_tokens: int = 512, num_beams: int = 1):
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.model = model
        try:
            self.tok = AutoTokenizer.from_pretrained(model)
            self.net = AutoModelForSeq2SeqLM.from_pretrained(model).to(device).eval()
        except (OSError, ValueError) as e:
            raise TranslationError(f"model {model!r}: cannot load ({str(e).splitlines()[0]})") from None
        self.device, self.max_new_tokens, self.num_beams = device, max_new_tokens, num_beams

    def translate(self, texts: list[str], src: str, tgt: str) -> list[str]:
        import torch

        kw = {}
        tgt_code = get_language(tgt).flores
        if tgt_code in getattr(self.tok, "get_vocab", dict)():  # NLLB-style language tokens
            self.tok.src_lang = get_language(src).flores
            kw["forced_bos_token_id"] = self.tok.convert_tokens_to_ids(tgt_code)
        enc = self.tok(texts, return_tensors="pt", padding=True, truncation=True).to(self.device)
        with torch.no_grad():
            out = self.net.generate(**enc, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, **kw)
        return [t.strip() for t in self.tok.batch_decode(out, skip_special_tokens=True)]


class CausalTranslator:
    name = "causal"

    def __init__(self, model: str, device: str = "cpu", max_new_tokens: int = 512, net=None, tokenizer=None):
        self.model, self.device, self.max_new_tokens = model, device, max_new_tokens
        if net is None:
            from lingotune.models import ModelLoadError, load_model

            try:
                net, tokenizer = load_model(model, device=device)
            except ModelLoadError as e:
                raise TranslationError(str(e)) from None
        self.net, self.tok = net.eval(), tokenizer

    def translate(self, texts: list[str], src: str, tgt: str) -> list[str]:
        from lingotune import inference

        convs = [translation_messages(t, src, tgt) for t in texts]
        outs = inference.generate_chat(self.net, self.tok, convs, self.max_new_tokens, batch_size=len(texts), desc="translate")
        return [o.strip() for o in outs]


# --------------------------------------------------------------------------------------------- cache

def cache_key(backend: str, model: str, src: str, tgt: str, text: str) -> str:
    return hashlib.sha256(json.dumps([backend, model, src, tgt, text], ensure_ascii=False).encode()).hexdigest()


class TranslationCache(JsonlCache):
    """Finished translations in <cache_dir>/translations.jsonl ({"key", "text"} a line; see `files.JsonlCache`)."""

    def __init__(self, cache_dir: str | Path):
        super().__init__(Path(cache_dir) / "translations.jsonl", field="text")


def translate_texts(texts: list[str], translator, src: str, tgt: str, cache_dir: str | Path,
                    batch_size: int = 8, progress: bool = True) -> list[str]:
    """Translations of `texts` (blank texts stay blank), reusing and extending the on-disk cache."""
    get_language(src), get_language(tgt)
    cache = TranslationCache(cache_dir)
    key = {t: cache_key(translator.name, translator.model, src, tgt, t) for t in set(texts) if t.strip()}
    todo = sorted(t for t, k in key.items() if cache.get(k) is None)
    if todo:
        from rich.progress import Progress

        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task(f"translating {src}->{tgt} ({translator.name}:{translator.model})", total=len(todo))
            for i in range(0, len(todo), batch_size):
                batch = todo[i:i + batch_size]
                out = translator.translate(batch, src, tgt)
                if len(out) != len(batch):
                    raise TranslationError(f"{translator.name}: got {len(out)} translations for {len(batch)} texts")
                cache.put_many([(key[t], o) for t, o in zip(batch, out)])
                bar.advance(task, len(batch))
    return [cache.get(key[t]) if t.strip() else t for t in texts]


def translate_records(records: list[Record], translator, tgt: str, cache_dir: str | Path, src: str = "en",
                      batch_size: int = 8, progress: bool = True) -> list[Record]:
    """Records with prompt, response and system translated; ids kept (so they pair with the originals),
    source "<original source>#<tgt>"."""
    texts = []
    for r in records:
        texts += [r.prompt, r.response, r.system or ""]
    out = translate_texts(texts, translator, src, tgt, cache_dir, batch_size, progress)
    result = []
    for i, r in enumerate(records):
        p, a, s = out[3 * i:3 * i + 3]
        result.append(replace(r, prompt=p, response=a, system=s or None, lang=tgt, source=f"{r.source}#{tgt}"))
    return result
