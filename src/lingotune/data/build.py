"""`build_datasets`: the recipe's data section -> the stage-1 (DParT pairs), stage-2, `text` and `prefs` sets.

Reads every source (`load_source`; preference pairs: `formats.read_prefs`), validates and drops what is
broken, duplicated or leaked into the evaluation, builds the stage-1 pairs and stage-2 instructions, and
reports what happened to each source. Deterministic for a given seed.

Preference pairs (`validate_prefs`): an empty chosen or rejected answer is dropped (`empty_answer`), a
chosen answer identical to the rejected one is skipped (counted in the report as `identical`), the chosen
answer must be in the target script (`wrong_script`; the rejected one may be in any language, e.g. the
English answer of a cross-lingual pair), a repeated (prompt, chosen, rejected) is a duplicate, and the
leakage check covers the prompt, the system prompt and both answers.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lingotune.data import formats, sources
from lingotune.data.config import DEFAULT_PATH, SINGLE, TRANSLATION_FORMATS, DataConfig, SourceSpec
from lingotune.data.pairs import build_stage1, build_stage2
from lingotune.data.records import DataError, Example, PrefRecord, Record
from lingotune.data.validate import (SCRIPT_SAMPLE, LeakageIndex, ValidationReport, drop_leaked_pairs,
                                     drop_leaked_records, validate_pairs, validate_records, wrong_script)
from lingotune.paths import data_root


@dataclass
class BuiltData:
    stage1: list[Example]
    stage2: list[Example]
    report: dict = field(default_factory=dict)
    text: list[str] = field(default_factory=list)  # plain target-language text (sources used as `text`)
    prefs: list[PrefRecord] = field(default_factory=list)  # preference pairs (sources of format prefs)

    def texts(self) -> list[str]:
        """Every text training may see: each message of stage1 and stage2, the plain text, each pair's sides."""
        out = [m["content"] for ex in self.stage1 + self.stage2 for m in ex.messages]
        return out + self.text + [t for p in self.prefs for t in (p.prompt, p.chosen, p.rejected, p.system) if t]

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        from lingotune.files import atomic_write_text, save_json

        out = Path(out_dir)
        paths = {"stage1": formats.write_examples(self.stage1, out / "stage1.jsonl"),
                 "stage2": formats.write_examples(self.stage2, out / "stage2.jsonl"),
                 "report": save_json(out / "data_report.json", self.report)}
        if self.text:
            paths["text"] = atomic_write_text(out / "text.jsonl", "".join(
                json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in self.text))
        if self.prefs:
            paths["prefs"] = atomic_write_text(out / "prefs.jsonl", "".join(
                json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in self.prefs))
        return paths


def _resolve(root: Path | None, rel: str) -> Path:
    p = Path(rel).expanduser()
    if p.is_absolute() or root is None or rel.startswith("./"):  # './': the current directory, not the data root
        return p
    return root / p


def load_source(spec: SourceSpec, lang: str, root: Path | None, seed: int = 0) -> tuple[list[sources.Pair], list[Record]]:
    """(pairs, stage-2 records) of one source, before validation."""
    fmt, lim = spec.format, spec.limit
    if fmt == "text":
        path = _resolve(root, spec.path)
        return [], [Record("", t, None, None, lang, f"{path}:{i}") for i, t in enumerate(formats.read_texts(path, spec.text_field)[:lim], 1)]
    if fmt == "starter":
        from lingotune.data import starter

        data = starter.generate(lang, seed=seed, n_train=lim)
        return data.train_pairs, data.stage2
    if fmt in SINGLE:
        rlang = spec.lang or lang
        if fmt == "hub":
            recs = formats.read_hub(spec.hub_spec(), "auto", rlang, limit=lim, id_field=spec.id_field)
        elif fmt == "hf_disk":
            recs = formats.read_hf_disk(_resolve(root, spec.path), "auto", rlang, spec.split, lim, spec.id_field)
        else:
            recs = formats.read_file(_resolve(root, spec.path), fmt, rlang, lim, spec.id_field, spec.all_turns)
        return [], recs
    if fmt == "paired":
        pairs = sources.read_paired(spec.en_hub or _resolve(root, spec.en), spec.target_hub or _resolve(root, spec.target),
                                    lang, spec.align, spec.id_field, "auto", spec.mode, lim)
    elif fmt == "parallel_text":
        pairs = sources.read_parallel_text(_resolve(root, spec.en), _resolve(root, spec.target), lang, lim)
    else:
        rel = spec.path or DEFAULT_PATH[fmt].format(lang=lang)
        if root is None and not Path(rel).is_absolute():
            raise DataError(f"format {fmt}: no data root found for {rel!r}; set data.root or $LINGOTUNE_DATA")
        where = _resolve(root, rel)
        if fmt in ("gsm8k", "mt_bench", "mintaka"):
            pairs = getattr(sources, f"read_{fmt}")(where, lang, mode=spec.mode, limit=lim)
        else:
            pairs = getattr(sources, f"read_{fmt}")(where, lang, limit=lim)
        if spec.mode == "translate" and fmt in ("xquad", "msvamp"):
            pairs = sources.as_translation(pairs, lang)
    return pairs, [t for _, t in pairs]


def _drop_leaks(items: list, leak: LeakageIndex | None, drop, rep: ValidationReport) -> list:
    if leak:
        items, n = drop(items, leak)
        rep.leakage_dropped += n
        rep.kept -= n
    return items


def _check_source(i: int, spec: SourceSpec, pairs: list, recs: list[Record], lang: str, ck, leak,
                  seen: tuple[set, set, set]) -> tuple[list, list[Record], list[str], dict, ValidationReport]:
    """Validate one source's pairs, stage-2 records or texts, drop leaks; (pairs, records, texts, report
    entry, counts)."""
    translation = spec.format in TRANSLATION_FORMATS or spec.mode == "translate"
    opts = dict(script_check=ck.script_check, threshold=ck.script_threshold, min_letters=ck.min_letters,
                strict=ck.strict, drop_duplicates=ck.drop_duplicates)
    entry = {"index": i, "format": spec.format, "path": spec.where(), "use": spec.uses,
             "pairs_read": len(pairs), "stage2_read": len(recs)}
    rep = ValidationReport()
    loaded = recs
    if spec.uses in ("pairs", "both") and pairs:
        pairs, r = validate_pairs(pairs, lang, check_target_prompt=not translation, seen=seen[0], **opts)
        rep.add(r)
        pairs = _drop_leaks(pairs, leak, drop_leaked_pairs, rep)
        entry["pairs"] = len(pairs)
    else:
        pairs = []
    if spec.uses in ("stage2", "both") and recs:
        if spec.format != "starter" and spec.format not in SINGLE and spec.uses == "both":
            recs = [t for _, t in pairs]  # the target sides of the pairs, already validated with them
        else:
            recs, r = validate_records(recs, spec.lang or lang, check_prompt=not translation, seen=seen[1], **opts)
            rep.add(r)
            recs = _drop_leaks(recs, leak, drop_leaked_records, rep)
        entry["stage2"] = len(recs)
    else:
        recs = []
    texts = _texts(spec, loaded, lang, ck, leak, seen[2], rep, opts) if spec.uses == "text" else []
    if texts:
        entry["text"] = len(texts)
    entry["validation"] = rep.to_dict()
    return pairs, recs, texts, entry, rep


def _texts(spec: SourceSpec, recs: list[Record], lang: str, ck, leak, seen: set, rep: ValidationReport,
           opts: dict) -> list[str]:
    """A source's target-language records as plain texts (prompt and answer), validated like records."""
    recs, r = validate_records(recs, spec.lang or lang, check_prompt=spec.format not in TRANSLATION_FORMATS,
                               seen=seen, prompt_required=spec.format != "text", **opts)
    rep.add(r)
    recs = _drop_leaks(recs, leak, drop_leaked_records, rep)
    return [f"{r.prompt.strip()}\n\n{r.response.strip()}" if r.prompt.strip() else r.response.strip() for r in recs]


def validate_prefs(prefs: list[PrefRecord], lang: str, ck, leak: LeakageIndex | None,
                   seen: set) -> tuple[list[PrefRecord], ValidationReport, int]:
    """(kept pairs, counts of those dropped, number skipped as identical); see the module doc. `ck`: the
    CheckConfig (strict: the first problem raises DataError naming file:line and field; an identical pair
    is skipped and counted, never an error)."""
    rep, identical, kept = ValidationReport(records_in=len(prefs)), 0, []

    def problem(p: PrefRecord, what: str, counter: str | None) -> None:
        if ck.strict and counter:
            raise DataError(f"{p.source}: {what}")
        if counter:
            setattr(rep, counter, getattr(rep, counter) + 1)
        if len(rep.examples) < 20:
            rep.examples.append(f"{p.source}: {what}")

    for p in prefs:
        key = (p.prompt.strip(), p.chosen.strip(), p.rejected.strip())
        empty = next((f for f in ("chosen", "rejected") if not getattr(p, f).strip()), None)
        if empty:
            problem(p, f"field '{empty}' is empty", "empty_answer")
        elif key[1] == key[2]:
            identical += 1
            problem(p, "field 'chosen' is identical to 'rejected' (skipped)", None)
        elif ck.script_check and wrong_script(p.chosen, p.lang or lang, ck.script_threshold, ck.min_letters):
            problem(p, f"field 'chosen' is not in the script of {p.lang or lang} (first {SCRIPT_SAMPLE} characters)",
                    "wrong_script")
        elif key in seen and ck.drop_duplicates:
            problem(p, "duplicate of an earlier pair", "duplicates")
        elif leak and any(leak.leaks(t) for t in (p.prompt, p.chosen, p.rejected, p.system or "")):
            rep.leakage_dropped += 1
        else:
            rep.duplicates += key in seen
            seen.add(key)
            kept.append(p)
    rep.kept = len(kept)
    return kept, rep, identical


def _prefs_source(i: int, spec: SourceSpec, lang: str, root: Path | None, ck, leak,
                  seen: set) -> tuple[list[PrefRecord], dict, ValidationReport]:
    """One source of format prefs, read and validated: (pairs, report entry, counts)."""
    try:
        prefs = formats.read_prefs(_resolve(root, spec.path), spec.lang or lang, spec.limit, spec.id_field)
    except DataError as e:
        raise DataError(f"data.sources[{i}] (prefs): {e}") from None
    kept, rep, identical = validate_prefs(prefs, lang, ck, leak, seen)
    entry = {"index": i, "format": spec.format, "path": spec.path, "use": "prefs", "pairs_read": 0,
             "stage2_read": 0, "prefs_read": len(prefs), "prefs": len(kept), "identical": identical,
             "validation": rep.to_dict()}
    return kept, entry, rep


def build_datasets(cfg: DataConfig, lang: str, seed: int, eval_texts: list[str] | None = None) -> BuiltData:
    """Read every source, validate, drop leaks, build stage-1 pairs and stage-2 instructions. Deterministic."""
    root = data_root(cfg.root)
    ck = cfg.checks
    leak = LeakageIndex(eval_texts, n=ck.leakage_ngram) if (ck.leakage_check and eval_texts) else None
    seen: tuple[set, set, set] = (set(), set(), set())
    all_pairs: list[sources.Pair] = []
    all_stage2: list[Record] = []
    all_text: list[str] = []
    all_prefs, seen_prefs = [], set()
    total = ValidationReport()
    per_source = []
    for i, spec in enumerate(cfg.sources):
        if spec.format == "prefs":
            prefs, entry, rep = _prefs_source(i, spec, lang, root, ck, leak, seen_prefs)
            all_prefs += prefs
            per_source.append(entry)
            total.add(rep)
            continue
        try:
            pairs, recs = load_source(spec, lang, root, seed)
        except DataError as e:
            raise DataError(f"data.sources[{i}] ({spec.format}): {e}") from None
        pairs, recs, texts, entry, rep = _check_source(i, spec, pairs, recs, lang, ck, leak, seen)
        all_pairs += pairs
        all_stage2 += recs
        all_text += texts
        per_source.append(entry)
        total.add(rep)
    p = cfg.pairs
    stage1 = build_stage1(all_pairs, lang, seed, p.instruction, p.both_share, p.single_kind)[:cfg.max_stage1]
    stage2 = build_stage2(all_stage2, lang, seed)[:cfg.max_stage2]
    report = {
        "lang": lang, "seed": seed, "root": str(root) if root else None,
        "stage1": len(stage1), "stage2": len(stage2), "text": len(all_text), "prefs": len(all_prefs),
        "prefs_identical": sum(e.get("identical", 0) for e in per_source),
        "stage1_kinds": dict(Counter(e.meta["kind"] for e in stage1)),
        "validation": total.to_dict(), "leakage_dropped": total.leakage_dropped,
        "duplicates": total.duplicates, "sources": per_source,
    }
    return BuiltData(stage1, stage2, report, all_text, all_prefs)
