#!/usr/bin/env bash
# The GPU measurement in two device calls (benchmarks/gpu/README.md, "The measurement script"):
#
#   here:  benchmarks/gpu/measure.sh prepare CKPT     Java 17 (jlink), TorchServe and torch-model-archiver wheels
#                                                     -> .devcarry/stage (38 MB); CKPT in float16 + this CPU's
#                                                     float32 answers -> .devcarry/measure (45 MB for MiniLM)
#   there: benchmarks/gpu/measure.sh stage            carry .devcarry/stage: Java into .devstage/jre, a venv
#                                                     .devstage/venv (system packages + TorchServe), the jar
#   there: benchmarks/gpu/measure.sh run [--small]    carry .devcarry/measure: every stage of
#                                                     benchmarks/gpu/measure.py, results into $OUT
#
# .devcarry/ and .devstage/ are ignored by git: the device tool carries only what a call names, and keeps
# .devstage/ between calls while the machine stays warm. `run --small` on a CPU is the rehearsal.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"; cd "$ROOT"
STAGE=.devstage; CARRY=.devcarry
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
die() { echo "measure.sh: $*" >&2; exit 2; }

case "${1:-}" in
prepare)
  [ $# -eq 2 ] || die "usage: measure.sh prepare CHECKPOINT"
  SKIP_MINILM=1 benchmarks/gpu/prepare.sh "$CARRY/stage"
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: -d "$CARRY/stage" torch-model-archiver==0.12.0
  .venv/bin/python -m benchmarks.gpu.measure prepare --checkpoint "$2" --carry "$CARRY/measure"
  du -sh "$CARRY/stage" "$CARRY/measure"
  ;;
stage)
  PY="${PY:-python3}"
  mkdir -p "$STAGE"
  tar -C "$STAGE" -xJf "$CARRY/stage/jre.tar.xz"
  "$STAGE/jre/bin/java" -version 2>&1 | head -1
  [ -x "$STAGE/venv/bin/python" ] || "$PY" -m venv --system-site-packages "$STAGE/venv"
  "$STAGE/venv/bin/python" -m pip install -q --no-index --no-deps --no-compile \
    "$CARRY"/stage/torchserve-0.12.0-py3-none-any.whl "$CARRY"/stage/torch_model_archiver-0.12.0-py3-none-any.whl
  TS="$("$STAGE/venv/bin/python" -c 'import ts, os; print(os.path.dirname(ts.__file__))')"
  mkdir -p "$TS/frontend" "$STAGE/jar"
  tar -C "$STAGE/jar" -xJf "$CARRY/stage/model-server-jar.tar.xz"
  "$STAGE/venv/bin/python" - "$STAGE/jar" "$TS/frontend/model-server.jar" <<'PYEOF'
import os, sys, zipfile
src, dst = sys.argv[1:]
files = sorted(os.path.relpath(os.path.join(d, f), src) for d, _, fs in os.walk(src) for f in fs)
files.sort(key=lambda f: f != "META-INF/MANIFEST.MF")   # the manifest first, as jar tools expect
with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
    for f in files:
        z.write(os.path.join(src, f), f)
print("jar rebuilt:", dst, len(files), "entries")
PYEOF
  "$STAGE/venv/bin/python" -c "import torch, ts; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'torchserve ok')"
  ;;
run)
  shift
  if [ -x "$STAGE/venv/bin/python" ]; then
    export JAVA_HOME="$ROOT/$STAGE/jre" PATH="$ROOT/$STAGE/jre/bin:$ROOT/$STAGE/venv/bin:$PATH"
    PY="$ROOT/$STAGE/venv/bin/python"
  else
    PY="${PY:-$ROOT/.venv/bin/python}"   # the CPU rehearsal: this repository's own .venv and Java
  fi
  : "${OUT:?set OUT to the folder for the results}"
  "$PY" -m benchmarks.gpu.measure run --checkpoint "$CARRY/measure/ckpt16" --reference "$CARRY/measure/reference.json" \
    --out "$OUT" "$@"
  ;;
*) die "usage: measure.sh prepare CHECKPOINT | stage | run [--small] [--only STAGES]" ;;
esac
