#!/usr/bin/env bash
# The main job on the embedded default: set up, fine-tune the packaged MiniLM on Snips, archive,
# start TorchServe on 127.0.0.1, and classify a sentence with curl.
# Environment: EPOCHS (default 1), RETRAIN=1 to train again when a checkpoint already exists.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
./setup.sh
export PATH="$ROOT/.venv/bin:$PATH"
unset PYTHONPATH   # the .mar carries its own model code

RUN=runs/snips-minilm-cls
if [ ! -f "$RUN/checkpoint-best/model.safetensors" ] || [ "${RETRAIN:-0}" = 1 ]; then
  echo "== training MiniLM-L6 + CLS on data/snips (7-10 minutes per epoch on 2 cores)"
  python -m train --data data/snips --out "$RUN" --epochs "${EPOCHS:-1}" --lr 1e-4
else
  echo "== using the existing $RUN/checkpoint-best (RETRAIN=1 trains again)"
fi
echo "== packaging"
./archive.sh "$RUN/checkpoint-best" snips

echo "== starting TorchServe (inference on 127.0.0.1:8080)"
torchserve --stop >/dev/null 2>&1 || true
rm -f key_file.json
torchserve --start --ncs --ts-config config.properties --models snips=snips.mar >/dev/null
for _ in $(seq 1 120); do [ -s key_file.json ] && break; sleep 1; done
[ -s key_file.json ] || { echo "TorchServe wrote no key_file.json: see logs/ts_log.log" >&2; exit 1; }
KEY="$(python -c 'import json; print(json.load(open("key_file.json"))["inference"]["key"])')"
for _ in $(seq 1 120); do
  code="$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $KEY" -H 'Content-Type: text/plain' \
    --data 'ping' http://127.0.0.1:8080/predictions/snips || true)"
  [ "$code" = 200 ] && break; sleep 1
done
[ "$code" = 200 ] || { echo "the model did not come up: see logs/model_log.log" >&2; exit 1; }

echo "== curl -H 'Authorization: Bearer \$KEY' -H 'Content-Type: text/plain' --data 'play some jazz by miles davis' http://127.0.0.1:8080/predictions/snips"
curl -s -H "Authorization: Bearer $KEY" -H 'Content-Type: text/plain' --data 'play some jazz by miles davis' \
  http://127.0.0.1:8080/predictions/snips
echo
echo "== TorchServe keeps running. Stop it with: .venv/bin/torchserve --stop"
