#!/usr/bin/env bash
# On a GPU machine, from the repository root, with $CARRY made by benchmarks/gpu/prepare.sh and $OUT a folder
# for what comes back: fine-tune MiniLM on R52, WebKB and Snips with python -m train (the CLI used on CPU) and
# --device cuda, choose per dataset on valid, time the chosen ones on the GPU (python -m train.evaluate), and
# pack the chosen R52 and WebKB checkpoints into $OUT in parts of 15 MiB (benchmarks/gpu/transfer.py).
# Every run stops training when TRAIN_BUDGET seconds (default 330) are spent. See benchmarks/gpu/README.md.
CARRY=${CARRY:-.devcarry}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
T0=$(date +%s); TRAIN_END=$((T0 + ${TRAIN_BUDGET:-330}))
R=/tmp/runs; mkdir -p $R $OUT/x
log() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, tokenizers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
python3 benchmarks/gpu/transfer.py fp32 $CARRY/minilm16 /tmp/minilm || exit 1
run() {   # run NAME FLAGS...: train unless the training budget is spent
  local name=$1; shift; local left=$((TRAIN_END - $(date +%s)))
  if [ $left -lt 40 ]; then log "skip $name (budget)"; return; fi
  log "start $name: $*"
  timeout $left python3 -m train --out $R/$name --embedding /tmp/minilm --device ${DEV:-cuda} "$@" $EXTRA > $OUT/x/$name.log 2>&1
  log "end $name rc=$? $(python3 -c "import json,sys; s=json.load(open('$R/$name/summary.json')); b=s['best']; print('epochs', s['epochs'], 'best', b['epoch'], 'valid', round(b['valid_accuracy'],4), 'test', round(s.get('test_accuracy',0),4), 'f1', round(s.get('test_macro_f1',0),4), 'sec', s['train_seconds'])" 2>/dev/null)"
}
run smoke --data data/snips --limit 300 --epochs 1
grep -q "done in" $OUT/x/smoke.log || { tail -30 $OUT/x/smoke.log; exit 1; }
run r52-l256 --data data/r52 --length-buckets 50 --max-length 256 --batch-size 16 --lr 1e-4 --epochs 8 --patience 3
run webkb-l256 --data data/webkb --skip-empty --length-buckets 50 --max-length 256 --batch-size 16 --lr 1e-4 --epochs 6 --patience 3
run snips-e5 --data data/snips --epochs 5 --lr 5e-5
run snips-s1 --data data/snips --epochs 3 --lr 1e-4 --seed 1
run r52-l512 --data data/r52 --length-buckets 50 --max-length 512 --batch-size 16 --lr 1e-4 --epochs 8 --patience 3
run webkb-l512 --data data/webkb --skip-empty --length-buckets 50 --max-length 512 --batch-size 16 --lr 1e-4 --epochs 6 --patience 3
best() { python3 - "$@" <<'EOF'
import json, sys, pathlib
runs = [p for p in sys.argv[1:] if pathlib.Path(p, "summary.json").is_file()]
print(max(runs, key=lambda p: json.load(open(p + "/summary.json"))["best"]["valid_accuracy"]) if runs else "")
EOF
}
for ds in snips r52 webkb; do
  b=$(best $R/$ds-*); [ -n "$b" ] || continue
  log "chosen on valid for $ds: $b"
  skip=""; [ $ds = webkb ] && skip=--skip-empty
  python3 -m train.evaluate --checkpoint $b/checkpoint-best --data data/$ds --device ${DEV:-cuda} $skip $EVAL_EXTRA --out $R/gpu-eval-$ds > $OUT/x/gpu-eval-$ds.log 2>&1
  log "gpu eval $ds: $(python3 -c "import json; d=json.load(open('$R/gpu-eval-$ds/eval-checkpoint-best-test.json')); print({k: d[k] for k in d if 'second' in k or 'ms_' in k or k=='accuracy'})" 2>&1 | tail -1)"
  [ $ds = snips ] && continue
  python3 benchmarks/gpu/transfer.py pack $b/checkpoint-best /tmp/minilm $OUT/$ds && echo "$b" > $OUT/x/$ds.chosen
done
for d in $R/*/; do n=$(basename $d); mkdir -p $OUT/x/$n; cp $d/*.json $d/*.jsonl $d/*.png $OUT/x/$n/ 2>/dev/null; done
total=$(du -cb $OUT/webkb.* $OUT/r52.* 2>/dev/null | tail -1 | cut -f1)
if [ "${total:-0}" -gt 65000000 ]; then log "packed models $total bytes: too much to bring back, dropping webkb"; rm -f $OUT/webkb.*; fi
mv $OUT/*.small.tar $OUT/x/ 2>/dev/null
tar -C $OUT -cf $OUT/info.tar x && rm -rf $OUT/x
ls -la $OUT; log "all done"
