"""LEP diagnostic (docs/lep.md): is the mean of the pieces' rows a poor *output* initialisation? Bits per
character on FLORES (target language and English, 100 lines each) of the bundled model after the recipe's `extend`,
with no training, and every new token's head row set three ways: the mean of its pieces' head rows (the paper),
its first piece's row, its last piece's row. The model is untied first (the recipes' default, `model.tie: untie`).

    python benchmarks/lep_head_init.py ru      # ar, ko: src/lingotune/recipes/lep_<lang>.yaml; needs ../shared/data
"""
import copy
import json
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from lingotune.recipe import load_recipe
from lingotune import run, vocab
from lingotune.eval.runner import evaluate
from lingotune.models import untie

lang = sys.argv[1] if len(sys.argv) > 1 else "ru"
r = load_recipe(f"src/lingotune/recipes/lep_{lang}.yaml")
con = Console()
model, tok, _ = run.load(r, con)
built = run.build_data(r, con)
t = time.perf_counter()
new_tok, rep = run.adapt_vocabulary(r, tok, built)
print("vocab", round(time.perf_counter() - t, 1), "s", len(new_tok))
pieces = vocab.piece_map(new_tok, tok)
out = {}
cfg = r.eval.model_copy(update={"limits": {f"flores_{lang}_bpc": 100, "flores_en_bpc": 100}})
base_scores = evaluate(model, tok, cfg, tasks=[f"flores_{lang}_bpc", "flores_en_bpc"], lang=lang)
out["untouched"] = {k: v["bits_per_char"] for k, v in base_scores.items()}
m = copy.deepcopy(model)
untie(m)  # the head gets its own matrix first, so that setting a head row leaves the input row alone
info = vocab.init_new_rows(m, tok, new_tok)
assert not info["tied"]
print(info)
new = m.lingotune_new_rows
for name in ("mean", "first", "last"):
    if name != "mean":
        head = m.get_output_embeddings().weight
        old_head = model.get_output_embeddings().weight
        with torch.no_grad():
            for i in new:
                head[i] = old_head[pieces[i][0 if name == "first" else -1]]
    s = evaluate(m, new_tok, cfg, tasks=[f"flores_{lang}_bpc", "flores_en_bpc"], lang=lang)
    out[name] = {k: v["bits_per_char"] for k, v in s.items()}
    print(name, out[name], flush=True)
print(json.dumps(out, indent=1))
Path("runs").mkdir(exist_ok=True)
Path(f"runs/lep_head_init_{lang}.json").write_text(json.dumps(out, indent=1))
