"""The one inference surface (`lingotune.inference`): chat prompts, batched greedy generation, log-likelihoods.

Evaluation tasks, report samples, the causal-LM translator, answers for judges and `lingotune chat` all
call these; nothing else batches prompts or calls `model.generate` (`_generate_ids` is its one call).
Stopping rules are arguments. Greedy by default; `temperature` > 0 samples. `stream` passes one reply's
text on piece by piece as it is generated (`TextPieces`: incremental decoding that never splits a character).
Works on any causal LM with a Hugging Face tokenizer: a base model, a PeftModel or a merged one.
Generation pads on the LEFT (the tokenizer's side is restored afterwards); forward passes on
left-padded batches pass explicit position ids so padding does not shift positions.

An `ApiModel` (a model behind an OpenAI-compatible endpoint, `lingotune.api.ChatClient`) goes through the
same `generate_chat` / `generate` calls, with its `ApiTokenizer`; it has no log-likelihoods, so the
scoring functions refuse it (`ApiModelError`).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from lingotune.errors import UserError


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def inference(model):
    """Eval mode and no autograd for the duration; the model's training flag is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def padding_side(tok, side: str):
    old = tok.padding_side
    tok.padding_side = side
    try:
        yield
    finally:
        tok.padding_side = old


def progress(total: int, desc: str):
    """A rich progress bar (transient; silent when stdout is not a terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=True, disable=not console.is_terminal)


def batches(items: Sequence, size: int, desc: str) -> Iterator[tuple[int, Sequence]]:
    """(start index, batch) over items, with a progress bar."""
    with progress(len(items), desc) as bar:
        task = bar.add_task(desc, total=len(items))
        for i in range(0, len(items), size):
            yield i, items[i:i + size]
            bar.advance(task, len(items[i:i + size]))


def chat_text(tok, messages: list[dict]) -> str:
    """The prompt text for `messages`, ending where the assistant starts answering."""
    return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode(tok, text: str) -> list[int]:
    """Token ids of already-templated text (the template carries its own special tokens)."""
    return tok(text, add_special_tokens=False)["input_ids"]


def _pad_left(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, n - len(s):] = torch.tensor(s)
            mask[i, n - len(s):] = 1
    return ids.to(device), mask.to(device)


def _pad_right(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids.to(device), mask.to(device)


def pad_id(tok) -> int:
    pid = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return 0 if pid is None else int(pid)


class StopAfterLine:
    """Stopping rule "line": a sequence stops once its new text holds a newline after some non-blank
    content (the first line of an answer is complete; leading blank lines do not count)."""

    def __init__(self, tok, start: int):
        self.tok, self.start = tok, start

    def __call__(self, input_ids, scores, **kw):
        texts = self.tok.batch_decode(input_ids[:, self.start:], skip_special_tokens=True)
        return torch.tensor([("\n" in t.lstrip()) for t in texts], device=input_ids.device)


STOP_RULES = {"eos": None, "line": StopAfterLine}
TURN_END = "<|im_end|>"  # ChatML's end of a turn: generation stops there in every model whose tokenizer has it


def stop_ids(model, tok) -> list[int]:
    """The token ids that end a generation: the model's generation config's eos ids, the tokenizer's eos,
    and `<|im_end|>` where the tokenizer holds it as an added token (ChatML, `model.chat_tokens`)."""
    config = getattr(model, "generation_config", None)
    ids = getattr(config, "eos_token_id", None)
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    extra = [tok.eos_token_id, tok.added_tokens_encoder.get(TURN_END)]
    return list(dict.fromkeys(int(i) for i in ids + extra if i is not None))


def _check_stop(stop: str) -> None:
    if stop not in STOP_RULES:
        raise ValueError(f"stop must be one of {', '.join(STOP_RULES)}, got {stop!r}")


def _generate_ids(model, tok, ids, mask, max_new_tokens: int, stop: str, temperature: float = 0.0, top_p: float = 1.0,
                  streamer=None, cache=None) -> torch.Tensor:
    """The new token ids (batch x new) of `model.generate` on a left-padded batch: the one call of it.

    temperature 0 is greedy; above 0 samples (with nucleus `top_p`) from torch's global generator. `streamer`:
    transformers' streamer protocol (`put(ids)`, prompt first, then each new token; `end()`). It stops at any
    of `stop_ids` (ChatML's `<|im_end|>` included), at the rule `stop` or at the budget. `cache`: a KV cache of
    the prompts' first tokens (generation runs the rest)."""
    from transformers import StoppingCriteriaList

    rule = STOP_RULES[stop]
    extra = {"stopping_criteria": StoppingCriteriaList([rule(tok, ids.shape[1])])} if rule else {}
    sample = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else \
        {"do_sample": False, "temperature": None, "top_p": None}
    gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, pad_token_id=pad_id(tok),
                         eos_token_id=stop_ids(model, tok), use_cache=True, top_k=None, streamer=streamer, **sample,
                         **extra, **({_cache_kwarg(model): cache} if cache is not None else {}))
    return gen[:, ids.shape[1]:]


def generate(model, tok, prompts: list[list[int]], max_new_tokens: list[int] | int, batch_size: int = 8,
             stop: str = "eos", desc: str = "generate", temperature: float = 0.0, top_p: float = 1.0) -> list[str]:
    """Greedy continuations (decoded, special tokens dropped) of tokenized prompts, in order.

    Prompts are sorted by length into left-padded batches (less padding); `max_new_tokens` may be
    per prompt (a batch uses the largest of its members). `stop`: "eos" (an end-of-sequence token,
    `stop_ids`, or the budget) or "line" (also once the first non-blank line is complete, see StopAfterLine).
    `temperature` > 0 samples instead (`top_p`: nucleus), from torch's global generator (seed it first).
    """
    _check_stop(stop)
    budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if isinstance(model, ApiModel):
        if temperature > 0:
            raise ApiModelError(f"API model {model.name!r}: replies are greedy here; sampling is for local models")
        return model.generate([model.conversation(tok, p) for p in prompts], budgets, batch_size, stop, desc)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    device = model_device(model)
    with inference(model), padding_side(tok, "left"):
        for _, chunk in batches(order, batch_size, desc):
            ids, mask = _pad_left([prompts[i] for i in chunk], pad_id(tok), device)
            new = _generate_ids(model, tok, ids, mask, max(budgets[i] for i in chunk), stop, temperature, top_p)
            for row, i in enumerate(chunk):
                out[i] = tok.decode(new[row], skip_special_tokens=True)
    return out


class TextPieces:
    """A streamer for `model.generate` that turns new tokens into text pieces as soon as they decode whole.

    It decodes a window of the last tokens (the piece already shown as context, so that a tokenizer's spacing
    rules see what came before) and passes on the text beyond it, holding back while the text ends in an
    incomplete character ("\ufffd": a multi-byte UTF-8 character split over tokens, as Korean is in a
    byte-level vocabulary). `end()` flushes what is left. The pieces joined equal decoding all tokens at once.
    """

    def __init__(self, tok, on_text):
        self.tok, self.on_text = tok, on_text
        self.ids: list[int] = []
        self.prefix = self.read = 0  # ids[prefix:read] is the context already shown, ids[read:] not yet shown
        self.prompt_seen = False
        self.pieces: list[str] = []
        self.first_token_at: float | None = None  # time.perf_counter() when the first new token came

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def _flush(self, final: bool) -> None:
        shown = self._decode(self.ids[self.prefix:self.read])
        text = self._decode(self.ids[self.prefix:])
        if len(text) > len(shown) and (final or not text.endswith("\ufffd")):
            piece = text[len(shown):]
            self.prefix, self.read = self.read, len(self.ids)
            self.pieces.append(piece)
            self.on_text(piece)

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate() passes the prompt first
            self.prompt_seen = True
            return
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.ids += value.reshape(-1).tolist()
        self._flush(final=False)

    def end(self) -> None:
        self._flush(final=True)


@dataclass
class Streamed:
    """What `stream` generated: the text (the pieces joined), its new tokens (an end-of-sequence token
    included), the seconds to the first new token and in all."""

    text: str
    new_tokens: int
    first_token_s: float
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        """Decoding speed after the first token (the prompt's processing is in `first_token_s`)."""
        rest = self.seconds - self.first_token_s
        return (self.new_tokens - 1) / rest if self.new_tokens > 1 and rest > 0 else 0.0


def stream(model, tok, prompt: list[int], max_new_tokens: int, on_text, stop: str = "eos", temperature: float = 0.0,
           top_p: float = 1.0) -> Streamed:
    """One continuation of a tokenized prompt, passed to `on_text(piece)` piece by piece as it is generated
    (`TextPieces`). Same stopping rules and greedy default as `generate` (which it equals for one prompt);
    it runs on the caller's thread, so Ctrl-C (KeyboardInterrupt) stops it."""
    _check_stop(stop)
    refuse_api(model, "token stream")
    pieces = TextPieces(tok, on_text)
    start = time.perf_counter()
    with inference(model):
        ids, mask = _pad_left([prompt], pad_id(tok), model_device(model))
        new = _generate_ids(model, tok, ids, mask, max_new_tokens, stop, temperature, top_p, streamer=pieces)
    end = time.perf_counter()
    first = (pieces.first_token_at or end) - start
    return Streamed("".join(pieces.pieces), int(new.shape[1]), first, end - start)


def generate_chat(model, tok, conversations: list[list[dict]], max_new_tokens: list[int] | int, batch_size: int = 8,
                  stop: str = "eos", desc: str = "generate", temperature: float = 0.0, top_p: float = 1.0) -> list[str]:
    """Greedy (or, with `temperature` > 0, sampled) assistant replies to chat conversations (through the
    tokenizer's chat template; an `ApiModel` sends each conversation to its endpoint as it is)."""
    if isinstance(model, ApiModel) and temperature <= 0:
        budgets = [max_new_tokens] * len(conversations) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        return model.generate(conversations, budgets, batch_size, stop, desc)
    prompts = [encode(tok, chat_text(tok, c)) for c in conversations]
    sampling = {"temperature": temperature, "top_p": top_p} if temperature > 0 else {}
    return generate(model, tok, prompts, max_new_tokens, batch_size, stop, desc, **sampling)


def continuation_logprobs(model, tok, pairs: list[tuple[list[int], list[int]]], batch_size: int = 8,
                          desc: str = "log-likelihood") -> list[float]:
    """Sum of log P(continuation tokens | context) for each (context ids, continuation ids) pair."""
    refuse_api(model, "log-likelihoods")
    device = model_device(model)
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    out = [0.0] * len(pairs)
    with inference(model):
        for _, chunk in batches(order, batch_size, desc):
            seqs = [pairs[i][0] + pairs[i][1] for i in chunk]
            ids, mask = _pad_left(seqs, pad_id(tok), device)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            keep = max(len(pairs[i][1]) for i in chunk) + 1
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep).logits
            logp = torch.log_softmax(logits[:, -keep:].float(), dim=-1)
            for row, i in enumerate(chunk):
                cont = pairs[i][1]
                c = len(cont)
                # position -1-c predicts cont[0], ..., position -2 predicts cont[-1]
                pred = logp[row, keep - 1 - c: keep - 1]
                out[i] = float(pred.gather(-1, torch.tensor(cont, device=device)[:, None]).sum())
    return out


def _cache_kwarg(model) -> str:
    """The forward() keyword for a KV cache: `cache` in recent transformers, `past_key_values` before."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _output_cache(res):
    cache = getattr(res, "cache", None)
    return cache if cache is not None else res.past_key_values


def _options(contexts: list, conts: list) -> list[list[list[int]]]:
    """Each context's continuations: `conts` itself when it holds each context's own (a list of id lists per
    context), else the same id lists for every context."""
    own = any(c and isinstance(c[0], list) for c in conts)  # each context's own options (some may have none)
    return conts if own else [conts] * len(contexts)


def _prefill(model, ids, mask):
    """The KV cache of a left-padded batch without its last column (None when that leaves nothing), recording the
    past from then on so that a sliding-window layer (Gemma-3) can be cropped back to it."""
    if ids.shape[1] < 2:
        return None
    pos = (mask[:, :-1].cumsum(-1) - 1).clamp(min=0)
    res = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos, use_cache=True, logits_to_keep=1)
    cache = _output_cache(res)
    if hasattr(cache, "activate_past_recording"):
        cache.activate_past_recording()
    return cache


def _score_from_cache(model, tok, ids, mask, cache, options: list[list[list[int]]]) -> list[list[float]]:
    """[r][j] = sum of log P(options[r][j] | row r of the left-padded batch `ids`), from the cache of all but its
    last column (`_prefill`): the j-th continuations of all rows run together after that last token (right-padded
    to the longest), and the cache is cropped back to the prefill after each."""
    device, b = mask.device, len(options)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, -1:]
    out = [[0.0] * len(o) for o in options]
    for j in range(max((len(o) for o in options), default=0)):
        cs = [o[j] if j < len(o) else [] for o in options]
        longest = max([len(c) for c in cs] + [1])
        step = torch.full((b, longest), pad_id(tok), dtype=torch.long)
        tail = torch.zeros((b, longest), dtype=mask.dtype)
        step[:, 0], tail[:, 0] = ids[:, -1].cpu(), 1  # the prompts' last token, then each continuation but its last
        for r, c in enumerate(cs):  # right-padded; a shorter (or absent) continuation masks the rest
            if len(c) > 1:
                step[r, 1:len(c)] = torch.tensor(c[:-1], dtype=torch.long)
                tail[r, 1:len(c)] = 1
        step, tail = step.to(device), tail.to(device)
        past = {_cache_kwarg(model): cache} if cache is not None else {}
        logits = model(input_ids=step, attention_mask=torch.cat([mask[:, :-1], tail], dim=1),
                       position_ids=pos + torch.arange(longest, device=device), use_cache=cache is not None,
                       **past).logits
        logp = torch.log_softmax(logits.float(), dim=-1)
        for r, c in enumerate(cs):
            if c:
                out[r][j] = float(logp[r, :len(c)].gather(-1, torch.tensor(c, device=device)[:, None]).sum())
        if cache is not None:
            cache.crop(-longest)  # back to the prefill
    return out


def _scored_batches(model, tok, contexts: list[list[int]], conts: list, batch_size: int, desc: str,
                    then=None) -> tuple[list, list[list[float]]]:
    """The loop of `shared_continuation_logprobs` and `generate_and_score`: length-sorted, left-padded batches, each
    prefilled once and its continuations scored from the cache; `then(ids, mask, cache)` (new token ids per row)
    goes on from the same cache. Returns (`then`'s rows in order, or Nones; the scores)."""
    refuse_api(model, "log-likelihoods")
    device = model_device(model)
    options = _options(contexts, conts)
    order = sorted(range(len(contexts)), key=lambda i: len(contexts[i]))
    rows, out = [None] * len(contexts), [[0.0] * len(options[i]) for i in range(len(contexts))]
    with inference(model), padding_side(tok, "left"):
        for _, chunk in batches(order, batch_size, desc):
            ids, mask = _pad_left([contexts[i] for i in chunk], pad_id(tok), device)
            cache = _prefill(model, ids, mask)
            for i, scores in zip(chunk, _score_from_cache(model, tok, ids, mask, cache, [options[i] for i in chunk])):
                out[i] = scores
            if then is not None:
                for i, row in zip(chunk, then(ids, mask, cache)):
                    rows[i] = row
    return rows, out


def shared_continuation_logprobs(model, tok, contexts: list[list[int]], conts: list[list[int]] | list[list[list[int]]],
                                 batch_size: int = 8, desc: str = "log-likelihood") -> list[list[float]]:
    """[i][j] = sum of log P(j-th continuation | contexts[i]). `conts`: the same continuations for every context
    (a list of id lists: yes/no spellings), or each context's own (one list of id lists per context: the options
    of a multiple-choice example).

    Each context batch runs once (all but its last token); its KV cache then scores the batch's j-th continuations
    together, after that last token (right-padded to the longest), and is cropped back, so a context is never run
    again per option. Sliding-window caches (Gemma-3) record their past for the crop.
    """
    return _scored_batches(model, tok, contexts, conts, batch_size, desc)[1]


def generate_and_score(model, tok, prompts: list[list[int]], conts: list[list[int]] | list[list[list[int]]],
                       max_new_tokens: int, batch_size: int = 8, stop: str = "eos",
                       desc: str = "generate + log-likelihood") -> tuple[list[str], list[list[float]]]:
    """`generate(prompts)` (greedy) and `shared_continuation_logprobs(prompts, conts)` from one prefill per batch:
    the prompt but its last token runs once, its cache scores the continuations (each after that token), then
    generation goes on from it. What a yes/no task in mode `both` needs, at the cost of one of its two passes
    over the prompts."""
    _check_stop(stop)

    def generate_rest(ids, mask, cache):
        new = _generate_ids(model, tok, ids, mask, max_new_tokens, stop, cache=cache)
        return [tok.decode(row, skip_special_tokens=True) for row in new]

    return _scored_batches(model, tok, prompts, conts, batch_size, desc, then=generate_rest)


def token_nlls(model, tok, texts: list[list[int]], batch_size: int = 8, desc: str = "perplexity") -> list[tuple[float, int]]:
    """(sum of NLL in nats, number of scored tokens) per token sequence; the first token is context only."""
    refuse_api(model, "token NLLs (perplexity)")
    device = model_device(model)
    out: list[tuple[float, int]] = [(0.0, 0)] * len(texts)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    with inference(model):
        for _, chunk in batches(order, batch_size, desc):
            ids, mask = _pad_right([texts[i] for i in chunk], pad_id(tok), device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
            nll = nll * mask[:, 1:]
            for r, i in enumerate(chunk):
                out[i] = (float(nll[r].sum()), max(len(texts[i]) - 1, 0))
    return out


def hidden_means(model, tok, texts: list[list[int]], batch_size: int = 8, desc: str = "hidden states") -> torch.Tensor:
    """[len(texts), layers + 1, hidden] float32: each token sequence's hidden states mean-pooled over its tokens,
    at the embedding output (index 0) and after every layer (the model's `output_hidden_states`)."""
    refuse_api(model, "hidden states")
    device = model_device(model)
    out: list[torch.Tensor | None] = [None] * len(texts)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    with inference(model):
        for _, chunk in batches(order, batch_size, desc):
            ids, mask = _pad_right([texts[i] for i in chunk], pad_id(tok), device)
            hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
            m = mask.unsqueeze(-1).float()
            pooled = torch.stack([(h.float() * m).sum(1) / m.sum(1).clamp_min(1) for h in hs], dim=1)
            for r, i in enumerate(chunk):
                out[i] = pooled[r].cpu()
    return torch.stack(out)


# --------------------------------------------------------------------------------------------- API models

def cut_after_first_line(text: str) -> str:
    """`text` up to and including the newline that ends its first non-blank line (stop rule "line" applied
    to a finished reply: what `StopAfterLine` leaves of a local model's generation)."""
    start = len(text) - len(text.lstrip())
    end = text.find("\n", start)
    return text if end < 0 else text[:end + 1]


class ApiTokenizer:
    """The tokenizer an `ApiModel` goes with, so that callers build prompts exactly as for a local model.

    Its chat template is the conversation itself as JSON (`ApiModel.conversation` reads it back) and its
    tokens are the text's characters. A budget computed from a token count (translation's "2 x the source's
    tokens + 16") thus becomes a character count: generous for an endpoint, which counts its own tokens.
    """

    padding_side = "left"
    pad_token_id = bos_token_id = eos_token_id = None
    chat_template = "(the conversation as JSON)"

    def apply_chat_template(self, messages, add_generation_prompt: bool = True, tokenize: bool = False, **kw):
        text = json.dumps(list(messages), ensure_ascii=False)
        return self(text)["input_ids"] if tokenize else text

    def __call__(self, text: str, add_special_tokens: bool = False, **kw) -> dict:
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids, skip_special_tokens: bool = True, **kw) -> str:
        return "".join(map(chr, ids))


class ApiModelError(UserError, ValueError):
    """An API model was asked for what an endpoint does not give (log-likelihoods, token NLLs)."""


class ApiModel:
    """A model behind an OpenAI-compatible endpoint: it answers through `generate_chat` / `generate`.

    `client`: a `lingotune.api.ChatClient` (anything with `chat(messages, max_tokens) -> str`, `model` and
    `identity`). Replies are greedy (the client's temperature 0); each batch of `batch_size` conversations
    goes out as that many concurrent requests; stop rule "line" cuts a reply after its first non-blank line
    (`cut_after_first_line`), "eos" keeps it whole. Use it with `ApiModel.tokenizer`.
    """

    training = False

    def __init__(self, client):
        self.client = client
        self.tokenizer = ApiTokenizer()

    @property
    def name(self) -> str:
        return self.client.model

    @property
    def identity(self) -> dict:
        """What identifies its answers (endpoint and model; never the key)."""
        return dict(self.client.identity)

    def conversation(self, tok, prompt_ids: list[int]) -> list[dict]:
        """The conversation behind prompt ids that `tok` (this model's `ApiTokenizer`) made."""
        if not isinstance(tok, ApiTokenizer):
            raise TypeError(f"API model {self.name!r}: build its prompts with its own tokenizer (ApiModel.tokenizer)")
        return json.loads(tok.decode(prompt_ids))

    def reply(self, messages: list[dict], max_tokens: int, stop: str = "eos") -> str:
        text = self.client.chat(messages, max_tokens)
        return cut_after_first_line(text) if stop == "line" else text

    def generate(self, conversations: list[list[dict]], budgets: list[int], batch_size: int = 8, stop: str = "eos",
                 desc: str = "generate") -> list[str]:
        from concurrent.futures import ThreadPoolExecutor

        _check_stop(stop)
        out: list[str] = []
        with ThreadPoolExecutor(max_workers=max(1, batch_size)) as pool:
            for _, chunk in batches(range(len(conversations)), batch_size, desc):
                out += pool.map(lambda i: self.reply(conversations[i], budgets[i], stop), chunk)
        return out


def refuse_api(model, what: str) -> None:
    """ApiModelError when `model` is an API model: an endpoint gives no `what`."""
    if isinstance(model, ApiModel):
        raise ApiModelError(f"API model {model.name!r}: an endpoint gives no {what}; use generation tasks or a local model")
