#!/usr/bin/env bash
# One epoch of the quickstart's Snips MiniLM + CLS run, as one process and as 2 torchrun ranks on this machine
# (gloo, CPU; torch threads: all cores for the one process, cores / 2 for each rank), same global batch and seed.
# Writes OUT/ranks-1 and OUT/ranks-2 (summary.json, metrics.jsonl, train.log) and prints the two summaries.
# Usage: benchmarks/ddp.sh [OUT] (default results/ddp); about 12 minutes on 2 cores.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/results/ddp}"
cd "$ROOT"
ARGS=(--data data/snips --epochs 1 --lr 1e-4)
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
for n in 1 2; do
  mkdir -p "$OUT/ranks-$n"
  if [ "$n" = 1 ]; then
    .venv/bin/python -m train "${ARGS[@]}" --out "$WORK/ranks-1" > "$OUT/ranks-1/train.log" 2>&1
  else
    .venv/bin/torchrun --nproc_per_node 2 -m train "${ARGS[@]}" --out "$WORK/ranks-2" > "$OUT/ranks-2/train.log" 2>&1
  fi
  cp "$WORK/ranks-$n/summary.json" "$WORK/ranks-$n/metrics.jsonl" "$OUT/ranks-$n/"
  echo "ranks $n: $(tr -d '\n ' < "$OUT/ranks-$n/summary.json")"
done
lscpu | grep -E 'Model name|^CPU\(s\)|Flags' > "$OUT/machine.txt"
