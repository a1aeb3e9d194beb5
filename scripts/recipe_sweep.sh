#!/usr/bin/env bash
# Tune the fmnist recipe without touching the test split: each arm is the default
# `budgetvit train` (5 minutes) plus BASE and the arm's --set overrides, trained on 54,000
# training images and scored on the other 6,000 (data.holdout=0.1). Prints top-1 per arm.
#   bash scripts/recipe_sweep.sh [OUT_DIR] [SEEDS]   (default runs/recipe-sweep, "0")
# A finished run is kept and an interrupted one resumes, so rerunning only fills the gaps.
# Runs go one after the other: two at once would share the CPU and each train fewer images.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/recipe-sweep}
SEEDS=${2:-0}
BV=${BUDGETVIT:-.venv/bin/budgetvit}
# The sweep of 2026-11-29 started from the preset of then, whose FFN was 4x wide; BASE keeps
# that starting point, and an arm's own overrides come after it (the last one wins).
BASE="model.mlp_ratio=4"
ARMS=(  # name: overrides ("-" for none)
  "base: -"
  "lr-linear: optim.decay=linear"
  "lr-3e-3: optim.lr=3e-3"
  "wd-0.1: optim.weight_decay=0.1"
  "warmup-0.02: optim.warmup=0.02"
  "ema-0.995: train.ema_decay=0.995"
  "mlp-2: model.mlp_ratio=2"
  "depth-6: model.depth=6"
  "mlp-1: model.mlp_ratio=1"
  "mlp-2-linear: model.mlp_ratio=2 optim.decay=linear"
)
for seed in $SEEDS; do
  for arm in "${ARMS[@]}"; do
    name=${arm%%:*}; sets=${arm#*: }; [ "$sets" = "-" ] && sets=""
    dir="$OUT/$name/seed$seed"
    [ -f "$dir/summary.json" ] && continue
    mkdir -p "$dir"
    # shellcheck disable=SC2086  # the overrides are separate words on purpose
    "$BV" train --out "$dir" --set data.holdout=0.1 train.seed=$seed $BASE $sets > "$dir.log" 2>&1
  done
done
.venv/bin/python - "$OUT" <<'PY'
import json, pathlib, statistics, sys
out = pathlib.Path(sys.argv[1])
runs = sorted(out.glob("*/seed*/summary.json"))
if not runs:
    sys.exit("no finished runs")
first = json.loads(runs[0].read_text())
print(f"Machine: {first['device']}, torch {first['torch']}, code {first['code_version']}\n")
print("| arm | top-1 per seed | mean | EMA top-1 mean | images mean |\n| --- | --- | --- | --- | --- |")
for arm in sorted({p.parent.parent.name for p in runs}):
    s = [json.loads(p.read_text()) for p in sorted((out / arm).glob("seed*/summary.json"))]
    top = [r["top1"] for r in s]
    print(f"| {arm} | {' / '.join(f'{t:.2f}' for t in top)} | {statistics.mean(top):.2f} | "
          f"{statistics.mean(r['top1_ema'] for r in s):.2f} | "
          f"{statistics.mean(r['images_seen'] for r in s):,.0f} |")
PY
