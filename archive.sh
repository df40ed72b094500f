#!/usr/bin/env bash
# Package a checkpoint folder into model_store/NAME.mar: handler + textclf/ model code + protocol/ request
# protocol + checkpoint files.
# Usage: ./archive.sh [--gpu] CHECKPOINT_DIR [NAME]      (NAME defaults to the run folder's name)
#   --gpu: GPU workers (handlers/model-config-gpu.yaml laid over the model-config; see that file)
# Environment: MODEL_CONFIG (default handlers/model-config.yaml), MODEL_STORE (default model_store/).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
die() { echo "archive.sh: $*" >&2; exit 2; }

GPU=""
if [ "${1:-}" = "--gpu" ]; then GPU=1; shift; fi
case "${1:-}" in -*) die "unknown option '$1' (usage: archive.sh [--gpu] CHECKPOINT_DIR [NAME])" ;; esac
[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: archive.sh [--gpu] CHECKPOINT_DIR [NAME]"
CKPT="$1"
[ -d "$CKPT" ] || die "checkpoint folder '$CKPT' does not exist"
CKPT="$(cd "$CKPT" && pwd)"
if [ $# -eq 2 ]; then NAME="$2"
else
  base="$(basename "$CKPT")"
  case "$base" in checkpoint*) NAME="$(basename "$(dirname "$CKPT")")" ;; *) NAME="$base" ;; esac
fi
[[ "$NAME" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "model name '$NAME' may hold only letters, digits, '_', '-' and '.'"

PY="$ROOT/.venv/bin/python"; [ -x "$PY" ] || PY="$(command -v python3)"
ARCHIVER="$ROOT/.venv/bin/torch-model-archiver"; [ -x "$ARCHIVER" ] || ARCHIVER="$(command -v torch-model-archiver)" \
  || die "torch-model-archiver not found: run ./setup.sh first"

# Nothing in the checkpoint may point outside it.
links="$(find "$CKPT" -type l | head -3)"
[ -z "$links" ] || die "checkpoint '$CKPT' holds symbolic links, refused: $links"
# The checkpoint must be complete and readable before it is shipped.
FILES="$(cd "$ROOT" && "$PY" -c '
import sys
from textclf.checkpoint import check_folder, required_files
from textclf.errors import CheckpointError
try:
    config = check_folder(sys.argv[1])
except CheckpointError as e:
    sys.exit(f"archive.sh: {e}")
print(" ".join(f.split("/")[0] for f in required_files(config)))
' "$CKPT")" || exit 2

# A private temp folder: torch-model-archiver wipes $TMPDIR/NAME before staging.
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
STAGE="$WORK/stage"; mkdir -p "$STAGE"
for f in $FILES; do cp -R "$CKPT/$f" "$STAGE/"; done
for f in metrics.json train_args.json; do [ -f "$CKPT/$f" ] && cp "$CKPT/$f" "$STAGE/"; done
# the model code and the request protocol, importable from the unpacked archive (the worker's PYTHONPATH)
for package in textclf protocol; do
  mkdir -p "$STAGE/$package"
  cp "$ROOT/$package"/*.py "$STAGE/$package/"
done

CONFIG="${MODEL_CONFIG:-$ROOT/handlers/model-config.yaml}"
[ -f "$CONFIG" ] || die "model-config '$CONFIG' does not exist"
if [ -n "$GPU" ]; then
  # the GPU keys laid over the model-config (handler: key by key): one source for every other setting
  "$PY" - "$CONFIG" "$ROOT/handlers/model-config-gpu.yaml" "$WORK/model-config.yaml" <<'PYEOF' || exit 2
import sys
import yaml
base, gpu, out = sys.argv[1:]
config = yaml.safe_load(open(base, encoding="utf-8")) or {}
over = yaml.safe_load(open(gpu, encoding="utf-8")) or {}
handler = {**(config.get("handler") or {}), **(over.pop("handler", None) or {})}
config.update(over)
config["handler"] = handler
with open(out, "w", encoding="utf-8") as f:
    yaml.safe_dump(config, f, sort_keys=False)
PYEOF
  CONFIG="$WORK/model-config.yaml"
fi

STORE="${MODEL_STORE:-$ROOT/model_store}"
mkdir -p "$STORE"
TMPDIR="$WORK" "$ARCHIVER" --model-name "$NAME" --version 1.0 \
  --handler "$ROOT/handlers/text_classifier.py" \
  --extra-files "$STAGE" \
  --config-file "$CONFIG" \
  --export-path "$STORE" --force
MAR="$STORE/$NAME.mar"
[ -f "$MAR" ] || die "torch-model-archiver did not write $MAR"
echo "$MAR $(du -h "$MAR" | cut -f1)${GPU:+ (GPU workers)}"
