#!/usr/bin/env bash
# Set up a fresh machine: Java 17 (TorchServe's frontend), nginx (the proxy) and .venv/ with the pinned packages.
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

# nginx, the proxy in front of TorchServe in the container (serving/proxy.py starts it itself; tests start it
# on loopback). Debian's package is unpacked into .tools/nginx rather than installed, so that no nginx service
# starts and listens on port 80.
nginx_ok() { command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || [ -x .tools/nginx/usr/sbin/nginx ]; }
if ! nginx_ok; then
  echo "setup: unpacking Debian's nginx into .tools/nginx"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  DL="$(mktemp -d)"
  (cd "$DL" && apt-get download -qq nginx 2>/dev/null) \
    || { $SUDO apt-get update -qq && (cd "$DL" && apt-get download -qq nginx 2>/dev/null); } \
    || { echo "setup: could not download Debian's nginx package; install nginx and run again" >&2; exit 1; }
  mkdir -p .tools/nginx
  dpkg-deb -x "$DL"/nginx_*.deb .tools/nginx
  rm -rf "$DL"
  .tools/nginx/usr/sbin/nginx -v 2>/dev/null \
    || { echo "setup: the unpacked nginx does not run (libraries missing?): apt-get install nginx" >&2; exit 1; }
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
