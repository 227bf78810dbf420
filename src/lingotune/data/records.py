"""The two shapes data takes inside lingotune.

`Record`: one instruction/answer as a reader found it, with where it came from.
`Example`: one chat conversation ready for training: a list of messages whose last one is
the assistant's answer, plus metadata. Examples are stored as JSONL, one dict a line:
    {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...], "meta": {...}}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lingotune.errors import UserError


class DataError(UserError, ValueError):
    """A problem with input data; the message names the file, line and field at fault."""


@dataclass
class Record:
    prompt: str  # the user's turn (instruction and input joined)
    response: str  # the assistant's answer
    system: str | None = None  # a system prompt, when the source has one (OpenOrca)
    id: str | None = None  # a stable id, when the source has one
    lang: str | None = None  # ISO code of the language the record is written in
    source: str = ""  # "file:line" it was read from, for error messages and audits

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PrefRecord:
    """One preference pair: a prompt, the preferred (chosen) and the dispreferred (rejected) answer.

    Stored as the standard prompt/chosen/rejected JSONL (plus system, id, lang, source, kind); `kind`
    says how the pair was built ("cross-lingual", "label", "on-policy", or "file")."""

    prompt: str
    chosen: str
    rejected: str
    system: str | None = None
    id: str | None = None
    lang: str | None = None
    source: str = ""  # "file:line" or the builder that made it
    kind: str = "file"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Example:
    messages: list[dict[str, str]]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"messages": self.messages, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "") -> "Example":
        msgs = d.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise DataError(f"{where}: field 'messages' must be a non-empty list")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ("system", "user", "assistant"):
                raise DataError(f"{where}: field 'messages[{i}]' must have role system|user|assistant and string content")
        if msgs[-1]["role"] != "assistant":
            raise DataError(f"{where}: field 'messages' must end with an assistant message")
        return cls(messages=msgs, meta=dict(d.get("meta") or {}))
