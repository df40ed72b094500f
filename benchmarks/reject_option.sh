#!/usr/bin/env bash
# The numbers of the reject option on the quickstart's Snips MiniLM, one step after the other on this machine:
#   results/calibration/            the default score (mahalanobis) at --target-precision 0.99, evaluated on test
#   results/calibration/energy/     the same with --score energy
#   results/optimize-snips-reject/  train.optimize of the calibrated checkpoint (the chosen variant refits its
#                                   Mahalanobis statistics on its own features)
#   results/serving-reject-option{,-reversed}/  that variant served without and with the threshold, in both orders
# Usage: benchmarks/reject_option.sh [RUN]   (RUN: a quickstart-recipe run folder, default runs/snips-minilm-cls-e1)
set -euxo pipefail
cd "$(dirname "$0")/.."
R="${1:-runs/snips-minilm-cls-e1}"
PY=.venv/bin/python
[ -d "$R/checkpoint-best" ] || { echo "reject_option.sh: $R/checkpoint-best does not exist (train it: python -m train --data data/snips --out $R --embedding minilm --encoder cls --epochs 1 --lr 1e-4)" >&2; exit 2; }

rm -rf "$R/calibrated" && cp -r "$R/checkpoint-best" "$R/calibrated"
$PY -m train.calibrate --checkpoint "$R/calibrated" --data data/snips --target-precision 0.99
$PY -m train.evaluate --checkpoint "$R/calibrated" --data data/snips --out results/calibration --latency-examples 20
cp "$R/calibrated/config.json" results/calibration/config.json
printf '%s\n' "play jazz" "🎵🎶🎷" "what is the capital of france" "ｐｌａｙ ｊａｚｚ" "will it rain in paris tomorrow" \
  "book a table for two at a sushi place" > results/calibration/examples.txt
$PY -m train.predict --checkpoint "$R/calibrated" --input results/calibration/examples.txt \
  --output results/calibration/examples.jsonl --overwrite --top-k 1

rm -rf "$R/calibrated-energy" && cp -r "$R/checkpoint-best" "$R/calibrated-energy"
$PY -m train.calibrate --checkpoint "$R/calibrated-energy" --data data/snips --target-precision 0.99 --score energy
$PY -m train.evaluate --checkpoint "$R/calibrated-energy" --data data/snips --out results/calibration/energy --latency-examples 20
$PY -m train.predict --checkpoint "$R/calibrated-energy" --input results/calibration/examples.txt \
  --output results/calibration/energy/examples.jsonl --overwrite --top-k 1

$PY -m train.optimize --checkpoint "$R/calibrated" --data data/snips --out "$R/optimized-reject"
mkdir -p results/optimize-snips-reject
cp "$R/optimized-reject/optimize.json" "$R/optimized-reject/optimize.md" results/optimize-snips-reject/
rm -rf "$R/optimized-noreject" && cp -r "$R/optimized-reject" "$R/optimized-noreject"
$PY -m train.calibrate --checkpoint "$R/optimized-noreject" --data data/snips --no-threshold --keep-temperature

rm -rf results/serving-reject-option results/serving-reject-option-reversed
$PY -m benchmarks.serving "$R/optimized-noreject" --optimized "$R/optimized-reject" --duration 20s --levels 1 32 \
  --out results/serving-reject-option --record ''
$PY -m benchmarks.serving "$R/optimized-reject" --optimized "$R/optimized-noreject" --duration 20s --levels 1 32 \
  --out results/serving-reject-option-reversed --record ''
