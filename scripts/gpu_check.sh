#!/usr/bin/env bash
# Every GPU check of budgetvit in one run, for a lent GPU machine with PyTorch (and timm,
# pytest) already installed and no network. Under 8 minutes on one H200.
#
#   bash scripts/gpu_check.sh [LOG_DIR]
#
# Fashion-MNIST: /usr/share/datasets/fashion-mnist, or set BUDGETVIT_FMNIST_DIR to a copy of
# its four .gz files carried along. Full logs go to LOG_DIR (default: $OUT or ./gpu_logs);
# a short table is printed last. SPEED_ARGS and TRAIN_BUDGET shrink the work for a dry run on
# a CPU machine (e.g. SPEED_ARGS="--model vit_micro4 --sizes 16,28 --steps 1 --repeats 1").
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${1:-${OUT:-gpu_logs}}
mkdir -p "$LOG"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
RUN=$(mktemp -d)

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  date -u; } > "$LOG/env.txt" 2>&1

echo "== 1/3 CUDA tests"
timeout 200 $PY -m pytest -q -m cuda tests/test_cuda.py tests/test_cache.py -p no:cacheprovider \
  > "$LOG/cuda_tests.txt" 2>&1
echo "== 2/3 speed table (ours compiled vs timm eager, bf16)"
timeout 240 $PY -m budgetvit speed --compare-timm \
  ${SPEED_ARGS:---model vit_s16_local --sizes 64,96,128,160,192,224 --batch-size 256 --steps 10 --repeats 3} \
  > "$LOG/speed.txt" 2>&1
echo "== 3/3 fmnist training, 2-minute budget"
timeout 300 $PY -m budgetvit train --budget "${TRAIN_BUDGET:-2m}" --out "$RUN/fmnist" \
  > "$LOG/train.txt" 2>&1
cp "$RUN/fmnist/summary.json" "$LOG/fmnist_summary.json" 2>/dev/null

$PY - "$LOG" <<'PYEOF'
import json, pathlib, re, sys
log = pathlib.Path(sys.argv[1])
env = (log / "env.txt").read_text().splitlines()
print("\n== budgetvit GPU check:", env[0] if env else "?")
print("  ", env[1] if len(env) > 1 else "")
tests = (log / "cuda_tests.txt").read_text().strip().splitlines()
print(f"{'CUDA tests':<28} {tests[-1] if tests else 'no output'}")
rows = {}
for line in (log / "speed.txt").read_text().splitlines():
    parts = line.split()
    if parts and parts[0].isdigit():
        rows[int(parts[0])] = parts
for size, r in sorted(rows.items()):
    extra = f"timm {r[5]} img/s, ratio {r[6]}" if len(r) > 6 else ""
    print(f"{'speed ' + str(size) + ' px':<28} {r[1]} img/s, MFU {r[2]}, {r[3]} GiB, "
          f"warm-up {r[4]} s; {extra}")
if 64 in rows and 224 in rows:
    print(f"{'64 px / 224 px throughput':<28} {float(rows[64][1]) / float(rows[224][1]):.2f}x")
    print(f"{'warm-up of all sizes':<28} {sum(float(r[4]) for r in rows.values()):.0f} s")
try:
    s = json.loads((log / "fmnist_summary.json").read_text())
    print(f"{'fmnist 2m run':<28} top-1 {s['top1']:.2f}%, trained {s['train_time_s']:.1f}s "
          f"(overrun {s['overrun_s']:+.2f}s), warm-up {s['warmup_time_s']:.1f}s, "
          f"{s['images_seen']} images, stages {[st['img_size'] for st in s['stages']]}")
except Exception as e:
    print(f"{'fmnist 2m run':<28} FAILED: no summary.json ({e}); see train.txt")
PYEOF
