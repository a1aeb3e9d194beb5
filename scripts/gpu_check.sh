#!/usr/bin/env bash
# Every GPU check of budgetvit in one run, for a lent GPU machine with PyTorch (and timm,
# pytest) already installed and no network; meant to take under 8 minutes on one H200 (not
# yet run on one).
#
#   bash scripts/gpu_check.sh [LOG_DIR]
#
# Fashion-MNIST: /usr/share/datasets/fashion-mnist, or set BUDGETVIT_FMNIST_DIR to a copy of
# its four .gz files carried along. Full logs go to LOG_DIR (default: $OUT or ./gpu_logs);
# a short table is printed last (scripts/gpu_summary.py, which also reads the logs of a check
# cut short; the steps run in order of importance: the speed table, the 2-minute training, the
# CUDA tests, the compile variants). SPEED_ARGS, SIZES, SMALL, LARGE and TRAIN_BUDGET shrink the
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

echo "== 1/4 speed table (ours: blocks compiled; timm eager; bf16)"
SPEED=${SPEED_ARGS:---model vit_s16_local --batch-size 256 --steps 10 --repeats 3}
timeout 240 $PY -m budgetvit speed --compare-timm ${SIZES:---sizes 64,96,128,160,192,224} $SPEED \
  > "$LOG/speed.txt" 2>&1
echo "== 2/4 fmnist training, 2-minute budget"
timeout 270 $PY -m budgetvit train --budget "${TRAIN_BUDGET:-2m}" --out "$RUN/fmnist" \
  > "$LOG/train.txt" 2>&1
cp "$RUN/fmnist/summary.json" "$LOG/fmnist_summary.json" 2>/dev/null
echo "== 3/4 CUDA tests"
timeout 240 $PY -m pytest -q -m cuda tests/test_cuda.py tests/test_cache.py -p no:cacheprovider \
  > "$LOG/cuda_tests.txt" 2>&1
echo "== 4/4 compile variants: CUDA graphs at the smallest size, whole-model at the largest"
timeout 100 $PY -m budgetvit speed ${SMALL:---sizes 64} $SPEED --compile-mode reduce-overhead \
  > "$LOG/speed_cudagraphs.txt" 2>&1
timeout 100 $PY -m budgetvit speed ${LARGE:---sizes 224} $SPEED --compile-scope model \
  > "$LOG/speed_model_scope.txt" 2>&1

$PY scripts/gpu_summary.py "$LOG"
