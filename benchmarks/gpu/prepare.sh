#!/usr/bin/env bash
# Make the folder that travels to a GPU machine with no Java, TorchServe or MiniLM (benchmarks/gpu/README.md):
#   minilm16/                  the packaged MiniLM with float16 weights (45 MB instead of 91)
#   jre.tar.xz                 Java 17 trimmed with jlink to the modules TorchServe's frontend uses (18 MB)
#   model-server-jar.tar.xz    TorchServe 0.12.0's frontend jar, unpacked and xz-packed (20 MB instead of 46)
#   torchserve-0.12.0-...whl   the TorchServe wheel without that jar
# Usage: benchmarks/gpu/prepare.sh [CARRY]   (default .devcarry, ignored by git through .git/info/exclude)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"; cd "$ROOT"
CARRY="${1:-.devcarry}"; mkdir -p "$CARRY"
PY=.venv/bin/python
JDK="${JDK:-/usr/lib/jvm/java-17-openjdk-amd64}"
[ -d "$JDK/jmods" ] || { echo "prepare.sh: $JDK has no jmods/ (a full JDK 17 is needed for jlink); set JDK=" >&2; exit 2; }
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT

if [ -z "${SKIP_MINILM:-}" ]; then   # SKIP_MINILM=1: no minilm16/ (benchmarks/gpu/measure.sh carries a checkpoint)
  MINILM="$($PY -c 'from train.models import minilm_folder; print(minilm_folder())')"
  $PY benchmarks/gpu/transfer.py fp16 "$MINILM" "$CARRY/minilm16"
fi

"$JDK/bin/jlink" --module-path "$JDK/jmods" --output "$WORK/jre" --strip-debug --no-header-files --no-man-pages \
  --add-modules java.base,java.logging,java.management,java.naming,java.sql,java.xml,java.desktop,java.scripting,jdk.unsupported,java.net.http,jdk.crypto.ec,java.instrument,jdk.management,java.security.jgss,java.prefs,jdk.zipfs,java.compiler,java.rmi,jdk.localedata \
  --include-locales=en
tar -C "$WORK" -cf - jre | xz -T2 -6 > "$CARRY/jre.tar.xz"

$PY -m pip download -q --no-deps --only-binary=:all: -d "$WORK/whl" torchserve==0.12.0
$PY - "$WORK/whl/torchserve-0.12.0-py3-none-any.whl" "$CARRY" "$WORK/jar" <<'PYEOF'
import sys, zipfile, pathlib
wheel, carry, jar = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
with zipfile.ZipFile(wheel) as zi, zipfile.ZipFile(carry / pathlib.Path(wheel).name, "w", zipfile.ZIP_DEFLATED) as zo:
    for item in zi.infolist():
        if item.filename.endswith("frontend/model-server.jar"):
            jar.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(zi.open(item)) as j:
                j.extractall(jar)
        else:
            zo.writestr(item, zi.read(item.filename))
PYEOF
tar -C "$WORK/jar" -cf - . | xz -T2 -6 > "$CARRY/model-server-jar.tar.xz"
du -sh "$CARRY"/*
