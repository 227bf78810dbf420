"""Perplexity and bits per character on target-language text (e.g. FLORES devtest lines).

Each line is scored on its own, tokenized as the tokenizer encodes it: with BOS when the
tokenizer adds one (then every text token is scored); without, the line's first token is
context only (nothing predicts it). Then:
    bits per char   = sum of token NLL (nats) / ln 2 / sum of characters (len of every line)
    perplexity      = exp(sum of token NLL / number of scored tokens)   (token level)
Both are ratios of corpus sums; their 95% CIs resample lines.

Why not put a BOS in front when the tokenizer adds none: such a token is not always a document
start (SmolLM2's declared BOS is <|im_start|>, a chat-turn opener); on 200 Russian FLORES lines
it raised the bundled model's bits/char from 2.98 to 3.23 (<|endoftext|> in front: 3.02).
Without it, the first token's characters count but its NLL does not, a small downward bias that
is the same for every model sharing the tokenizer (base vs adapted).
"""

from __future__ import annotations

import math

import numpy as np

from lingotune import inference
from lingotune.eval.metrics import bits_per_char, bootstrap_ci


def line_ids(tok, text: str) -> list[int]:
    """Token ids of one line as the tokenizer encodes it (with BOS when it adds one)."""
    return tok(text)["input_ids"]


def score_texts(model, tok, texts: list[str], batch_size: int = 8, desc: str = "perplexity") -> list[tuple[float, int, int]]:
    """(NLL nats, scored tokens, characters) per text."""
    ids = [line_ids(tok, t) for t in texts]
    nlls = inference.token_nlls(model, tok, ids, batch_size, desc)
    return [(nll, n, len(t)) for (nll, n), t in zip(nlls, texts)]


def run_perplexity(model, tok, spec, rows: list[dict], cfg) -> tuple[list[dict], dict, dict]:
    texts = [r["text"] for r in rows if r["text"].strip()]
    ids = [r["id"] for r in rows if r["text"].strip()]
    scores = score_texts(model, tok, texts, cfg.batch_size, desc=spec.name)
    arr = np.array([(a, b, c) for a, b, c in scores], dtype=np.float64)
    nll, ntok, nch = arr.sum(axis=0) if len(arr) else (0.0, 0, 0)
    metrics = {
        "bits_per_char": bits_per_char(nll, int(nch)),
        "perplexity": math.exp(nll / ntok) if ntok else float("nan"),
        "nll_per_token": nll / ntok if ntok else float("nan"),
        "tokens": int(ntok),
        "chars": int(nch),
    }
    cis = {
        "bits_per_char": bootstrap_ci(len(arr), lambda i: arr[i, 0].sum() / math.log(2) / arr[i, 2].sum(), cfg.n_bootstrap, cfg.seed),
        "perplexity": bootstrap_ci(len(arr), lambda i: math.exp(arr[i, 0].sum() / arr[i, 1].sum()), cfg.n_bootstrap, cfg.seed),
    }
    records = [{"id": i, "text": t, "nll": round(a, 4), "tokens": b, "chars": c} for i, t, (a, b, c) in zip(ids, texts, scores)]
    return records, metrics, cis
