set -u
for round in 1 2; do
  (cd /tmp/old-tree && env PYTHONPATH=/tmp/old-tree timeout 300 bash benchmarks/serving.sh /work/main/runs/snips-minilm-cls-e1/checkpoint-best --duration 20s --levels "1 32" --inprocess-seconds 3 --out /tmp/ab/old-$round --record "" > /tmp/ab-old-$round.log 2>&1)
  (cd /work/main && timeout 300 .venv/bin/python -m benchmarks.serving runs/snips-minilm-cls-e1/checkpoint-best --duration 20s --levels 1 32 --inprocess-seconds 3 --out /tmp/ab/new-$round --record "" > /tmp/ab-new-$round.log 2>&1)
done
echo done > /tmp/ab.done
