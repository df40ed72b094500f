#!/usr/bin/env bash
# Serving benchmark: how much of the in-process limit TorchServe delivers, at several user levels.
# Usage: benchmarks/serving.sh CKPT [--duration 30s] [--levels "1 8 32 64"] [--out results/serving-<timestamp>]
#            [--model-config handlers/model-config.yaml] [--data data/snips/test.txt]
#            [--inprocess-seconds DURATION_SECONDS] [--record BENCHMARKS.md] [--note TEXT] [--optimized DIR]
# --optimized DIR: serve CKPT (fp32) and then DIR (python -m train.optimize's --out) one after the other, each as
# below, into OUT/fp32 and OUT/optimized; benchmarks/serving_compare.py puts them side by side (test accuracy of
# both too) and prints a last line `optimized/fp32 served ratio R at 32 users`.
# Steps: (a) benchmarks/inprocess.py: batch-1 latency and batched examples/s of the checkpoint, same
# sentences, torch threads = cores; (b) archive.sh CKPT bench with --model-config; (c) TorchServe with
# config.properties on free 127.0.0.1 ports, a private temp dir, PYTHONPATH unset; (d) loadtest/run.sh at
# each user level for --duration; (e) TorchServe stopped (also on error or Ctrl-C); (f)-(h) table, ratio,
# plots and results.json in --out, and a section appended to --record (BENCHMARKS.md at the repo root).
# Nothing else should run on the machine meanwhile: the load generator shares its cores.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
die() { echo "serving.sh: $*" >&2; exit 2; }
COMMAND="$(printf '%q ' "$0" "$@")"; COMMAND="${COMMAND% }"
NAME=bench
READY_TIMEOUT=300   # seconds for TorchServe to load the model; generous for a busy 2-core machine

[ $# -ge 1 ] || die "usage: serving.sh CKPT [--duration 30s] [--levels \"1 8 32 64\"] [--out DIR] (--help for more)"
case "$1" in -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
CKPT="$1"; shift
DURATION=30s LEVELS="1 8 32 64" OUT="" MODEL_CONFIG="$ROOT/handlers/model-config.yaml"
DATA="$ROOT/data/snips/test.txt" INPROCESS_SECONDS="" RECORD="$ROOT/BENCHMARKS.md" NOTE="" OPTIMIZED=""
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || die "$1 needs a value"
  case "$1" in
    --duration) DURATION="$2" ;;
    --levels) LEVELS="$2" ;;
    --out) OUT="$2" ;;
    --model-config) MODEL_CONFIG="$2" ;;
    --data) DATA="$2" ;;
    --inprocess-seconds) INPROCESS_SECONDS="$2" ;;
    --record) RECORD="$2" ;;
    --note) NOTE="$2" ;;
    --optimized) OPTIMIZED="$2" ;;
    *) die "unknown argument '$1' (--help for usage)" ;;
  esac
  shift 2
done

abspath() { (cd "$(dirname "$1")" && echo "$(pwd)/$(basename "$1")"); }
[ -d "$CKPT" ] || die "checkpoint folder '$CKPT' does not exist"
CKPT="$(cd "$CKPT" && pwd)"
[ -f "$CKPT/labels.json" ] || die "$CKPT has no labels.json: not a checkpoint folder?"
[ -f "$MODEL_CONFIG" ] || die "--model-config '$MODEL_CONFIG' not found"; MODEL_CONFIG="$(abspath "$MODEL_CONFIG")"
[ -f "$DATA" ] || die "--data '$DATA' not found"; DATA="$(abspath "$DATA")"
[[ "$DURATION" =~ ^([0-9]+)([smh]?)$ ]] || die "--duration '$DURATION': expected a number with s, m or h (30s, 2m)"
case "${BASH_REMATCH[2]}" in m) SECS=$((10#${BASH_REMATCH[1]} * 60)) ;; h) SECS=$((10#${BASH_REMATCH[1]} * 3600)) ;;
  *) SECS=$((10#${BASH_REMATCH[1]})) ;; esac
INPROCESS_SECONDS="${INPROCESS_SECONDS:-$SECS}"
[[ "$INPROCESS_SECONDS" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--inprocess-seconds '$INPROCESS_SECONDS': expected seconds"
read -r -a LEVEL_LIST <<< "$LEVELS"
[ ${#LEVEL_LIST[@]} -ge 1 ] || die "--levels is empty"
for u in "${LEVEL_LIST[@]}"; do
  [[ "$u" =~ ^[1-9][0-9]*$ ]] && [ "$u" -le 512 ] || die "--levels: '$u' is not a user count from 1 to 512"
done
PY="$ROOT/.venv/bin/python"; TORCHSERVE="$ROOT/.venv/bin/torchserve"
[ -x "$TORCHSERVE" ] || die "$TORCHSERVE not found: run ./setup.sh first"

if [ -n "$OPTIMIZED" ]; then
  [ -f "$OPTIMIZED/labels.json" ] || die "--optimized '$OPTIMIZED' is not a checkpoint folder (no labels.json)"
  OPTIMIZED="$(cd "$OPTIMIZED" && pwd)"
fi
OUT="${OUT:-$ROOT/results/serving-$(date +%Y%m%d-%H%M%S)}"
if [ -d "$OUT" ] && [ -n "$(ls -A "$OUT")" ]; then die "--out '$OUT' exists and is not empty"; fi
mkdir -p "$OUT"; OUT="$(cd "$OUT" && pwd)"
[ -n "$RECORD" ] && RECORD="$(abspath "$RECORD")"

if [ -n "$OPTIMIZED" ]; then
  for pair in "fp32=$CKPT" "optimized=$OPTIMIZED"; do
    echo "==== ${pair%%=*}: ${pair#*=}"
    "$0" "${pair#*=}" --duration "$DURATION" --levels "$LEVELS" --out "$OUT/${pair%%=*}" \
      --model-config "$MODEL_CONFIG" --data "$DATA" --inprocess-seconds "$INPROCESS_SECONDS" --record "" --note "$NOTE"
  done
  exec "$PY" "$ROOT/benchmarks/serving_compare.py" "$OUT" --fp32 "$CKPT" --optimized "$OPTIMIZED" --data "$DATA" \
    --command "$COMMAND" --record "$RECORD" --note "$NOTE"
fi
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"

# (a) In-process limit first, while TorchServe is not running.
echo "== (a) in-process limit: $INPROCESS_SECONDS s per measurement"
"$PY" "$ROOT/benchmarks/inprocess.py" "$CKPT" --data "$DATA" --model-config "$MODEL_CONFIG" \
  --seconds "$INPROCESS_SECONDS" --out "$OUT/inprocess.json"

# (b) The archive, with the model-config.yaml under test.
# (c) TorchServe in a private folder: its own temp dir (pid file, worker sockets), ports, key file, logs.
WORK="$(mktemp -d "${TMPDIR:-/tmp}/serving-bench.XXXXXX")"
mkdir -p "$WORK/tmp" "$WORK/model_store"
echo "== (b) archiving $CKPT as $NAME.mar with $MODEL_CONFIG"
MODEL_CONFIG="$MODEL_CONFIG" MODEL_STORE="$WORK/model_store" "$ROOT/archive.sh" "$CKPT" "$NAME"

ts_env() { (cd "$WORK" && env -u PYTHONPATH -u TS_CONFIG_FILE TMPDIR="$WORK/tmp" TEMP="$WORK/tmp" "$@"); }
stop_torchserve() {
  local pid
  pid="$(cat "$WORK/tmp/.model_server.pid" 2>/dev/null)" || return 0
  ts_env "$TORCHSERVE" --stop >/dev/null 2>&1 || true
  for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  if kill -0 "$pid" 2>/dev/null; then echo "serving.sh: TorchServe (pid $pid) still running after 30 s; killing it" >&2
    kill -9 "$pid" 2>/dev/null || true; fi
  # Workers are named by their socket in our private temp dir; none should outlive the frontend.
  for _ in $(seq 1 10); do pgrep -f -- "$WORK/tmp/" >/dev/null || break; sleep 1; done
  for wpid in $(pgrep -f -- "$WORK/tmp/" || true); do
    echo "serving.sh: worker $wpid outlived TorchServe; killing it" >&2; kill -9 "$wpid" 2>/dev/null || true
  done
  rm -f "$WORK/tmp/.model_server.pid"
  echo "== (e) TorchServe stopped"
}
cleanup() {
  stop_torchserve
  [ -d "$WORK/logs" ] && cp -R "$WORK/logs" "$OUT/torchserve-logs" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r P_INF P_MAN P_MET P_GINF P_GMAN < <("$PY" -c '
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks: s.close()')
# The project's config with this run's ports and store; models come from --models only.
awk -v inf="$P_INF" -v man="$P_MAN" -v met="$P_MET" -v store="$WORK/model_store" '
  /^inference_address=/ { print "inference_address=http://127.0.0.1:" inf; next }
  /^management_address=/ { print "management_address=http://127.0.0.1:" man; next }
  /^metrics_address=/ { print "metrics_address=http://127.0.0.1:" met; next }
  /^model_store=/ { print "model_store=" store; next }
  /^(load_models|grpc_inference_port|grpc_management_port)=/ { next }
  { print }' "$ROOT/config.properties" > "$WORK/config.properties"
printf 'grpc_inference_port=%s\ngrpc_management_port=%s\n' "$P_GINF" "$P_GMAN" >> "$WORK/config.properties"
grep -q "^inference_address=http://127.0.0.1:$P_INF$" "$WORK/config.properties" \
  || die "config.properties has no inference_address line to rewrite"
HOST="http://127.0.0.1:$P_INF"

echo "== (c) starting TorchServe on $HOST (work folder $WORK)"
ts_env "$TORCHSERVE" --start --ncs --ts-config "$WORK/config.properties" --models "$NAME=$NAME.mar" \
  > "$WORK/torchserve.out" 2>&1 || { cat "$WORK/torchserve.out" >&2; die "torchserve --start failed"; }
TS_PID="$(cat "$WORK/tmp/.model_server.pid" 2>/dev/null)" || die "torchserve wrote no pid file"
code=000; started=$SECONDS
while [ $((SECONDS - started)) -lt $READY_TIMEOUT ]; do
  kill -0 "$TS_PID" 2>/dev/null || die "TorchServe exited while loading; see $OUT/torchserve-logs/"
  if [ -s "$WORK/key_file.json" ]; then
    KEY="$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["inference"]["key"])' "$WORK/key_file.json")"
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -H "Authorization: Bearer $KEY" \
      -H 'Content-Type: text/plain' --data 'warm up' "$HOST/predictions/$NAME" || true)"
    [ "$code" = 200 ] && break
  fi
  sleep 2
done
[ "$code" = 200 ] || die "the model did not answer within $READY_TIMEOUT s (last HTTP $code); see $OUT/torchserve-logs/"
echo "== TorchServe ready after $((SECONDS - started)) s"

# (d) One bounded locust run per user level.
for u in "${LEVEL_LIST[@]}"; do
  echo "== (d) $u users for $DURATION"
  rc=0
  "$ROOT/loadtest/run.sh" --users "$u" --spawn-rate "$u" --duration "$DURATION" --host "$HOST" --model "$NAME" \
    --key-file "$WORK/key_file.json" --data "$DATA" --labels "$CKPT/labels.json" --out "$OUT/users-$u" || rc=$?
  [ "$rc" -le 1 ] || die "the load test at $u users failed (exit $rc); see $OUT/users-$u/locust.log"
done

# TorchServe's own metrics over the whole run (queue time, the handler's textclf_* counters)
curl -s --max-time 30 "http://127.0.0.1:$P_MET/metrics" > "$OUT/metrics.txt" || echo "serving.sh: no metrics scraped" >&2

# (e) Stop before reporting, so the report does not compete with an idle server.
stop_torchserve
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

# (f)-(h) Table, ratio, plots, results.json, BENCHMARKS.md section.
"$PY" "$ROOT/benchmarks/serving_report.py" "$OUT" --levels "${LEVEL_LIST[@]}" --checkpoint "$CKPT" \
  --model-config "$MODEL_CONFIG" --data "$DATA" --duration "$DURATION" --command "$COMMAND" \
  --record "$RECORD" --note "$NOTE" --loadavg-before "$LOAD_BEFORE" --loadavg-after "$LOAD_AFTER"
