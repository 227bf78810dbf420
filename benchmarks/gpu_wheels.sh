#!/usr/bin/env bash
# Wheels the GPU machine needs for benchmarks/gpu.sh beyond its image, for CPython 3.12 manylinux x86_64.
#
# The image has torch, transformers, peft, accelerate, safetensors, tokenizers, numpy, pandas, pyarrow,
# xxhash, fsspec, requests, tqdm, pyyaml, huggingface-hub, sacrebleu, regex, jinja2 (and their own
# dependencies, e.g. psutil, filelock, packaging). What gpu.sh imports beyond that:
#   trl -> datasets -> dill, multiprocess
#   lingotune.recipe -> pydantic (pydantic-core, annotated-types, typing-inspection, typing-extensions >= 4.16)
#   lingotune.recipe -> lingotune.eval -> rich (pygments, markdown-it-py, mdurl); lingotune.errors -> typer
#     (click, shellingham)
# lingotune's other dependencies (gguf, sentencepiece, babel, num2words, matplotlib, scipy) are not
# imported on the benchmark's path (random-weight models, synthetic data). Checked on CPU with a
# virtual environment holding only the image's packages plus these (benchmarks/gpu.sh --tiny ran).
#
#   bash benchmarks/gpu_wheels.sh download [DIR]     # here (PyPI): into DIR (default /work/main/.whl)
#   bash benchmarks/gpu_wheels.sh install DIR SITE   # there (offline): unpack DIR/*.whl into SITE
#   PYTHONPATH=SITE:src bash benchmarks/gpu.sh OUTDIR
set -eu
WHEELS="trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
rich==15.0.0 pygments==2.21.0 markdown-it-py==4.3.0 mdurl==0.1.2 typer==0.29.2 click==8.5.1 shellingham==1.5.4"

case "${1:-}" in
  download)
    DIR=${2:-/work/main/.whl}
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$DIR" $WHEELS
    du -ch "$DIR"/*.whl | tail -1 ;;
  install)
    DIR=${2:?install DIR SITE}; SITE=${3:?install DIR SITE}
    mkdir -p "$SITE"
    # a wheel is a zip laid out for site-packages: unpacking is installing (no pip needed, no network)
    python3 - "$SITE" "$DIR"/*.whl <<'EOF'
import sys, zipfile
for whl in sys.argv[2:]:
    zipfile.ZipFile(whl).extractall(sys.argv[1])
    print("unpacked", whl.rsplit("/", 1)[-1])
EOF
    ;;
  *) echo "usage: gpu_wheels.sh download [DIR] | install DIR SITE" >&2; exit 2 ;;
esac
