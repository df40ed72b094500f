#!/usr/bin/env bash
# One headless, bounded locust run against a TorchServe model on this machine (loopback only).
# Usage: loadtest/run.sh [--users 8] [--spawn-rate USERS] [--duration 30s] [--host http://127.0.0.1:8080]
#                        [--model snips] [--key-file key_file.json] [--data data/snips/test.txt]
#                        [--labels LABELS.json|A,B,...] [--out results/loadtest-<timestamp>]
# --key-file '' sends no Authorization header (token authorization off). --labels: see loadtest/locustfile.py.
# Writes into --out: locust_stats.csv (+ _stats_history, _failures, _exceptions), report.html, locust.log,
# locust.out (the printed summary) and summary.json (req/s, p50/p95/p99 ms, failures, from the
# "Aggregated" row). Exit code: 0 every request succeeded; 1 some failed (reasons in locust_failures.csv);
# 2 bad arguments; 3 locust itself failed or sent nothing (see locust.log).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
die() { echo "run.sh: $*" >&2; exit 2; }
COMMAND="$(printf '%q ' "$0" "$@")"
MAX_USERS=512
MAX_SECONDS=3600

USERS=8 SPAWN="" DURATION=30s HOST=http://127.0.0.1:8080 MODEL=snips KEY_FILE=key_file.json
DATA=data/snips/test.txt LABELS="" OUT=""
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || case "$1" in -h|--help) ;; *) die "$1 needs a value (--help for usage)" ;; esac
  case "$1" in
    --users) USERS="$2" ;;
    --spawn-rate) SPAWN="$2" ;;
    --duration) DURATION="$2" ;;
    --host) HOST="$2" ;;
    --model) MODEL="$2" ;;
    --key-file) KEY_FILE="$2" ;;
    --data) DATA="$2" ;;
    --labels) LABELS="$2" ;;
    --out) OUT="$2" ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (--help for usage)" ;;
  esac
  shift 2
done

[[ "$USERS" =~ ^[0-9]+$ ]] && [ "$USERS" -ge 1 ] && [ "$USERS" -le $MAX_USERS ] \
  || die "--users '$USERS': expected a whole number from 1 to $MAX_USERS"
SPAWN="${SPAWN:-$USERS}"
[[ "$SPAWN" =~ ^[0-9]+([.][0-9]+)?$ ]] && [[ ! "$SPAWN" =~ ^0+([.]0+)?$ ]] \
  || die "--spawn-rate '$SPAWN': expected a positive number of users per second"
[[ "$DURATION" =~ ^([0-9]+)([smh]?)$ ]] || die "--duration '$DURATION': expected a number with s, m or h (30s, 2m)"
case "${BASH_REMATCH[2]}" in m) SECS=$((10#${BASH_REMATCH[1]} * 60)) ;; h) SECS=$((10#${BASH_REMATCH[1]} * 3600)) ;;
  *) SECS=$((10#${BASH_REMATCH[1]})) ;; esac
[ "$SECS" -ge 1 ] && [ "$SECS" -le $MAX_SECONDS ] || die "--duration '$DURATION': expected 1 s to $MAX_SECONDS s"
[[ "$MODEL" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "--model '$MODEL': letters, digits, '_', '-' and '.' only"

PY="$ROOT/.venv/bin/python"; LOCUST="$ROOT/.venv/bin/locust"
[ -x "$LOCUST" ] || die "$LOCUST not found: run ./setup.sh first"
# Traffic stays on this machine: loopback addresses only.
"$PY" - "$HOST" <<'EOF' || die "--host '$HOST' refused: only http(s)://127.0.0.0/8, localhost or [::1], with an optional port"
import ipaddress, sys
from urllib.parse import urlsplit
try:
    url = urlsplit(sys.argv[1]); url.port   # .port raises on a bad port
    ok = url.scheme in ("http", "https") and url.path in ("", "/") and not url.query and not url.username \
        and (url.hostname == "localhost" or ipaddress.ip_address(url.hostname or "").is_loopback)
except ValueError:
    ok = False
sys.exit(0 if ok else 1)
EOF
HOST="${HOST%/}"

abspath() { (cd "$(dirname "$1")" && echo "$(pwd)/$(basename "$1")"); }
if [ -n "$KEY_FILE" ]; then
  [ -f "$KEY_FILE" ] || { [ -f "$ROOT/$KEY_FILE" ] && KEY_FILE="$ROOT/$KEY_FILE"; } \
    || die "--key-file '$KEY_FILE' not found (TorchServe writes key_file.json where it was started)"
  KEY_FILE="$(abspath "$KEY_FILE")"
fi
[ -f "$DATA" ] || { [ -f "$ROOT/$DATA" ] && DATA="$ROOT/$DATA"; } || die "--data '$DATA' not found"
DATA="$(abspath "$DATA")"
if [ -n "$LABELS" ] && [ -f "$LABELS" ]; then LABELS="$(abspath "$LABELS")"; fi

OUT="${OUT:-$ROOT/results/loadtest-$(date +%Y%m%d-%H%M%S)}"
if [ -d "$OUT" ] && [ -n "$(ls -A "$OUT")" ]; then die "--out '$OUT' exists and is not empty"; fi
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

echo "== locust: $USERS users (spawn $SPAWN/s) for $DURATION against $HOST/predictions/$MODEL -> $OUT"
STARTED="$(date -Iseconds)"
set +e
# timeout: a hard stop even if locust hangs; --stop-timeout lets requests in flight finish.
TS_MODEL="$MODEL" TS_KEY_FILE="$KEY_FILE" TS_DATA="$DATA" TS_LABELS="$LABELS" \
  timeout --kill-after=10 $((SECS + 60)) "$LOCUST" -f "$ROOT/loadtest/locustfile.py" \
    --headless --only-summary --host "$HOST" --users "$USERS" --spawn-rate "$SPAWN" \
    --run-time "${SECS}s" --stop-timeout 10 --exit-code-on-error 1 \
    --csv "$OUT/locust" --csv-full-history --html "$OUT/report.html" \
    --logfile "$OUT/locust.log" --loglevel INFO 2>&1 | tee "$OUT/locust.out"
rc=${PIPESTATUS[0]}
set -e
[ "$rc" -ne 124 ] && [ "$rc" -ne 137 ] || { echo "run.sh: locust did not stop in time; see $OUT/locust.log" >&2; exit 3; }
[ -f "$OUT/locust_stats.csv" ] || { echo "run.sh: locust exited with $rc and wrote no statistics; see $OUT/locust.log" >&2; exit 3; }

set +e
"$PY" "$ROOT/loadtest/summarize.py" "$OUT/locust_stats.csv" "$OUT/summary.json" \
  --meta "users=$USERS" --meta "spawn_rate=$SPAWN" --meta "duration=$DURATION" --meta "duration_s=$SECS" \
  --meta "host=$HOST" --meta "model=$MODEL" --meta "data=$DATA" --meta "started=$STARTED" \
  --meta "locust_exit_code=$rc" --meta "command=$COMMAND"
src=$?
set -e
if [ "$src" -ne 0 ]; then
  echo "run.sh: locust (exit $rc) recorded no requests; see $OUT/locust.log" >&2
  grep -E '^[A-Za-z_.]*(Error|Exception): ' "$OUT/locust.log" | tail -1 | sed 's/^/  /' >&2 || true
  exit 3
fi
failures="$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["failures"])' "$OUT/summary.json")"
echo "== $OUT/summary.json"
if [ "$failures" -gt 0 ]; then
  echo "run.sh: $failures requests failed; reasons in $OUT/locust_failures.csv" >&2; exit 1
fi
[ "$rc" -eq 0 ] || { echo "run.sh: locust exited with $rc (exceptions in the locustfile? see $OUT/locust_exceptions.csv)" >&2; exit 3; }
