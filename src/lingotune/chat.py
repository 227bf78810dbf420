"""`lingotune chat`: talk to a run directory, a model directory (an export) or a model id.

A run directory is read and rebuilt by the export's own `read_run` and `build_model`: chat talks to exactly
the model `lingotune export` would write.

Interactive: each reply streams as it is generated (`inference.stream`); the conversation is kept as
messages and rendered through the model's chat template every turn; `/system TEXT`, `/reset`, `/exit`;
Ctrl-D or Ctrl-C at the prompt ends the session (exit code 0), Ctrl-C during a reply stops that reply.
With `compare`, the untouched (base) model answers beside the adapted one, each keeping its own replies.

Non-interactive (`--prompts FILE`, `-` for stdin): every prompt is a new one-turn conversation, answered in
batches (`inference.generate_chat`); the records go out as JSONL. Prompts are one per line (blank lines
skipped), or JSONL with a `prompt` string (and an optional `system` string) when the file ends in `.jsonl`
or `--jsonl` is given.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from lingotune import inference
from lingotune.errors import UserError, one_line
from lingotune.files import FileFormatError, atomic_write_text

COMMANDS = "/system TEXT (set the system prompt; /system alone removes it), /reset (forget the turns), /exit"


@dataclass
class Settings:
    """How replies are generated (recorded with every answer)."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None  # seeds torch once, for sampling

    def record(self) -> dict:
        out = {"max_new_tokens": self.max_new_tokens, "greedy": self.temperature <= 0}
        if self.temperature > 0:
            out.update(temperature=self.temperature, top_p=self.top_p, seed=self.seed)
        return out


@dataclass
class Chatter:
    """One model in a chat: `label` ("model", or "base" and "adapted" with compare), what it was loaded from."""

    label: str
    source: str
    model: object
    tok: object


def is_run(path: Path) -> bool:
    """A run directory (lingotune's marker of a run, or a results.json), finished or not."""
    from lingotune import rundir

    return (path / "results.json").is_file() or rundir.marker_kind(path) == "run"


def check(source: str) -> str | None:
    """Cheap checks before anything loads (`export.read_run`'s for a run directory: marker, recipe.yaml, every
    stage finished, its artefacts there); the model the run started from, None for a model. A propagated LEP
    run started from its instruct model. A directory with config.json is a model directory (an export)."""
    from lingotune.export import chain, read_run
    from lingotune.models import ModelLoadError, resolve

    path = Path(source).expanduser()
    base = None
    if is_run(path):
        recipe, results = read_run(path)
        if results.get("propagation"):
            return recipe.propagate.instruct  # the run's product is the propagated model (its propagated/)
        chain(path, recipe, results)
        base = recipe.model.source
    elif path.is_dir() and not (path / "config.json").exists():
        raise ModelLoadError(f"model {source!r}: neither a run directory (results.json) nor a model directory (config.json)")
    if not (base or source).startswith("bundled"):
        resolve(base or source)
    return base


def load(source: str, label: str, device: str = "cpu", loading: dict | None = None) -> Chatter:
    """A run directory as `lingotune export` builds it (`export.build_model`: an extended vocabulary or ChatML's
    tokens, every stage's artefacts, a propagated model, the recipe's dtype, attention kernel and remote code),
    anything else through `models.load_model` (with `loading`: a run's `recipe.model.loading()`, for its base)."""
    from lingotune.export import build_model, read_run
    from lingotune.models import load_model

    path = Path(source).expanduser()
    if is_run(path):
        model, tok, _ = build_model(path, *read_run(path))
        model.to(device)
    else:
        model, tok = load_model(source, device=device, **(loading or {}))
        model.eval()
    return Chatter(label, str(path.resolve()) if path.exists() else source, model, tok)


def load_all(source: str, compare: bool, base: str | None, console: Console, device: str = "cpu") -> list[Chatter]:
    """The chatters: the model alone, or with `compare` its base model first and then the adapted one."""
    from lingotune.export import read_run

    run_base = check(source)
    if compare:
        base = base or run_base
        if base is None:
            raise UserError("option --compare: name the untouched model with --base MODEL (only a run directory "
                            "knows its own base model)")
        check(base)
    out = []
    for src, label in ([(base, "base")] if compare else []) + [(source, "adapted" if compare else "model")]:
        start = time.perf_counter()
        console.print(f"[dim]loading {label} {src} …[/]", highlight=False)
        # a run's base loads as the run loaded it (its recipe's dtype, attention kernel, remote code)
        loading = read_run(Path(source).expanduser())[0].model.loading() if label == "base" and run_base else None
        out.append(load(src, label, device, loading))
        console.print(f"[dim]{label}: loaded in {time.perf_counter() - start:.1f} s[/]", highlight=False)
    return out


# --------------------------------------------------------------------------------------------- prompts file

def read_prompts(path: str, jsonl: bool = False) -> list[dict]:
    """[{"prompt", "system"}] from a file or stdin ("-"); FileFormatError naming the file and line."""
    name = "stdin" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise FileFormatError(f"{name}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise FileFormatError(f"{name}: cannot read prompts ({e.strerror or one_line(e)})") from None
    as_jsonl = jsonl or name.endswith(".jsonl")
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if not as_jsonl:
            out.append({"prompt": line, "system": None})
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise FileFormatError(f"{name} line {n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise FileFormatError(f"{name} line {n}: needs a non-empty string field 'prompt'")
        if row.get("system") is not None and not isinstance(row["system"], str):
            raise FileFormatError(f"{name} line {n}: field 'system' must be a string")
        out.append({"prompt": row["prompt"], "system": row.get("system")})
    if not out:
        raise FileFormatError(f"{name}: no prompts (one a line{', JSONL with a prompt field' if as_jsonl else ''})")
    return out


def conversation(system: str | None, turns: list[dict]) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + turns


def render(tok, messages: list[dict]) -> str:
    """The chat-template text the model sees; a template that refuses the conversation is a UserError."""
    from jinja2 import TemplateError

    try:
        return inference.chat_text(tok, messages)
    except TemplateError as e:
        raise UserError(f"the model's chat template refuses this conversation ({one_line(e)})") from None


def answer_file(chatters: list[Chatter], prompts: list[dict], system: str | None, settings: Settings,
                batch_size: int = 8) -> list[dict]:
    """One record per prompt: prompt, system, answer and model (with compare also base_answer, base_model),
    the generation settings."""
    records = [{"prompt": p["prompt"], "system": p["system"] if p["system"] is not None else system} for p in prompts]
    for c in chatters:
        convs = [conversation(r["system"], [{"role": "user", "content": r["prompt"]}]) for r in records]
        for conv in convs:
            render(c.tok, conv)  # a template that refuses a system prompt fails before any work
        answers = inference.generate_chat(c.model, c.tok, convs, settings.max_new_tokens, batch_size,
                                          desc=f"answers {c.label}", temperature=settings.temperature,
                                          top_p=settings.top_p)
        key = "base_" if c.label == "base" else ""
        for r, a in zip(records, answers):
            r[key + "answer"], r[key + "model"] = a.strip(), c.source
    for r in records:
        r["settings"] = settings.record()
    return records


def write_records(records: list[dict], out: Path | None) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write_text(out, text)


# --------------------------------------------------------------------------------------------- interactive

class Session:
    """An interactive chat: the system prompt, each chatter's turns, the transcript."""

    def __init__(self, chatters: list[Chatter], settings: Settings, console: Console, system: str | None = None,
                 transcript: Path | None = None):
        self.chatters, self.settings, self.console = chatters, settings, console
        self.system = system
        self.turns: dict[str, list[dict]] = {c.label: [] for c in chatters}
        self.transcript = transcript

    def command(self, line: str) -> bool:
        """Apply a /command; False when the session ends."""
        name, _, arg = line.strip().partition(" ")
        if name in ("/exit", "/quit"):
            return False
        if name == "/reset":
            self.turns = {c.label: [] for c in self.chatters}
            self.console.print("[dim]conversation reset[/]")
        elif name == "/system":
            self.system = arg.strip() or None
            self.console.print(f"[dim]system prompt {'set' if self.system else 'removed'}[/]")
        else:
            self.console.print(f"[yellow]unknown command {name}[/]; commands: {COMMANDS}", highlight=False)
        return True

    def log(self, record: dict) -> None:
        if self.transcript is not None:
            with self.transcript.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def reply(self, c: Chatter, on_text) -> inference.Streamed:
        """`c`'s reply to its conversation so far (which ends with the user's turn)."""
        text = render(c.tok, conversation(self.system, self.turns[c.label]))
        s = self.settings
        got = inference.stream(c.model, c.tok, inference.encode(c.tok, text), s.max_new_tokens, on_text,
                               temperature=s.temperature, top_p=s.top_p)
        self.log({"model": c.label, "source": c.source, "input": text, "answer": got.text, "new_tokens": got.new_tokens,
                  "first_token_s": round(got.first_token_s, 4), "seconds": round(got.seconds, 4),
                  "tokens_per_s": round(got.tokens_per_s, 2), "settings": s.record()})
        return got

    def ask(self, prompt: str) -> None:
        """One user turn: every chatter answers (streamed); an interrupted or refused turn is forgotten."""
        for turns in self.turns.values():
            turns.append({"role": "user", "content": prompt})
        try:
            got = self._answer_compare() if len(self.chatters) > 1 else [self._answer_one(self.chatters[0])]
        except (KeyboardInterrupt, UserError) as e:
            for turns in self.turns.values():
                turns.pop()
            self.console.print("\n[yellow]" + ("reply interrupted" if isinstance(e, KeyboardInterrupt) else
                                               f"error: {one_line(e)}") + "[/]; the turn is forgotten", highlight=False)
            return
        for c, g in zip(self.chatters, got):
            self.turns[c.label].append({"role": "assistant", "content": g.text.strip()})

    def _answer_one(self, c: Chatter) -> inference.Streamed:
        out = self.console.file

        def show(piece: str) -> None:
            out.write(piece)
            out.flush()

        self.console.print("[bold cyan]model>[/] ", end="")
        got = self.reply(c, show)
        self.console.print(f"\n[dim]({stats(got)})[/]", highlight=False)
        return got

    def _answer_compare(self) -> list[inference.Streamed]:
        from rich.live import Live

        texts = {c.label: "" for c in self.chatters}
        notes = {c.label: "" for c in self.chatters}
        got = []
        with Live(side_by_side(self.chatters, texts, notes), console=self.console, refresh_per_second=8,
                  transient=True) as live:  # redrawn 8 times a second, not per token (the table grows)
            for c in self.chatters:
                def show(piece: str, label=c.label) -> None:
                    texts[label] += piece
                    live.update(side_by_side(self.chatters, texts, notes))

                got.append(self.reply(c, show))
                notes[c.label] = stats(got[-1])
        self.console.print(side_by_side(self.chatters, texts, notes))
        return got


def stats(got: inference.Streamed) -> str:
    return (f"{got.new_tokens} tokens, first after {got.first_token_s:.2f} s, {got.tokens_per_s:.1f} tokens/s")


def side_by_side(chatters: list[Chatter], texts: dict[str, str], notes: dict[str, str]):
    from rich.table import Table
    from rich.text import Text

    table = Table(expand=True, show_lines=False)
    for c in chatters:
        table.add_column(f"{c.label}: {c.source}", ratio=1, overflow="fold")
    table.add_row(*(Text(texts[c.label]) for c in chatters))
    if any(notes.values()):
        table.add_row(*(Text(notes[c.label], style="dim") for c in chatters))
    return table


def interact(session: Session) -> None:
    """Read turns until /exit, Ctrl-D or Ctrl-C at the prompt."""
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    console = session.console
    names = ", ".join(f"{c.label} {c.source}" for c in session.chatters)
    console.print(f"[bold]chat[/] with {names}; {COMMANDS}; Ctrl-D ends", highlight=False)
    while True:
        try:
            line = console.input("[bold green]you>[/] ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        if not line.strip():
            continue
        if line.startswith("/"):
            if not session.command(line):
                return
            continue
        session.ask(line)


def settings_of(max_new_tokens: int, temperature: float, top_p: float, seed: int | None) -> Settings:
    import torch

    if not 0 < top_p <= 1:
        raise ValueError(f"option --top-p: {top_p} is not in (0, 1]")
    if seed is not None:
        torch.manual_seed(seed)
    return Settings(max_new_tokens, temperature, top_p, seed)

