#!/usr/bin/env bash
# The training comparison (HF Trainer, TRL SFTTrainer, lingotune; stage 1 and stage 2) on one GPU,
# on random-weight models of two published shapes, with synthetic data: nothing to download, no
# file from ../shared. Writes JSON and logs to OUTDIR; about 5 minutes on one H100 (budget: < 6).
#
#   PYTHONPATH=/tmp/site:src bash benchmarks/gpu.sh OUTDIR          # on the GPU machine
#   PYTHONPATH=src bash benchmarks/gpu.sh /tmp/out --tiny            # CPU check: tiny shapes, same code paths
#
# Needs `python3` with torch, transformers, peft, accelerate importable, plus what
# benchmarks/gpu_wheels.sh downloads (trl, datasets, pydantic, rich, ... unpacked into the directory
# put first on PYTHONPATH, e.g. /tmp/site), and lingotune importable (PYTHONPATH=src, from the
# repository root).
#
# Models (bench_train.py RANDOM_MODELS, fp32 weights, bf16 autocast in all three setups):
#   random:llama-1b     Llama-3.2-1B shape: hidden 2048, 16 layers, 32 heads, 8 KV heads,
#                       intermediate 8192, vocabulary 128256, tied embeddings
#   random:gemma3-270m  Gemma-3-270M shape (the bundled GGUF's config): hidden 640, 18 layers
#                       (5 sliding-window : 1 global), 4 heads, 1 KV head, head_dim 256, vocabulary 262144
# Data: synthetic examples of seq_len/8 .. seq_len tokens (seq_len 2048), 30-80 % prompt, batch 8.
# Attention: flash_attention_2 when `flash_attn` imports and passes a probe, else sdpa (ATTN=... overrides).
# Environment knobs: STEPS (10), REPEATS (1), SEQ_LEN (2048), BATCH (8), MODELS ("llama-1b gemma3-270m"),
# LIMIT (seconds per model, 150), TRL_PACKING (padding_free; bfd, none).
set -u
OUT=${1:?usage: bash benchmarks/gpu.sh OUTDIR [--tiny]}
TINY=${2:-}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1

if [ "$TINY" = "--tiny" ]; then
  EXTRA="--tiny"; SEQ_LEN=${SEQ_LEN:-64}; STEPS=${STEPS:-4}; LOSS_STEPS=3; WARMUP=1; DEVICE=cpu; LIMIT=${LIMIT:-900}
else
  EXTRA=""; SEQ_LEN=${SEQ_LEN:-2048}; STEPS=${STEPS:-10}; LOSS_STEPS=0; WARMUP=3; DEVICE=cuda; LIMIT=${LIMIT:-150}
fi
REPEATS=${REPEATS:-1}; BATCH=${BATCH:-8}
MODELS=${MODELS:-"llama-1b gemma3-270m"}

python3 - "$OUT/environment.json" "$DEVICE" <<'EOF'
import importlib, json, sys
import torch
env = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
       "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
for name in ("transformers", "peft", "accelerate", "trl", "datasets", "pydantic", "flash_attn", "lingotune"):
    try:
        env[name] = getattr(importlib.import_module(name), "__version__", "present")
    except Exception as e:  # say what is missing, then let the runs fail loudly
        env[name] = f"MISSING ({type(e).__name__}: {e})"
print("card:", env["gpu"] or "none (CPU)")
for k, v in env.items():
    print(f"  {k}: {v}")
json.dump(env, open(sys.argv[1], "w"), indent=1)
if sys.argv[2] == "cuda" and not torch.cuda.is_available():
    sys.exit("no CUDA device: run with --tiny for the CPU check")
EOF
[ $? -eq 0 ] || exit 1

# flash attention only if it runs here (lingotune's packing probe runs the model outside autocast, in fp32)
if [ -z "${ATTN:-}" ]; then
  ATTN=sdpa
  if [ "$DEVICE" = cuda ] && python3 - <<'EOF'
import sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
from lingotune.train import packing_respected
try:
    import flash_attn  # noqa: F401
    cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, attn_implementation="flash_attention_2")
    model = LlamaForCausalLM(cfg).cuda()
    model.config.use_cache = False
    assert packing_respected(model)
except Exception as e:
    print(f"flash attention not used: {type(e).__name__}: {e}")
    sys.exit(1)
EOF
  then ATTN=flash_attention_2; fi
fi
echo "attention: $ATTN"

python3 benchmarks/bench_matmul.py --device "$DEVICE" --json "$OUT/matmul.json" 2>&1 | tee "$OUT/matmul.log"

for M in $MODELS; do
  echo "== random:$M (seq_len $SEQ_LEN, batch $BATCH, $STEPS steps, $REPEATS repeat(s))"
  timeout "$LIMIT" python3 benchmarks/bench_train.py --model "random:$M" $EXTRA --data synthetic \
    --seq-len "$SEQ_LEN" --batch-size "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --repeats "$REPEATS" \
    --loss-steps "$LOSS_STEPS" --attn "$ATTN" --device "$DEVICE" --peak-json "$OUT/matmul.json" \
    --trl-packing "${TRL_PACKING:-padding_free}" --keep-going --json "$OUT/$M.json" 2>&1 | tee "$OUT/$M.log"
  [ "${PIPESTATUS[0]}" -eq 124 ] && echo "random:$M stopped after ${LIMIT}s; $OUT/$M.json holds the runs it finished"
done
echo "done: $(ls "$OUT")"
