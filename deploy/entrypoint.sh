#!/usr/bin/env bash
# The container's command: TorchServe in the foreground on 127.0.0.1 (token authorization off) behind nginx
# (serving/proxy.py renders deploy/nginx/textclf.conf.in and keeps the clients' keys from a Kubernetes Secret);
# started, watched and stopped together. Why this split: deploy/README.md "Keys" and "The proxy".
#
# Settings (environment; the defaults are the image's layout, see Dockerfile):
#   MODEL_STORE       the .mar files, all served (a mounted volume)        /home/model-server/model-store
#   CONFIG_DIR        config.properties (base) and model-config.yaml     /home/model-server/config
#   KEYS_FILE         the clients' keys, one a line (a mounted Secret)    /home/model-server/keys/api-keys
#   WORK_DIR          writable: the effective config, logs/, tmp/, proxy/ /home/model-server/work
#   PROXY_LISTEN      what the cluster reaches: nginx, keys checked       0.0.0.0:8080
#   PROXY_HEAD_S PROXY_BODY_S PROXY_IDLE_S  the proxy's deadlines (s)     10 10 5
#   METRICS_LISTEN    Prometheus: GET /metrics through nginx (no key)   0.0.0.0:8082
#   TS_INFERENCE_PORT TS_MANAGEMENT_PORT TS_METRICS_PORT TS_GRPC_INFERENCE_PORT TS_GRPC_MANAGEMENT_PORT
#                     (127.0.0.1 only)                                    8085 8081 8083 7070 7071
# Exit status: 0 after SIGTERM/SIGINT stopped both; 1 when either ended by itself (the other is stopped
# too, so the kubelet restarts the container); 2 when the settings are unusable (nothing started).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODEL_STORE="${MODEL_STORE:-/home/model-server/model-store}"
CONFIG_DIR="${CONFIG_DIR:-/home/model-server/config}"
KEYS_FILE="${KEYS_FILE:-/home/model-server/keys/api-keys}"
WORK_DIR="${WORK_DIR:-/home/model-server/work}"
PROXY_LISTEN="${PROXY_LISTEN:-0.0.0.0:8080}"
PROXY_HEAD_S="${PROXY_HEAD_S:-10}"
PROXY_BODY_S="${PROXY_BODY_S:-10}"
PROXY_IDLE_S="${PROXY_IDLE_S:-5}"
METRICS_LISTEN="${METRICS_LISTEN:-0.0.0.0:8082}"
TS_INFERENCE_PORT="${TS_INFERENCE_PORT:-8085}"
TS_MANAGEMENT_PORT="${TS_MANAGEMENT_PORT:-8081}"
TS_METRICS_PORT="${TS_METRICS_PORT:-8083}"
TS_GRPC_INFERENCE_PORT="${TS_GRPC_INFERENCE_PORT:-7070}"
TS_GRPC_MANAGEMENT_PORT="${TS_GRPC_MANAGEMENT_PORT:-7071}"
PYTHON="${PYTHON:-python}"
say() { echo "entrypoint: $*" >&2; }
die() { say "$*"; exit 2; }

# ---- the settings must be usable before anything starts
[ -f "$CONFIG_DIR/config.properties" ] || die "no $CONFIG_DIR/config.properties (mount the ConfigMap there)"
[ -d "$MODEL_STORE" ] || die "model store $MODEL_STORE does not exist (mount the volume holding the .mar files)"
compgen -G "$MODEL_STORE/*.mar" >/dev/null || die "no .mar file in $MODEL_STORE: ./archive.sh CKPT NAME makes one"
[ -r "$KEYS_FILE" ] || die "cannot read the key file $KEYS_FILE (mount the Secret there; deploy/README.md 'Keys')"
"$PYTHON" "$ROOT/serving/proxy.py" --keys "$KEYS_FILE" --work "$WORK_DIR/proxy" --check || exit 2
mkdir -p "$WORK_DIR" || die "cannot create $WORK_DIR"
[ -w "$WORK_DIR" ] || die "$WORK_DIR is not writable"
# Pods are sized for one model-config.yaml (workers x threads = CPU limit): a .mar packed with another is refused.
if [ -f "$CONFIG_DIR/model-config.yaml" ]; then
  "$PYTHON" - "$CONFIG_DIR/model-config.yaml" "$MODEL_STORE" <<'EOF' || exit 2
import json, sys, zipfile
from pathlib import Path
import yaml
want = yaml.safe_load(Path(sys.argv[1]).read_text(encoding="utf-8"))
for mar in sorted(Path(sys.argv[2]).glob("*.mar")):
    try:
        with zipfile.ZipFile(mar) as z:
            name = json.loads(z.read("MAR-INF/MANIFEST.json"))["model"].get("configFile")
            packed = yaml.safe_load(z.read(name)) if name else None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        sys.exit(f"entrypoint: {mar} is not a readable model archive ({type(e).__name__}: {e})")
    if packed != want:
        differ = sorted(k for k in set(want or {}) | set(packed or {}) if (want or {}).get(k) != (packed or {}).get(k))
        sys.exit(f"entrypoint: {mar.name} was packed with another model-config.yaml than {sys.argv[1]} (they differ in "
                 f"{', '.join(differ) or 'everything'}): repack it with that file (MODEL_CONFIG=... ./archive.sh) or "
                 "change the ConfigMap and the pod's resources together")
EOF
fi

# ---- the effective config: the base, then what the container needs. Later lines win in a .properties file,
# so these cannot be undone by the base: TorchServe's ports all stay on loopback; nginx alone faces the cluster.
CONFIG="$WORK_DIR/config.properties"
{
  cat "$CONFIG_DIR/config.properties"
  echo
  echo "# ---- appended by deploy/entrypoint.sh"
  echo "inference_address=http://127.0.0.1:$TS_INFERENCE_PORT"
  echo "management_address=http://127.0.0.1:$TS_MANAGEMENT_PORT"
  echo "metrics_address=http://127.0.0.1:$TS_METRICS_PORT"
  echo "grpc_inference_address=127.0.0.1"
  echo "grpc_management_address=127.0.0.1"
  echo "grpc_inference_port=$TS_GRPC_INFERENCE_PORT"
  echo "grpc_management_port=$TS_GRPC_MANAGEMENT_PORT"
  echo "model_store=$MODEL_STORE"
  # Keys are checked by the proxy; TorchServe's own would differ in every pod (deploy/README.md "Keys").
  echo "disable_token_authorization=true"
  # With token authorization off, nothing in the pod may register models or fetch URLs.
  echo "enable_model_api=false"
  echo "allowed_urls=(?!)"
  echo "enable_envvars_config=false"
} > "$CONFIG"

# ---- TorchServe's environment: its temp folder (pid file, worker sockets, unpacked archives) fresh at every
# start (the folder may be an emptyDir that outlives a container restart), logs and caches under WORK_DIR (the
# root file system may be read-only), nothing that would shadow the .mar's own code, no model hub at run time.
rm -rf "${WORK_DIR:?}/tmp"
mkdir -p "$WORK_DIR/tmp" "$WORK_DIR/logs" "$WORK_DIR/cache"
export TMPDIR="$WORK_DIR/tmp" TEMP="$WORK_DIR/tmp" TMP="$WORK_DIR/tmp"
export LOG_LOCATION="$WORK_DIR/logs" METRICS_LOCATION="$WORK_DIR/logs"
export XDG_CACHE_HOME="$WORK_DIR/cache" HF_HOME="$WORK_DIR/cache/huggingface"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
unset PYTHONPATH TS_CONFIG_FILE
cd "$WORK_DIR"

MAX_BODY="$(sed -n 's/^[[:space:]]*max_request_size[[:space:]]*=[[:space:]]*\([0-9]*\).*/\1/p' "$CONFIG" | tail -n 1)"

PROXY_PID="" TS_PID=""
stop_all() {
  # The proxy first: nginx finishes the requests under way (up to its worker_shutdown_timeout, 35 s) while
  # TorchServe still answers them; then TorchServe (torchserve --stop finds the Java frontend through the pid file in TMPDIR;
  # its workers end when it does); then whatever of this process group is left.
  set +e
  trap '' TERM INT
  [ -z "$PROXY_PID" ] || { kill -TERM "$PROXY_PID" 2>/dev/null; wait "$PROXY_PID" 2>/dev/null; }
  if [ -n "$TS_PID" ]; then
    torchserve --stop >/dev/null 2>&1
    wait "$TS_PID" 2>/dev/null
  fi
  kill -TERM 0 2>/dev/null
  return 0
}
on_signal() {
  say "stopping (signal)"
  stop_all
  exit 0
}
trap on_signal TERM INT

"$PYTHON" "$ROOT/serving/proxy.py" --listen "$PROXY_LISTEN" --upstream "127.0.0.1:$TS_INFERENCE_PORT" \
  --keys "$KEYS_FILE" --work "$WORK_DIR/proxy" --max-body "${MAX_BODY:-6553500}" \
  --head-s "$PROXY_HEAD_S" --body-s "$PROXY_BODY_S" --idle-s "$PROXY_IDLE_S" \
  --metrics-listen "$METRICS_LISTEN" --metrics-upstream "127.0.0.1:$TS_METRICS_PORT" &
PROXY_PID=$!
torchserve --start --foreground --ncs --ts-config "$CONFIG" --model-store "$MODEL_STORE" --models all &
TS_PID=$!
say "proxy (pid $PROXY_PID) on $PROXY_LISTEN, TorchServe (pid $TS_PID) on 127.0.0.1:$TS_INFERENCE_PORT"

# Wait for either to end. `torchserve --foreground` exits 0 even when the Java frontend died, so any end that
# no signal asked for is a failure.
set +e
wait -n "$PROXY_PID" "$TS_PID"
code=$?
if kill -0 "$PROXY_PID" 2>/dev/null; then what="TorchServe"; else what="the proxy"; fi
say "$what ended by itself (status $code); stopping the rest"
stop_all
exit 1
