"""Statistics of data files: counts, lengths and tokens per character per language under a tokenizer.

Tokens per character (tokens / characters, summed over texts) says how well a tokenizer covers a language:
an English-centric tokenizer splits Russian, Arabic or Korean into many more tokens per character.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from lingotune.data.formats import read_examples
from lingotune.data.records import DataError
from lingotune.languages import get_language


@dataclass
class Stats:
    name: str  # file (and kind) the texts come from
    lang: str
    count: int
    chars: int
    tokens: int | None
    mean_prompt_chars: float | None = None
    mean_answer_chars: float | None = None

    @property
    def tokens_per_char(self) -> float | None:
        return None if self.tokens is None or not self.chars else self.tokens / self.chars

    def to_dict(self) -> dict:
        return {"name": self.name, "lang": self.lang, "count": self.count, "chars": self.chars, "tokens": self.tokens,
                "tokens_per_char": self.tokens_per_char, "mean_prompt_chars": self.mean_prompt_chars,
                "mean_answer_chars": self.mean_answer_chars}


def count_tokens(tokenizer, texts: list[str], batch: int = 256) -> int:
    """Tokens of `texts` without special tokens."""
    n = 0
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i:i + batch], add_special_tokens=False)["input_ids"]
        n += sum(len(x) for x in enc)
    return n


def text_stats(name: str, lang: str, texts: list[str], tokenizer=None) -> Stats:
    return Stats(name, lang, len(texts), sum(len(t) for t in texts),
                 count_tokens(tokenizer, texts) if tokenizer is not None else None)


def flores_stats(root: str | Path, langs: list[str], tokenizer=None, split: str = "devtest") -> list[Stats]:
    """Per-language stats of the FLORES-200 files under `root` (the data root or the flores200 folder)."""
    root = Path(root)
    base = root / "flores200" if (root / "flores200").is_dir() else root
    out = []
    for lang in langs:
        path = base / split / f"{get_language(lang).flores}.{split}"
        if not path.exists():
            raise DataError(f"{path}: file not found")
        lines = [t for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
        out.append(text_stats(f"flores {path.name}", lang, lines, tokenizer))
    return out


def example_stats(path: str | Path, tokenizer=None) -> list[Stats]:
    """Stats of an Example JSONL file, grouped by (meta.lang, meta.kind); tokens over the answers (which are in
    the example's language) and prompt/answer mean lengths."""
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for ex in read_examples(path):
        groups[(str(ex.meta.get("lang", "?")), str(ex.meta.get("kind", "?")))].append(ex)
    out = []
    for (lang, kind), exs in sorted(groups.items()):
        answers = [e.messages[-1]["content"] for e in exs]
        prompts = [next((m["content"] for m in e.messages if m["role"] == "user"), "") for e in exs]
        s = text_stats(f"{path} [{kind}]", lang, answers, tokenizer)
        s.mean_prompt_chars = sum(map(len, prompts)) / len(prompts)
        s.mean_answer_chars = sum(map(len, answers)) / len(answers)
        out.append(s)
    return out


def lines_stats(path: str | Path, lang: str, tokenizer=None) -> list[Stats]:
    """Stats of a plain text file, one text a line."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    lines = [t for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
    return [text_stats(str(path), lang, lines, tokenizer)]
