#!/usr/bin/env bash
# Long inputs served: documents of mixed lengths in one TorchServe batch, forwarded in passes of similar
# length (pass_overhead_tokens 64, the default) or all padded to the longest (pass_overhead_tokens 0).
# Usage: benchmarks/long_inputs.sh CKPT [--data data/r52/test.tsv] [--levels "1 8 32"] [--duration 20s]
#            [--out results/long-inputs]
# Runs python -m benchmarks.serving twice on the same checkpoint and documents, with handlers/model-config.yaml as it
# is and with pass_overhead_tokens set to 0, then writes OUT/summary.{json,md}: req/s, p50/p99 and the
# padding share of the forward passes (from the textclf_* counters) side by side.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
die() { echo "long_inputs.sh: $*" >&2; exit 2; }
[ $# -ge 1 ] || die "usage: long_inputs.sh CKPT [--data FILE] [--levels \"1 8 32\"] [--duration 20s] [--out DIR]"
case "$1" in -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
CKPT="$1"; shift
DATA="$ROOT/data/r52/test.tsv" LEVELS="1 8 32" DURATION=20s OUT="$ROOT/results/long-inputs"
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || die "$1 needs a value"
  case "$1" in
    --data) DATA="$2" ;; --levels) LEVELS="$2" ;; --duration) DURATION="$2" ;; --out) OUT="$2" ;;
    *) die "unknown argument '$1'" ;;
  esac
  shift 2
done
[ -d "$CKPT" ] || die "checkpoint folder '$CKPT' does not exist"
[ -f "$DATA" ] || die "--data '$DATA' not found"
if [ -d "$OUT" ] && [ -n "$(ls -A "$OUT")" ]; then die "--out '$OUT' exists and is not empty"; fi
mkdir -p "$OUT"; OUT="$(cd "$OUT" && pwd)"
COMMAND="$(printf '%q ' "$0" "$CKPT" --data "$DATA" --levels "$LEVELS" --duration "$DURATION")"; COMMAND="${COMMAND% }"
sed 's/^  pass_overhead_tokens: [0-9]*/  pass_overhead_tokens: 0/' "$ROOT/handlers/model-config.yaml" > "$OUT/model-config-no-split.yaml"
grep -q '^  pass_overhead_tokens: 0' "$OUT/model-config-no-split.yaml" || die "no pass_overhead_tokens in model-config.yaml"
for run in split no-split; do
  config="$ROOT/handlers/model-config.yaml"; [ "$run" = no-split ] && config="$OUT/model-config-no-split.yaml"
  echo "==== $run ($config)"
  (cd "$ROOT" && .venv/bin/python -m benchmarks.serving "$CKPT" --data "$DATA" --levels "$LEVELS" --duration "$DURATION" \
    --inprocess-seconds 5 --model-config "$config" --record "" --out "$OUT/$run")
done
"$ROOT/.venv/bin/python" - "$OUT" "$COMMAND" <<'EOF'
import json, sys
from pathlib import Path
from benchmarks.common import machine
out, command = Path(sys.argv[1]), sys.argv[2]

def counters(run):
    """Sums of the handler's textclf_* counters over the run (TorchServe's metrics, scraped by benchmarks.serving)."""
    from benchmarks.latency import metric_sums
    page = out / run / "metrics.txt"
    return metric_sums(page.read_text()) if page.is_file() else {}

runs = {run: json.loads((out / run / "results.json").read_text()) for run in ("split", "no-split")}
rows, lines = [], ["| users | split: req/s | p50 ms | p99 ms | padded to the longest: req/s | p50 ms | p99 ms | split/padded req/s |",
                   "|---:|---:|---:|---:|---:|---:|---:|---:|"]
for a, b in zip(runs["split"]["levels"], runs["no-split"]["levels"]):
    ratio = a["ok_per_s"] / b["ok_per_s"] if b["ok_per_s"] else None
    rows.append({"users": a["users"], "split": a, "no_split": b, "ratio": ratio})
    lines.append(f"| {a['users']} | {a['ok_per_s']:.1f} | {a['p50_ms']} | {a['p99_ms']} | {b['ok_per_s']:.1f} | "
                 f"{b['p50_ms']} | {b['p99_ms']} | {ratio:.2f}x |" if ratio else f"| {a['users']} | - |")
padding = {}
for run in runs:
    c = counters(run)
    if c.get("textclf_padded_tokens_total"):
        padding[run] = {"tokens": c["textclf_tokens_total"], "padded_tokens": c["textclf_padded_tokens_total"],
                        "forward_passes": c.get("textclf_forward_passes_total"),
                        "padding_share": round(1 - c["textclf_tokens_total"] / c["textclf_padded_tokens_total"], 3)}
m = machine()
summary = {"command": command, "machine": m, "checkpoint": runs["split"]["checkpoint"], "data": runs["split"]["data"],
           "levels": rows, "padding": padding}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
text = [f"Machine: {m['nproc']} cores, {m['cpu']}, flags {', '.join(m.get('flags', []))}. Command: `{command}`.", "",
        *lines, ""]
for run, p in padding.items():
    text.append(f"- {run}: {p['padding_share']:.1%} of the token positions forwarded were padding "
                f"({p['forward_passes']:.0f} passes)")
(out / "summary.md").write_text("\n".join(text) + "\n")
print("\n".join(text))
EOF
