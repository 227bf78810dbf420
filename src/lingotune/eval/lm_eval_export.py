"""`lingotune eval --export-lm-eval DIR`: the log-likelihood tasks as lm-evaluation-harness tasks.

For each selected yes/no task (with `--mode loglik` or `both`) and multiple-choice task, at each of its k-shot
settings, DIR gets `lingotune_<task>[_<k>shot].yaml` (an lm-eval task of output type multiple_choice) and a
`.jsonl` beside it with exactly the examples lingotune scores (`limit`/`limits`/`sample`, the demonstrations drawn
for each example) as lingotune builds them: the context (a yes/no task's chat prompt rendered through the
model's chat template, a multiple-choice task's plain text), the continuations scored and the gold answer. Also
`lingotune.yaml` (the group of all of them), `lingotune_lm_eval.py` (the data loader and the metrics lm-eval
imports from the YAMLs) and README.md: how to run `lm_eval` on them and which of lingotune's metrics each
lm-eval metric equals.

How the two score the same tokens:
- The contexts are already templated text, so `lm_eval` runs WITHOUT --apply_chat_template (with it, lm-eval
  would wrap the prompt in a second chat turn). `target_delimiter` is "" and each continuation is exported as
  lingotune writes it (KoBEST's options carry their own leading space, " {option1}"; a yes/no word has none).
- lingotune scores `encode(context)` then `encode(continuation)`, each tokenized on its own (a multiple-choice
  context after BOS where the tokenizer adds one). lm-eval 0.4 (`TemplateLM._encode_pair`) moves the context's
  trailing whitespace to the front of the continuation, encodes context + continuation at once and splits it
  after the context's tokens (adding BOS unless the text starts with it). Where both give the same whole token
  sequence (byte-level BPE and a context that ends in a word or in a newline: every shipped task), lm-eval's
  log-likelihood of a choice is lingotune's plus log P(the context's trailing whitespace tokens | the context
  before them): the same for every choice of an example, so the choice picked, and the accuracy, are the same.
  The chat prompt ends in "assistant\\n", so for yes/no tasks that term is log P("\\n"); a multiple-choice
  context ends in a word (KoBEST), so there it is 0. `lm_eval_pair` is lm-eval's encoding; the export counts the
  examples where the two sequences differ (README.md and the command's output give the number per task).
- Metrics: lingotune's yes/no `accuracy_ll` compares log-sum-exp over the spellings of the yes word with that of
  the no word (ties: no); lm-eval gets every spelling as a choice and `lingotune_lm_eval.yesno_results` does the
  same sums, so `acc` = accuracy_ll / 100 and `f1` = f1_ll / 100 (macro over no/yes). Multiple choice: lm-eval's
  own `acc` (sum of log-probs) = accuracy / 100; its `acc_norm` (divided by the option's length in characters,
  as lingotune's `pred_norm`) = accuracy_norm / 100, the options carrying lingotune's leading space;
  `f1` (macro over all options, an option nobody predicts or needs counting 0, as lingotune's) = f1 / 100.
  lm-eval's `acc_bytes` (per UTF-8 byte) has no lingotune twin.

Perplexity tasks are not exported: lm-eval's `loglikelihood_rolling` scores a text's first token after a prefix
token (BOS, else EOS) and its `bits_per_byte` divides by UTF-8 bytes; lingotune's bits per character scores the
first token only where the tokenizer adds BOS (else it is context) and divides by characters (two bytes each in
Cyrillic), so neither number would mean lingotune's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lingotune import inference
from lingotune.errors import UserError
from lingotune.eval.config import EvalConfig
from lingotune.eval.multiple_choice import context_ids, mc_example
from lingotune.eval.runner import task_examples, task_shots
from lingotune.eval.tasks import TaskSpec, load_task, suffix
from lingotune.eval.yesno import answer_spellings, prompt_text
from lingotune.files import atomic_dir, atomic_write_text
from lingotune.paths import data_root
from lingotune.rundir import check_output, prepare

GROUP = "lingotune"
HELPER = "lingotune_lm_eval"

HELPER_CODE = '''"""Written by lingotune eval --export-lm-eval: what the task YAMLs beside it import (`!function`).

load_docs: a task's JSONL file beside this one, as its "test" split. yesno_results: a yes/no example's
answer as lingotune's log-likelihood mode picks it (log-sum-exp over each answer's spellings; ties: no).
macro_f1_<n>: macro F1 over the answer classes, each counted even where nobody predicts or needs it.
"""

import json
import math
from pathlib import Path


def load_docs(file, **_):
    import datasets

    path = Path(__file__).parent / file
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def _logsumexp(xs):
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def yesno_results(doc, results):
    lls = [r[0] for r in results]
    score = {a: _logsumexp([x for x, b in zip(lls, doc["answers"]) if b == a]) for a in ("yes", "no")}
    pred = "yes" if score["yes"] > score["no"] else "no"
    return {"acc": float(pred == doc["label"]), "f1": (doc["label"], pred)}


def macro_f1(items, classes):
    f1s = []
    for c in classes:
        tp = sum(p == c and g == c for g, p in items)
        wrong = sum((p == c) != (g == c) for g, p in items)
        f1s.append(2 * tp / (2 * tp + wrong) if tp else 0.0)
    return sum(f1s) / len(f1s)


def macro_f1_yesno(items):
    return macro_f1(items, ["no", "yes"])
'''


class LmEvalExportError(UserError, ValueError):
    """The lm-eval export cannot be written as asked (one line)."""


def lm_eval_encode(tok, text: str) -> list[int]:
    """lm-eval's HF `tok_encode`: special tokens added, unless the text already starts with its prefix token (BOS,
    else EOS)."""
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    starts = prefix is not None and text.startswith(tok.decode([prefix]))
    return tok(text, add_special_tokens=not starts)["input_ids"]


def lm_eval_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-eval 0.4 scores a request: the context's trailing whitespace moved to
    the continuation, then the whole encoded once and split after the context's own tokens."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    ctx = lm_eval_encode(tok, context)
    return ctx, lm_eval_encode(tok, context + continuation)[len(ctx):]


def same_tokens(tok, context: str, ctx_ids: list[int], conts: list[str], cont_ids: list[list[int]]) -> bool:
    """Whether lm-eval scores each continuation on lingotune's whole token sequence, its context a prefix of
    lingotune's (then the two log-likelihoods differ by the same term for every continuation)."""
    for c, ids in zip(conts, cont_ids):
        lm_ctx, lm_cont = lm_eval_pair(tok, context, c)
        if lm_ctx + lm_cont != ctx_ids + ids or len(lm_ctx) > len(ctx_ids):
            return False
    return True


def task_docs(tok, spec: TaskSpec, rows: list[dict], lang: str, seed: int, train: list[dict], k: int) -> tuple[list[dict], int]:
    """(lm-eval documents, how many tokenize differently in lm-eval) of one task at k shots."""
    docs, differ = [], 0
    if spec.kind == "yesno":
        variants = answer_spellings(lang)
        words = [w for _, w in variants]
        word_ids = [inference.encode(tok, w) for w in words]
        for row in rows:
            context = prompt_text(tok, spec, row, lang, seed, train, k)
            differ += not same_tokens(tok, context, inference.encode(tok, context), words, word_ids)
            docs.append({"id": str(row["id"]), "context": context, "choices": words, "answers": [a for a, _ in variants],
                         "label": row["label"], "gold": [a for a, _ in variants].index(row["label"])})
    else:
        for row in rows:
            context, choices = mc_example(spec, row, lang, seed, train, k)
            differ += not same_tokens(tok, context, context_ids(tok, context), choices,
                                      [inference.encode(tok, c) for c in choices])
            docs.append({"id": str(row["id"]), "context": context, "choices": choices, "gold": int(row["label"])})
    return docs, differ


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a YAML scalar


def task_yaml(name: str, spec: TaskSpec, k: int, n_choices: int) -> str:
    if spec.kind == "yesno":
        metrics = ('process_results: !function {h}.yesno_results\nmetric_list:\n'
                   '  - {{metric: acc, aggregation: mean, higher_is_better: true}}\n'
                   '  - {{metric: f1, aggregation: !function {h}.macro_f1_yesno, higher_is_better: true}}\n')
    else:
        metrics = ('metric_list:\n  - {{metric: acc, aggregation: mean, higher_is_better: true}}\n'
                   '  - {{metric: acc_norm, aggregation: mean, higher_is_better: true}}\n'
                   '  - {{metric: f1, aggregation: !function {h}.macro_f1_{n}, higher_is_better: true}}\n')
    return (f"# Written by lingotune eval --export-lm-eval: {spec.name}, {k}-shot ({spec.kind}); see README.md.\n"
            f"task: {name}\ncustom_dataset: !function {HELPER}.load_docs\n"
            f"dataset_kwargs: {{file: {name}.jsonl}}\ntest_split: test\noutput_type: multiple_choice\n"
            "doc_to_text: context\ndoc_to_choice: choices\ndoc_to_target: gold\n"
            'target_delimiter: ""\nnum_fewshot: 0\n'
            + metrics.format(h=HELPER, n=n_choices)
            + f"metadata: {{version: 1.0, lingotune_task: {_q(spec.name)}, shots: {k}}}\n")


def _mapping(kind: str, sfx: str) -> str:
    if kind == "yesno":
        return f"acc = accuracy_ll{sfx} / 100, f1 = f1_ll{sfx} / 100"
    return f"acc = accuracy{sfx} / 100, acc_norm = accuracy_norm{sfx} / 100, f1 = f1{sfx} / 100"


def readme(written: list[dict], left_out: list[str], model: str, out: Path) -> str:
    names = ",".join(w["name"] for w in written)
    lines = [
        "# lm-evaluation-harness tasks written by `lingotune eval --export-lm-eval`", "",
        "Each task holds exactly the examples lingotune scores, with lingotune's contexts (chat prompts already "
        "rendered through the model's chat template) and continuations. Run it without `--apply_chat_template` "
        "and in float32 (lingotune evaluates in float32):", "",
        "```",
        f"lm_eval --model hf --model_args pretrained={model},dtype=float32 --include_path {out} "
        f"--tasks {GROUP} --device cpu --log_samples --output_path lm_eval_out",
        "```", "",
        f"(`--tasks {GROUP}` runs the group; or name tasks: `--tasks {names}`.) Use the model these tasks were "
        "exported with (its tokenizer rendered the prompts); for a lingotune run, `lingotune export RUN --out EXPORT` "
        "and `pretrained=EXPORT`.", "",
        "| lm-eval task | lingotune task | k | examples | tokenized differently | lm-eval metric = lingotune metric |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {w['name']} | {w['task']} | {w['k']} | {w['n']} | {w['differ']} | {_mapping(w['kind'], suffix(w['k']))} |"
              for w in written]
    lines += ["", "lm-eval reports fractions, lingotune percent. A yes/no choice's log-likelihood in lm-eval is "
              "lingotune's plus log P(\"\\n\" | the prompt before it): lm-eval moves a context's trailing whitespace into "
              "the continuation, the same for every choice, so accuracy is unchanged. \"tokenized differently\" counts "
              "the examples whose tokens lm-eval would not score as lingotune does (their scores may differ)."]
    if left_out:
        lines += ["", "Left out:", ""] + [f"- {r}" for r in left_out]
    return "\n".join(lines) + "\n"


def export_lm_eval(tok, cfg: EvalConfig, lang: str, out: Path, model: str, overwrite: bool = False) -> dict:
    """Write the lm-eval tasks of `cfg`'s log-likelihood tasks into `out` (atomically); a summary
    {"out", "tasks": [{"name", "task", "k", "n", "differ", "kind", "options"}], "left_out": [reasons], "seconds"}.
    `model`: what README.md's command loads (`pretrained=`)."""
    t0 = time.perf_counter()
    out = Path(out)
    check_output(out, "lm-eval", overwrite)
    root = data_root(cfg.data_root)
    written, left_out, files = [], [], {}
    for spec in (load_task(n) for n in cfg.task_names(lang)):
        if spec.kind not in ("yesno", "multiple_choice"):
            why = "lm-eval's bits per byte is not lingotune's bits per char" if spec.kind == "perplexity" else \
                "generated, not scored by log-likelihood"
            left_out.append(f"{spec.name}: a {spec.kind} task ({why})")
            continue
        if spec.kind == "yesno" and cfg.mode == "generate":
            left_out.append(f"{spec.name}: yes/no in mode generate (pass --mode loglik to export it)")
            continue
        task_lang = spec.lang or lang
        try:
            rows = task_examples(spec, cfg, root, task_lang)
            shots, train = task_shots(spec, cfg, root, task_lang)
        except (FileNotFoundError, ImportError) as e:
            left_out.append(f"{spec.name}: {e}")
            continue
        for k in shots:
            name = f"lingotune_{spec.name}{suffix(k)}"
            docs, differ = task_docs(tok, spec, rows, task_lang, cfg.seed, train, k)
            files[f"{name}.jsonl"] = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
            files[f"{name}.yaml"] = task_yaml(name, spec, k, len(spec.choices))
            written.append({"name": name, "task": spec.name, "k": k, "n": len(docs), "differ": differ, "kind": spec.kind,
                            "options": len(spec.choices)})
    if not written:
        raise LmEvalExportError(f"--export-lm-eval: no log-likelihood task to export ({'; '.join(left_out) or 'no tasks'})")
    counts = sorted({w["options"] for w in written if w["kind"] == "multiple_choice"})
    helper = HELPER_CODE + "".join(f"\n\ndef macro_f1_{n}(items):\n    return macro_f1(items, list(range({n})))\n"
                                   for n in counts)
    group = f"group: {GROUP}\ntask:\n" + "".join(f"  - {w['name']}\n" for w in written)
    with atomic_dir(out) as tmp:
        prepare(tmp, "fresh", "lm-eval")
        for fname, text in files.items():
            atomic_write_text(tmp / fname, text)
        atomic_write_text(tmp / f"{HELPER}.py", helper)
        atomic_write_text(tmp / f"{GROUP}.yaml", group)
        atomic_write_text(tmp / "README.md", readme(written, left_out, model, out.resolve()))
    return {"out": str(out), "tasks": written, "left_out": left_out, "seconds": round(time.perf_counter() - t0, 2)}
