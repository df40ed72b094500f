#!/usr/bin/env bash
# Set up a fresh machine: Java 17 (TorchServe's frontend) and .venv/ with the pinned packages.
# Safe to run again: it skips what is already in place.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

java_ok() { command -v java >/dev/null && java -version 2>&1 | grep -Eq 'version "(1[7-9]|2[0-9])'; }
if ! java_ok; then
  echo "setup: installing Java 17 (openjdk-17-jre-headless)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  java_ok || { echo "setup: Java 17 is still missing; install it and run again" >&2; exit 1; }
fi

PY="${PYTHON:-python3.11}"; command -v "$PY" >/dev/null || PY=python3
"$PY" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 10))' \
  || { echo "setup: Python 3.10 or newer is needed (found $("$PY" --version))" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
STAMP=.venv/.requirements.sha256
WANT="$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "setup: installing Python packages into .venv (a few minutes the first time)"
  .venv/bin/python -m pip install -q -r requirements.txt
  # this project itself, editable: textclf, train, loadtest and benchmarks import each other by name
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  echo "$WANT" > "$STAMP"
fi
echo "setup: ready ($(.venv/bin/python --version), $(java -version 2>&1 | head -1))"
