#!/usr/bin/env bash
# Every GPU check of budgetvit in one run, for a lent GPU machine with PyTorch (and timm,
# pytest) already installed and no network (not yet run on one).
#
#   bash scripts/gpu_check.sh [LOG_DIR]
#
# The steps run in order under one deadline (DEADLINE_S, default 540 s, inside a 600 s call):
# the compile warm-up of the imagenet preset's 7 sizes (cold compile caches, which the speed
# table then reuses), the speed table, the CUDA tests, a 2-minute fmnist training (shorter if
# less than 250 s are left; skipped without Fashion-MNIST), the compile variants. Each gets
# what is left of its own cap and of the deadline; a step with under 20 s left is skipped and
# said so. The short table (scripts/gpu_summary.py, which reads the logs of a check cut short
# too) is printed however the script ends. Full logs go to LOG_DIR (default: $OUT or ./gpu_logs),
# 8 files at most. Without a C compiler or Python's headers (torch.compile's Triton needs
# both), or where a small compile tried first fails, the warm-up, speed and training steps run
# eager, the CUDA tests marked `compile` are deselected and the compile variants skipped;
# COMPILE=off forces that. The speed table times 224 px first: the targets are there.
#
# Fashion-MNIST: $BUDGETVIT_FMNIST_DIR, else a copy carried in .fmnist/ (its four .gz files),
# else /usr/share/datasets/fashion-mnist. A dry run on a CPU machine:
#   REQUIRE_CUDA=0 DEVICE=cpu SPEED_ARGS="--model vit_micro4 --steps 1 --repeats 1" \
#   SIZES="--sizes 16,28" SMALL="--sizes 16" LARGE="--sizes 28" TRAIN_S=20 \
#   WARMUP_ARGS="--set model.name=vit_micro4_local train.batch_size=32 curriculum.start_size_px=16 curriculum.step_px=4 curriculum.final_size_px=24" \
#   bash scripts/gpu_check.sh /tmp/gpu_dry
set -uo pipefail
LOG=$(realpath -m "${1:-${OUT:-gpu_logs}}")  # (where the caller is, before the cd)
cd "$(dirname "$0")/.."
mkdir -p "$LOG"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
PY=${PYTHON:-python3}
RUN=$(mktemp -d)
END=$((SECONDS + ${DEADLINE_S:-540}))
trap '$PY scripts/gpu_summary.py "$LOG"; rm -rf "$RUN"' EXIT
exec 3>&1  # the terminal: a step's own output goes to its log file

step() {  # step CAP_S NAME COMMAND...: run for at most min(CAP_S, time left); logs its end
  local cap=$1 name=$2 left=$((END - SECONDS)); shift 2
  local limit=$((left < cap ? left : cap)) start=$SECONDS
  if ((limit < 20)); then
    echo "step $name: skipped, ${left}s left" | tee -a "$LOG/check.txt" >&3; return
  fi
  echo "== $name (at most ${limit}s)" >&3
  # SIGINT first, so that pytest prints its summary and Python a traceback (GNU timeout gives
  # its command SIGINT's default handling, even in a background job); KILL 15 s later.
  timeout -s INT -k 15 "$limit" "$@"
  echo "step $name: exit $?, $((SECONDS - start))s of ${limit}s" | tee -a "$LOG/check.txt" >&3
}

# torch.compile's Triton builds its launcher with a C compiler ($CC, else gcc, else clang, as
# Triton looks for one) and Python's headers.
if [ -n "${CC:-}" ]; then CC_FOUND=$(command -v "$CC"); else
  CC_FOUND=$(command -v gcc || command -v clang); fi
HEADERS=$($PY -c "import os, sysconfig; h = os.path.join(sysconfig.get_paths()['include'],
'Python.h'); print(h if os.path.exists(h) else '')")
COMPILE=${COMPILE:-auto}
[ -n "$CC_FOUND" ] && [ -n "$HEADERS" ] || COMPILE=off
for dir in "${BUDGETVIT_FMNIST_DIR:-}" "$PWD/.fmnist" /usr/share/datasets/fashion-mnist; do
  if [ -n "$dir" ] && compgen -G "$dir/train-images-idx3-ubyte*" > /dev/null; then  # (.gz or not)
    export BUDGETVIT_FMNIST_DIR=$dir; break
  fi
done
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  # (one Python start for the versions and the GPU: importing them takes seconds)
  $PY -c "import torch, torchvision, timm; print('torch', torch.__version__, 'cuda',
torch.version.cuda, 'torchvision', torchvision.__version__, 'timm', timm.__version__, 'GPU',
torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
  echo "C compiler: ${CC_FOUND:-MISSING}"
  echo "Python.h: ${HEADERS:-MISSING}"
  date -u
  echo "fashion-mnist: ${BUDGETVIT_FMNIST_DIR:-MISSING: no training, CUDA tests skip}"
} > "$LOG/check.txt" 2>&1
GPU=$(sed -n 's/^torch .* GPU //p' "$LOG/check.txt")  # (empty where an import failed)
if [ "${REQUIRE_CUDA:-1}" = 1 ] && [ "${GPU:-None}" = None ]; then
  if [ -n "$GPU" ]; then why="no CUDA GPU visible to PyTorch"
  else why="torch, torchvision or timm does not import (check.txt)"; fi
  echo "$why: stopping before any work" | tee -a "$LOG/check.txt"
  exit 1
fi
DEV=${DEVICE:-cuda}
# A small compile first (scripts/compile_probe.py): where torch.compile fails, even with
# TRITON_LIBCUDA_PATH set to the driver library's folder, the steps run eager, not fail.
if [ "$COMPILE" != off ]; then
  step 150 "0/5 compile probe on $DEV" $PY scripts/compile_probe.py "$DEV" > "$RUN/probe.txt" 2>&1
  PROBE=$(tail -n 1 "$RUN/probe.txt" 2>/dev/null)
  echo "compile probe: ${PROBE:-no answer}" >> "$LOG/check.txt"
  case $PROBE in
    "compile works with TRITON_LIBCUDA_PATH="*) export TRITON_LIBCUDA_PATH=${PROBE#*=} ;;
    "compile fails: "*) COMPILE=off ;;
  esac
fi
if [ "$COMPILE" = off ]; then  # slower, but measured rather than failed
  echo "compile off: warm-up, speed and training run eager; no compile tests or variants" |
    tee -a "$LOG/check.txt"
fi

# One compile cache for every step, empty at the start: step 1 measures the warm-up a first
# run meets, and step 2's model (the same blocks: vit_s16_local, drop path 0.1, batch 1024)
# then compiles from what step 1 left, so the table's warm-up column is not a cold one.
export TORCHINDUCTOR_CACHE_DIR="$RUN/inductor_cache"
# The preset's warm-up: every size of the paper rule compiled and timed at batch 1024 on
# synthetic images, then 10 s of training.
step 200 "1/5 imagenet-1gpu-24h warm-up, cold" \
  $PY -m budgetvit train --preset imagenet-1gpu-24h --budget 10s --out "$RUN/warmup" \
  --set data.dataset=synthetic data.synthetic_classes=1000 train.device="$DEV" \
  train.compile=$COMPILE checkpoint.every_s=0 ${WARMUP_ARGS:-} > "$LOG/warmup.txt" 2>&1
cp "$RUN/warmup/summary.json" "$LOG/warmup_summary.json" 2>/dev/null
# The imagenet preset's batch (at 256 the small sizes would time the host's kernel launches)
# and drop path, on both sides.
PRESET_SHAPE="--model vit_s16_local --batch-size 1024 --drop-path 0.1"
SPEED=(--device "$DEV" --compile $COMPILE ${SPEED_ARGS:-$PRESET_SHAPE --steps 5 --repeats 3})
step 170 "2/5 speed table (ours: compile $COMPILE; timm eager; bf16)" \
  $PY -m budgetvit speed --compare-timm ${SIZES:---sizes 224,64,96,128,160,192} "${SPEED[@]}" \
  > "$LOG/speed.txt" 2>&1
TESTS=cuda
[ "$COMPILE" = off ] && TESTS="cuda and not compile"
step 150 "3/5 CUDA tests ($TESTS)" \
  $PY -m pytest -q -rs -m "$TESTS" tests/test_cuda.py tests/test_dali.py -p no:cacheprovider \
  > "$LOG/cuda_tests.txt" 2>&1
# 2 minutes of training (less if the steps before ran long: a cut run leaves no summary.json),
# plus the warm-up that compiles its 4 sizes, start-up and two final evaluations.
want_s=${TRAIN_S:-120}
[[ $want_s =~ ^[0-9]+$ ]] || { echo "TRAIN_S=$want_s: give whole seconds" >&2; want_s=120; }
train_s=$((END - SECONDS - 130 < want_s ? END - SECONDS - 130 : want_s))
if [ -z "${BUDGETVIT_FMNIST_DIR:-}" ]; then  # (no network: a download would only hang)
  echo "step 4/5 fmnist training: skipped, no Fashion-MNIST" | tee -a "$LOG/check.txt"
elif ((train_s < 20)); then
  echo "step 4/5 fmnist training: skipped, $((END - SECONDS))s left, 150s needed" |
    tee -a "$LOG/check.txt"
else
  step $((train_s + 130)) "4/5 fmnist training, ${train_s}s budget" \
    $PY -m budgetvit train --budget "${train_s}s" --out "$RUN/fmnist" \
    --set train.device="$DEV" train.compile=$COMPILE > "$LOG/train.txt" 2>&1
  cp "$RUN/fmnist/summary.json" "$LOG/fmnist_summary.json" 2>/dev/null
  cp "$RUN/fmnist/log.jsonl" "$LOG/fmnist_log.jsonl" 2>/dev/null
fi
[ "$COMPILE" = off ] && exit 0  # (the variants are compile settings)
# Both variants append to speed.txt: each table starts with its own "device ..." line.
step 60 "5/5 CUDA graphs at the smallest size" \
  $PY -m budgetvit speed ${SMALL:---sizes 64} "${SPEED[@]}" --compile-mode reduce-overhead \
  >> "$LOG/speed.txt" 2>&1
step 120 "5/5 whole-model compile at the largest size" \
  $PY -m budgetvit speed ${LARGE:---sizes 224} "${SPEED[@]}" --compile-scope model \
  >> "$LOG/speed.txt" 2>&1
