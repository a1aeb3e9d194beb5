#!/usr/bin/env bash
# Every GPU check of budgetvit in one run, for a lent GPU machine with PyTorch (and timm,
# pytest) already installed and no network; meant to take under 8 minutes on one H200 (not
# yet run on one).
#
#   bash scripts/gpu_check.sh [LOG_DIR]
#
# Fashion-MNIST: /usr/share/datasets/fashion-mnist, or set BUDGETVIT_FMNIST_DIR to a copy of
# its four .gz files carried along. Full logs go to LOG_DIR (default: $OUT or ./gpu_logs);
# a short table is printed last. SPEED_ARGS, SIZES, SMALL, LARGE and TRAIN_BUDGET shrink the
# work for a dry run on a CPU machine, e.g. SPEED_ARGS="--model vit_micro4 --steps 1
# --repeats 1" SIZES="--sizes 16,28" SMALL="--sizes 16" LARGE="--sizes 28" TRAIN_BUDGET=20s.
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

echo "== 1/4 CUDA tests"
timeout 180 $PY -m pytest -q -m cuda tests/test_cuda.py tests/test_cache.py -p no:cacheprovider \
  > "$LOG/cuda_tests.txt" 2>&1
echo "== 2/4 speed table (ours: blocks compiled; timm eager; bf16)"
SPEED=${SPEED_ARGS:---model vit_s16_local --batch-size 256 --steps 10 --repeats 3}
timeout 240 $PY -m budgetvit speed --compare-timm ${SIZES:---sizes 64,96,128,160,192,224} $SPEED \
  > "$LOG/speed.txt" 2>&1
echo "== 3/4 compile variants: CUDA graphs at the smallest size, whole-model at the largest"
timeout 100 $PY -m budgetvit speed ${SMALL:---sizes 64} $SPEED --compile-mode reduce-overhead \
  > "$LOG/speed_cudagraphs.txt" 2>&1
timeout 100 $PY -m budgetvit speed ${LARGE:---sizes 224} $SPEED --compile-scope model \
  > "$LOG/speed_model_scope.txt" 2>&1
echo "== 4/4 fmnist training, 2-minute budget"
timeout 270 $PY -m budgetvit train --budget "${TRAIN_BUDGET:-2m}" --out "$RUN/fmnist" \
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


def speed_rows(name):
    """{size: [size, img/s, MFU, mem, warm-up(, timm img/s, ratio)]} of a speed output."""
    path = log / name
    lines = path.read_text().splitlines() if path.exists() else []
    return {int(p[0]): p for p in map(str.split, lines) if p and p[0].isdigit()}


rows = speed_rows("speed.txt")
for size, r in sorted(rows.items()):
    extra = f"timm {r[5]} img/s, ratio {r[6]}" if len(r) > 6 else ""
    print(f"{'speed ' + str(size) + ' px':<28} {r[1]} img/s, MFU {r[2]}, {r[3]} GiB, "
          f"warm-up {r[4]} s; {extra}")
if rows:
    small, large = min(rows), max(rows)
    print(f"{f'{small} px / {large} px throughput':<28} "
          f"{float(rows[small][1]) / float(rows[large][1]):.2f}x")
    print(f"{'warm-up of all sizes':<28} {sum(float(r[4]) for r in rows.values()):.0f} s")
for name, label in (("speed_cudagraphs.txt", "CUDA graphs"),
                    ("speed_model_scope.txt", "whole-model compile")):
    for size, r in speed_rows(name).items():
        base = f" (blocks, no graphs: {rows[size][1]} img/s, warm-up {rows[size][4]} s)" \
            if size in rows else ""
        print(f"{f'{label} {size} px':<28} {r[1]} img/s, MFU {r[2]}, warm-up {r[4]} s{base}")
try:
    s = json.loads((log / "fmnist_summary.json").read_text())
    print(f"{'fmnist 2m run':<28} top-1 {s['top1']:.2f}%, trained {s['train_time_s']:.1f}s "
          f"(overrun {s['overrun_s']:+.2f}s), warm-up {s['warmup_time_s']:.1f}s, "
          f"{s['images_seen']} images, stages {[st['img_size'] for st in s['stages']]}")
except Exception as e:
    print(f"{'fmnist 2m run':<28} FAILED: no summary.json ({e}); see train.txt")
PYEOF
