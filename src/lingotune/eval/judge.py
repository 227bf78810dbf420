"""Pairwise win rate (the SFT/DPO/ORPO-for-Korean paper's Table 1): model A against model B on open prompts.

Both models answer every prompt (`lingotune.eval.answers`: cached, resumable). A judge then compares the two
answers to each prompt twice, once with A's answer shown first and once with B's; the final outcome for A is
its verdict when both orders agree, and a tie when they do not (position bias cancels out). Judges:

- `llm`: a model of an OpenAI-compatible endpoint (`--judge-model`, through `inference.ApiModel`);
- `local`: a local Hugging Face model (`--judge-model`: 'bundled', a directory, a hub id), greedy through
  `inference.generate_chat`. Both get the language's `judge_prompt` (`lingotune.languages`: in the target
  language; {question}, {answer_a}, {answer_b}) as one user turn and end with "[[A]]", "[[B]]" or "[[C]]"
  (tie). `parse_verdict` takes the last such mark (Cyrillic and full-width look-alikes of A, B, C accepted),
  else a reply that is only "A", "B", "C" or "tie"; anything else is unparsed and counts as a tie.
  (A log-likelihood comparison of the verdict tokens was not used: the judge explains first, as MT-Bench's
  does, and the mark comes after the explanation.)
- `reference`: offline. Each answer gets chrF++ (sacrebleu, word order 2, as `eval.metrics`) against the
  prompt's reference answer and a script check: an answer fails it when fewer than half of its letters are
  in the target language's script (an answer without letters does not fail it). An answer that fails loses
  to one that passes; otherwise the higher chrF++ wins, and a difference of at most `tie_margin` points
  (default 1.0) is a tie. Prompts without a reference are left out and counted. Echo: before scoring, every
  run of `echo_run` (default 5) or more consecutive words that the prompt also has is cut from the answer
  (`strip_echo`), so repeating the question earns no chrF++ (a reference answer often restates it); the
  words cut are counted in the verdict's text. `echo_run` 0 scores answers whole.

Reported (`summary.json`): wins, ties and losses of A over n prompts, each share with a 95% Wilson score
interval (closed form, no resampling: the outcomes are categorical counts over prompts), how many pairs
were inconsistent across the two orders and how many verdicts were unparsed; and every model's
target-language share: the share of its answers with at least half of their letters in the target script,
with its Wilson interval (answers without letters are left out, and counted). `judgements.jsonl` holds
every prompt: both answers, both verdicts with the judge's text, and the final outcome.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from lingotune import inference
from lingotune.api import ApiError
from lingotune.eval.answers import Endpoint, JsonlCache, ModelSpec, Prompt, answers_for, load_prompts
from lingotune.languages import get_language, letter_script

JUDGES = ("llm", "local", "reference")
DEFAULT_TIE_MARGIN = 1.0
DEFAULT_ECHO_RUN = 5
Z95 = 1.959963984540054

# ----------------------------------------------------------------------------------------- verdicts

_LOOKALIKE = str.maketrans({"А": "A", "В": "B", "С": "C", "а": "a", "с": "c", "Ａ": "A", "Ｂ": "B", "Ｃ": "C",
                            "［": "[", "］": "]", "【": "[", "】": "]"})
_MARK = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)
_BARE = {"A": "A", "B": "B", "C": "tie", "TIE": "tie"}


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or 'tie' from a judge's reply (see the module doc), or None when it names none."""
    text = (text or "").translate(_LOOKALIKE)
    marks = _MARK.findall(text)
    if marks:
        return _BARE[marks[-1].upper()]
    bare = re.sub(r"[\W_]+", " ", text).strip().upper()
    return _BARE.get(bare)


def for_a(a_first: str | None, b_first: str | None) -> tuple[str, str]:
    """Both verdicts in A's terms ('win', 'tie', 'loss'): the first with A's answer shown as A, the second
    with B's answer shown as A. An unparsed verdict is a tie."""
    return {"A": "win", "B": "loss"}.get(a_first, "tie"), {"A": "loss", "B": "win"}.get(b_first, "tie")


def outcome(a_first: str | None, b_first: str | None) -> str:
    """A's final outcome: the verdict both orders agree on; disagreeing orders make a tie."""
    one, two = for_a(a_first, b_first)
    return one if one == two else "tie"


def wilson(k: int, n: int, z: float = Z95) -> list[float] | None:
    """The Wilson score interval of the share k/n, in percent (None when n is 0)."""
    if n <= 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [round(100 * max(0.0, centre - half), 4), round(100 * min(1.0, centre + half), 4)]


def summarize(outcomes: list[str]) -> dict:
    """Counts, shares (%) and 95% Wilson intervals of A's wins, ties and losses."""
    n = len(outcomes)
    res: dict = {"n": n, "ci": {}, "ci_method": "Wilson score interval, 95%, over prompts"}
    for name, word in (("wins", "win"), ("ties", "tie"), ("losses", "loss")):
        k = outcomes.count(word)
        rate = name[:-1] if name != "losses" else "loss"
        res[name] = k
        res[f"{rate}_rate"] = round(100 * k / n, 4) if n else None
        res["ci"][f"{rate}_rate"] = wilson(k, n)
    return res


# ----------------------------------------------------------------------------------------- scripts

def script_letters(text: str, script: str) -> float | None:
    """Share of the letters of `text` in `script`, or None when it has no letters."""
    letters = [s for s in map(letter_script, text) if s is not None]
    return sum(s == script for s in letters) / len(letters) if letters else None


def in_script(text: str, script: str) -> bool | None:
    """At least half of the letters in `script` (None: no letters)."""
    share = script_letters(text, script)
    return None if share is None else share >= 0.5


def target_share(answers: list[str], script: str) -> dict:
    """The share (%) of answers in the target script, with its Wilson interval; answers without letters are
    left out of n and counted in `no_letters`."""
    flags = [in_script(a, script) for a in answers]
    n = sum(f is not None for f in flags)
    k = sum(f is True for f in flags)
    return {"share": round(100 * k / n, 4) if n else None, "ci": wilson(k, n), "in_script": k, "n": n,
            "no_letters": len(flags) - n}


# ----------------------------------------------------------------------------------------- judges

_WORD = re.compile(r"\w+")


def strip_echo(answer: str, prompt: str, run: int) -> tuple[str, int]:
    """(`answer` without every run of `run` or more consecutive words that the prompt also has in that order,
    case-folded; the number of words removed). The text between kept words stays as written."""
    words = [(m.start(), m.end(), m.group().casefold()) for m in _WORD.finditer(answer)]
    if run <= 0 or len(words) < run:
        return answer, 0
    said = [w.casefold() for w in _WORD.findall(prompt)]
    grams = {tuple(said[i:i + run]) for i in range(len(said) - run + 1)}
    echoed = [False] * len(words)
    for i in range(len(words) - run + 1):
        if tuple(w for _, _, w in words[i:i + run]) in grams:
            echoed[i:i + run] = [True] * run
    if not any(echoed):
        return answer, 0
    out, pos = [], 0
    for i, ((start, end, _), cut) in enumerate(zip(words, echoed)):
        if cut and (i == 0 or not echoed[i - 1]):  # a copied run starts: keep the text before it
            out.append(answer[pos:start])
        if cut:
            pos = end  # ... and drop everything up to the end of its last word
    out.append(answer[pos:])
    return "".join(out), sum(echoed)


@dataclass
class ReferenceJudge:
    script: str
    tie_margin: float = DEFAULT_TIE_MARGIN
    echo_run: int = DEFAULT_ECHO_RUN
    kind: str = "reference"

    @property
    def identity(self) -> dict:
        return {"kind": self.kind, "metric": "chrF++", "tie_margin": self.tie_margin, "script": self.script,
                **({"echo_run": self.echo_run} if self.echo_run else {})}

    def score(self, answer: str, reference: str, prompt: str = "") -> tuple[float, bool, int]:
        """(chrF++ against the reference of the answer less what it echoes of the prompt, passes the script
        check, words removed as echo); 0 when only punctuation is left."""
        from lingotune.eval.metrics import chrf_metric

        own, echoed = strip_echo(answer, prompt, self.echo_run)
        chrf = float(chrf_metric().sentence_score(own, [reference]).score) if _WORD.search(own) else 0.0
        return chrf, in_script(answer, self.script) is not False, echoed

    def verdict(self, first: str, second: str, reference: str, prompt: str = "") -> tuple[str, str]:
        """('A' | 'B' | 'tie', how it was decided) for the answers shown first (A) and second (B)."""
        (c1, ok1, e1), (c2, ok2, e2) = self.score(first, reference, prompt), self.score(second, reference, prompt)
        note = f"chrF++ {c1:.2f} vs {c2:.2f}; target script {'yes' if ok1 else 'no'} vs {'yes' if ok2 else 'no'}"
        if e1 or e2:
            note += f"; words echoed from the prompt, not scored: {e1} vs {e2}"
        if ok1 != ok2:
            return ("A" if ok1 else "B"), note + " (script rule)"
        if abs(c1 - c2) <= self.tie_margin:
            return "tie", note + f" (within {self.tie_margin:g})"
        return ("A" if c1 > c2 else "B"), note

    def judge(self, items: list[tuple[str, str, str, str | None]]) -> list[dict]:
        return [dict(zip(("verdict", "text"), self.verdict(x, y, ref, q))) for q, x, y, ref in items]


@dataclass
class ChatJudge:
    """The LLM judge (`llm`, an API model) or a local model as judge (`local`): same prompt, same parser."""

    kind: str
    spec: ModelSpec
    endpoint: Endpoint
    template: str
    max_tokens: int = 512
    batch_size: int = 8
    device: str = "cpu"
    _loaded: list = field(default_factory=list, repr=False)

    @property
    def identity(self) -> dict:
        return {"kind": self.kind, "model": self.spec.identity(self.endpoint), "prompt": self.template,
                "max_tokens": self.max_tokens}

    def judge(self, items: list[tuple[str, str, str, str | None]]) -> list[dict]:
        if not self._loaded:
            self._loaded.extend(self.spec.load(self.endpoint, self.device))
        convs = [[{"role": "user", "content": self.template.format(question=q, answer_a=x, answer_b=y)}]
                 for q, x, y, _ in items]
        texts = inference.generate_chat(self._loaded[0], self._loaded[1], convs, self.max_tokens, self.batch_size,
                                        desc=f"judge ({self.kind})")
        return [{"verdict": parse_verdict(t), "text": t} for t in texts]


def judge_both_orders(judge, prompts: list[Prompt], answers_a: list[str], answers_b: list[str], cache: JsonlCache,
                      batch_size: int) -> tuple[list[dict], list[dict]]:
    """(verdicts with A's answer first, verdicts with B's answer first), cached per judge, prompt and order."""
    items = [(p.prompt, a, b, p.reference) for p, a, b in zip(prompts, answers_a, answers_b)]
    items += [(p.prompt, b, a, p.reference) for p, a, b in zip(prompts, answers_a, answers_b)]
    keys = [cache.key("judgement", judge.identity, q, x, y, ref if judge.kind == "reference" else None)
            for q, x, y, ref in items]
    done = cache.fill(keys, lambda idx: judge.judge([items[i] for i in idx]), batch_size)
    return done[:len(prompts)], done[len(prompts):]


# ----------------------------------------------------------------------------------------- the run

@dataclass
class JudgeOptions:
    a: ModelSpec
    b: ModelSpec
    prompts: str
    judge: str
    out: Path
    lang: str = "ru"
    judge_model: str | None = None
    endpoint: Endpoint = field(default_factory=Endpoint)
    max_new_tokens: int = 512
    judge_max_tokens: int = 512
    batch_size: int = 8
    limit: int | None = None
    tie_margin: float = DEFAULT_TIE_MARGIN
    echo_run: int = DEFAULT_ECHO_RUN
    cache_dir: Path | None = None
    data_root: str | None = None
    device: str = "cpu"
    resume: bool = False
    overwrite: bool = False


def make_judge(opts: JudgeOptions):
    """The judge `opts` asks for; one-line errors (nothing written) for an unknown kind or a missing model."""
    if opts.judge not in JUDGES:
        raise ValueError(f"option --judge: unknown judge {opts.judge!r}; use one of {', '.join(JUDGES)}")
    if opts.judge == "reference" and opts.tie_margin < 0:
        raise ValueError(f"option --tie-margin: must be >= 0, got {opts.tie_margin:g}")
    if opts.judge != "reference" and not opts.judge_model:
        raise ValueError(f"option --judge-model: judge {opts.judge!r} needs a model")
    if opts.echo_run < 0:
        raise ValueError(f"option --echo-run: must be >= 0, got {opts.echo_run}")
    return build_judge(opts.judge, opts.lang, opts.judge_model, opts.endpoint, opts.tie_margin, opts.judge_max_tokens,
                       opts.batch_size, opts.device, echo_run=opts.echo_run)


def build_judge(kind: str, lang: str, judge_model: str | None, endpoint: Endpoint, tie_margin: float = DEFAULT_TIE_MARGIN,
                max_tokens: int = 512, batch_size: int = 8, device: str = "cpu", option: str = "--judge-model",
                echo_run: int = DEFAULT_ECHO_RUN):
    """A judge of `kind` (see the module doc), checked cheaply: no model is loaded until it first judges."""
    language = get_language(lang)
    if kind == "reference":
        return ReferenceJudge(language.script, tie_margin, echo_run)
    if kind == "local" and judge_model.startswith("api:"):
        how = f"--judge llm --judge-model {judge_model[4:]}" if option.startswith("--") else \
            f"judge: llm with judge_model: {judge_model[4:]}"
        raise ValueError(f"option {option}: {judge_model!r} is an endpoint's model; use {how}")
    template = language.require("judge_prompt", ValueError, f"the {kind} judge")
    spec = ModelSpec(f"api:{judge_model}" if kind == "llm" else judge_model)
    spec.check(option)
    return ChatJudge(kind, spec, endpoint, template, max_tokens, batch_size, device)


@dataclass
class Checked:
    prompts: list[Prompt]
    judge: object
    action: str  # lingotune.rundir's decision for --out
    without_reference: int = 0  # prompts the reference judge leaves out


def check_inputs(opts: JudgeOptions) -> Checked:
    """Everything that can fail on bad input, before anything is written."""
    from lingotune import rundir
    from lingotune.api import api_key_from_env

    judge = make_judge(opts)
    prompts = load_prompts(opts.prompts, opts.lang, opts.data_root, opts.limit)
    kept = [p for p in prompts if p.reference is not None] if opts.judge == "reference" else prompts
    if not kept:
        raise ValueError(f"option --judge reference: the prompts of {opts.prompts} have no reference answers "
                         f"(field 'reference')")
    opts.a.check("--a")
    opts.b.check("--b")
    if opts.a.api_name is not None or opts.b.api_name is not None or opts.judge == "llm":
        api_key_from_env(opts.endpoint.api_key_env)
    action = rundir.check(opts.out, kind="run", resume=opts.resume, overwrite=opts.overwrite)
    return Checked(kept, judge, action, len(prompts) - len(kept))


def run_judge(opts: JudgeOptions) -> dict:
    """Answers, judgements and the summary of A against B (see the module doc); returns the summary."""
    from lingotune import rundir

    t0 = time.perf_counter()
    checked = check_inputs(opts)
    prompts, judge = checked.prompts, checked.judge
    rundir.prepare(opts.out, checked.action, "run")
    cache_dir = opts.cache_dir or opts.out / "cache"
    try:
        answers = JsonlCache(cache_dir / "answers.jsonl")
        ans = [answers_for(spec, prompts, answers, opts.endpoint, opts.max_new_tokens, opts.batch_size, opts.device)
               for spec in (opts.a, opts.b)]
        a_first, b_first = judge_both_orders(judge, prompts, ans[0], ans[1], JsonlCache(cache_dir / "judgements.jsonl"),
                                             opts.batch_size)
    except ApiError as e:
        raise ApiError(f"{e}; the finished answers and judgements are kept in {cache_dir}: run the same command "
                       f"again to continue") from None
    records = audit_records(prompts, ans[0], ans[1], a_first, b_first, get_language(opts.lang).script)
    summary = build_summary(opts, judge, records, ans, checked.without_reference)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    write_results(opts.out, summary, records)
    return summary


def grid_prompts(cfg, lang: str, data_root: str | None) -> list[Prompt]:
    """The prompts a compare grid's judge (`recipe.CompareJudge`) judges; the reference judge keeps those with a
    reference answer. A ValueError (or a file's one-line error) when there are none."""
    prompts = load_prompts(cfg.prompts, lang, data_root, cfg.limit)
    if cfg.judge == "reference":
        prompts = [p for p in prompts if p.reference is not None]
        if not prompts:
            raise ValueError(f"the prompts of {cfg.prompts} have no reference answers (field 'reference'), which the "
                             "reference judge needs")
    return prompts


def judge_grid(judge, prompts: list[Prompt], answers: dict[str, dict], against: str, script: str, cache: JsonlCache,
               batch_size: int = 8) -> tuple[dict, list[dict]]:
    """Win rates inside a compare grid: every variant's answers against `against`'s, seed by seed.

    `answers`: variant -> {seed: answers to `prompts`}; the untouched model has one set (seed None), judged
    against every seed of `against`. Returns (summary, audit records): per variant, wins/ties/losses over all
    its (prompt, seed) pairs with Wilson intervals (the pairs of one prompt under several seeds are not
    independent, so the interval is somewhat narrow when there are several seeds), and every variant's
    target-language share over all of its answers."""
    base = answers[against]
    out: dict = {"against": against, "judge": judge.identity, "prompts": len(prompts), "variants": {}, "share": {}}
    records: list[dict] = []
    for variant, by_seed in answers.items():
        out["share"][variant] = target_share([a for ans in by_seed.values() for a in ans], script)
        if variant == against:
            continue
        mine = []
        for seed in sorted(base):
            own = by_seed.get(seed, by_seed.get(None))
            if own is None:
                continue
            a_first, b_first = judge_both_orders(judge, prompts, own, base[seed], cache, batch_size)
            recs = audit_records(prompts, own, base[seed], a_first, b_first, script)
            mine += [{"variant": variant, "against": against, "seed": seed, **r} for r in recs]
        res = summarize([r["final"] for r in mine])
        res.update(inconsistent=sum(not r["consistent"] for r in mine), seeds=sorted({r["seed"] for r in mine}))
        out["variants"][variant] = res
        records += mine
    return out, records


def audit_records(prompts: list[Prompt], answers_a: list[str], answers_b: list[str], a_first: list[dict],
                  b_first: list[dict], script: str) -> list[dict]:
    """One audit record per prompt: both answers, both verdicts (with the judge's text), the final outcome."""
    records = []
    for p, a, b, v1, v2 in zip(prompts, answers_a, answers_b, a_first, b_first):
        one, two = for_a(v1["verdict"], v2["verdict"])
        final = outcome(v1["verdict"], v2["verdict"])
        records.append({"id": p.id, "where": p.where, "prompt": p.prompt, "reference": p.reference,
                        "answer_a": a, "answer_b": b, "a_first": v1, "b_first": v2, "final": final,
                        "consistent": one == two, "in_script_a": in_script(a, script), "in_script_b": in_script(b, script)})
    return records


def build_summary(opts: JudgeOptions, judge, records: list[dict], ans: list[list[str]], without_reference: int) -> dict:
    script = get_language(opts.lang).script
    res = summarize([r["final"] for r in records])
    res.update({
        "inconsistent": sum(not r["consistent"] for r in records),
        "unparsed": sum((r["a_first"]["verdict"] is None) + (r["b_first"]["verdict"] is None) for r in records),
        "lang": opts.lang, "script": script, "prompts": opts.prompts, "without_reference": without_reference,
        "a": {"label": opts.a.label, "identity": opts.a.identity(opts.endpoint)},
        "b": {"label": opts.b.label, "identity": opts.b.identity(opts.endpoint)},
        "judge": judge.identity,
        "generation": {"max_new_tokens": opts.max_new_tokens, "greedy": True},
        "target_language_share": {"a": target_share(ans[0], script), "b": target_share(ans[1], script)},
    })
    return res


def write_results(out: Path, summary: dict, records: list[dict], summary_name: str = "summary.json") -> None:
    """judgements.jsonl, then the summary (`summary_name`), each written whole (temporary file, then rename)."""
    import json

    from lingotune.files import atomic_write_text, save_json

    atomic_write_text(out / "judgements.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    save_json(out / summary_name, summary)
