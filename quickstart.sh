#!/usr/bin/env bash
# The main job on the embedded default: set up, fine-tune the packaged MiniLM on Snips, pick the fastest
# variant that keeps accuracy on this CPU (python -m train.optimize), archive it, start TorchServe on
# 127.0.0.1, and classify a sentence with curl.
# Usage: ./quickstart.sh [--fp32]   (--fp32: serve the PyTorch float32 checkpoint as trained)
# Environment: EPOCHS (default 1), RETRAIN=1 to train again when a checkpoint already exists.
set -euo pipefail
VARIANT=optimized
case "${1:-}" in
  "") ;;
  --fp32) VARIANT=fp32 ;;
  -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "quickstart.sh: unknown argument '$1' (usage: ./quickstart.sh [--fp32])" >&2; exit 2 ;;
esac
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
./setup.sh
export PATH="$ROOT/.venv/bin:$PATH"
unset PYTHONPATH   # the .mar carries its own model code

RUN=runs/snips-minilm-cls
if [ ! -f "$RUN/checkpoint-best/model.safetensors" ] || [ "${RETRAIN:-0}" = 1 ]; then
  echo "== training MiniLM-L6 + CLS on data/snips (one epoch: 137 s on 2 Xeon cores in results/quickstart-run; longer on slower or busy ones)"
  python -m train --data data/snips --out "$RUN" --epochs "${EPOCHS:-1}" --lr 1e-4
else
  echo "== using the existing $RUN/checkpoint-best (RETRAIN=1 trains again)"
fi
SERVE="$RUN/checkpoint-best"
if [ "$VARIANT" = optimized ]; then
  # Measured on this machine, so made again whenever the checkpoint is newer than the last choice.
  if [ ! -f "$RUN/optimized/optimize.json" ] || [ "$RUN/checkpoint-best/config.json" -nt "$RUN/optimized/optimize.json" ]; then
    echo "== choosing the fastest variant within 0.3 points of fp32 on data/snips/valid.txt (1-2 minutes)"
    python -m train.optimize --checkpoint "$RUN/checkpoint-best" --data data/snips --out "$RUN/optimized"
  fi
  SERVE="$RUN/optimized"
  echo "== serving $(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["chosen"])' \
    "$SERVE/optimize.json") (table: $SERVE/optimize.md; ./quickstart.sh --fp32 serves the float32 model)"
fi
echo "== packaging $SERVE"
./archive.sh "$SERVE" snips

echo "== starting TorchServe (inference on 127.0.0.1:8080)"
# Started, waited for and stopped through serving/torchserve.py, the harness the tests and benchmarks use.
# TorchServe keeps its pid file (and the worker sockets) in its temp folder: with a folder of our own, `stop`
# stops the server started here and never a TorchServe the user runs elsewhere. A short path under /tmp
# named after this checkout (a socket path may hold at most 107 bytes).
TS_TMP="/tmp/textclf-ts-$(id -u)-$(printf '%s' "$ROOT" | sha256sum | cut -c1-10)"
if [ -s "$TS_TMP/.model_server.pid" ]; then
  echo "== stopping the TorchServe an earlier ./quickstart.sh started"
  python -m serving.torchserve stop --tmp "$TS_TMP" >/dev/null
fi
# The server outlives this script; its output goes to $TS_TMP/launcher.log, key_file.json and logs/ to the
# repository root. `start` returns once the model answers (it refuses ports already taken).
python -m serving.torchserve start --tmp "$TS_TMP" --config config.properties --models snips=snips.mar </dev/null
KEY="$(python -c 'import json; print(json.load(open("key_file.json"))["inference"]["key"])')"

echo "== curl -H 'Authorization: Bearer \$KEY' -H 'Content-Type: text/plain' --data 'play some jazz by miles davis' http://127.0.0.1:8080/predictions/snips"
curl -s -H "Authorization: Bearer $KEY" -H 'Content-Type: text/plain' --data 'play some jazz by miles davis' \
  http://127.0.0.1:8080/predictions/snips
echo
EXPIRES="$(python -c 'import json; print(json.load(open("key_file.json"))["inference"]["expiration time"][:16])')"
echo "== TorchServe keeps running; its keys are in key_file.json (the inference key expires $EXPIRES UTC; README \"Keys\")."
echo "   Stop it with: .venv/bin/python -m serving.torchserve stop --tmp $TS_TMP"
