#!/usr/bin/env bash
# Issue 15's grids (docs/results.md), a cell per invocation, on machines that keep no files between sessions:
#   bash benchmarks/grid_cells.sh grid_ru2 src/lingotune/recipes/grid_ru.yaml "lora:1 dpart:1" [EXTRA compare args]
# The grid lives in runs/NAME; its record (scores, loss logs, plots; no weights, no data text) in
# docs/results/NAME, which is committed. When runs/NAME is absent (a fresh machine), the record is copied there
# first, so finished cells are read and not redone. Each METHOD:SEED cell is one `lingotune compare --resume`
# invocation (a part of its own in summary.json, with its wall time), and the record is rewritten after it.
# The first invocation also evaluates the untouched model (a cell of its own, kept in the record).
set -euo pipefail -f  # -f: the extra args' [a,b] lists are not file patterns
cd "$(dirname "$0")/.."
name=$1 recipe=$2 cells=$3 extra=${4:-}  # extra: e.g. --set overrides of a second grid on the same training
out=runs/$name rec=docs/results/$name
if [ ! -e "$out" ] && [ -e "$rec" ]; then mkdir -p runs && cp -r "$rec" "$out"; fi
one() {  # $1 methods, $2 seeds
  local flag=; [ -e "$out/recipe.yaml" ] && flag=--resume
  echo "== $name $1 seed $2 $(date -u +%FT%TZ) $(git rev-parse --short HEAD)"
  # shellcheck disable=SC2086  # $extra is split into its arguments on purpose
  lingotune compare "$recipe" --out "$out" --methods "$1" --seeds "$2" $flag --record "$rec" $extra
}
for c in $cells; do one "${c%%:*}" "${c#*:}"; done
