#!/usr/bin/env bash
# Reliability evidence: overload, worker SIGKILL under load, soak, hostile requests -> RELIABILITY.md.
# Usage: benchmarks/reliability.sh CKPT [--soak-minutes 30] [--overload-users 256] [--overload-factor 4] [--normal-users 16]
#            [--duration 60s] [--kill-after 10s] [--phases hostile,overload,kill,soak] [--out results/reliability-<ts>]
#            [--record RELIABILITY.md] [--note TEXT]        (--help: every option; the package benchmarks/reliability/ does the work)
# Archives CKPT afresh, serves it with config.properties from a private TorchServe on free 127.0.0.1 ports
# (always stopped), and writes OUT/results.json, PNGs and RELIABILITY.md. Full length: about 45 minutes.
# Nothing else should run on the machine meanwhile: the load generator shares its cores.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || { echo "reliability.sh: $PY not found: run ./setup.sh first" >&2; exit 2; }
COMMAND="$(printf '%q ' "$0" "$@")"
cd "$ROOT"
exec env -u PYTHONPATH RELIABILITY_COMMAND="${COMMAND% }" "$PY" -m benchmarks.reliability "$@"
