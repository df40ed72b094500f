#!/usr/bin/env bash
# On a GPU machine without Java or TorchServe, from the repository root, with $CARRY made by
# benchmarks/gpu/prepare.sh: unpack the trimmed Java 17, install TorchServe 0.12.0 (its frontend jar carried
# xz-packed, rebuilt here), then serve model_store/snips.mar with GPU and then CPU workers
# (python -m benchmarks.gpu.serving). See benchmarks/gpu/README.md.
export PYTHONUNBUFFERED=1
D=${CARRY:-.devcarry}; PY=${PY:-python3}
tar -C /tmp -xJf $D/jre.tar.xz && export JAVA_HOME=/tmp/jre PATH=/tmp/jre/bin:$PATH
java -version 2>&1 | head -1
if [ -z "$SKIP_INSTALL" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile $D/torchserve-0.12.0-py3-none-any.whl 2>&1 | tail -2
fi
TS=$($PY -c "import ts, os; print(os.path.dirname(ts.__file__))") || exit 1
mkdir -p "$TS/frontend"   # the wheel came without its only file there
mkdir -p /tmp/jarx && tar -C /tmp/jarx -xJf $D/model-server-jar.tar.xz
$PY - /tmp/jarx "${JAR_DEST:-$TS/frontend/model-server.jar}" <<'PYEOF'
import os, sys, zipfile
src, dst = sys.argv[1:]
files = sorted(os.path.relpath(os.path.join(d, f), src) for d, _, fs in os.walk(src) for f in fs)
files.sort(key=lambda f: f != "META-INF/MANIFEST.MF")
with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
    for f in files:
        z.write(os.path.join(src, f), f)
print("jar rebuilt:", dst, len(files), "entries", os.path.getsize(dst) // 1000000, "MB")
PYEOF
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
timeout ${SERVE_BUDGET:-300} $PY -m benchmarks.gpu.serving model_store/snips.mar
