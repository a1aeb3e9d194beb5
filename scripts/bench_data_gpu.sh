#!/usr/bin/env bash
# bench-data on a GPU machine (torch and torchvision preinstalled, e.g. 16 cores + 1 GPU):
# writes the benchmark JPEG tree, prepares its cache on all cores, then times the cache loader
# against the plain torchvision ImageFolder pipeline at 64, 128 and 224 px with one worker per
# core, batches landing on the GPU; then both with RandAugment; then the DALI backend the same
# way when DALI is installed.
# Prints the markdown tables for the README; the full results go to WORK/bench-data*.json.
# Everything is reused when rerun (tree files, cache).
#
#   bash scripts/bench_data_gpu.sh [WORK]          (default WORK=/tmp/budgetvit-bench-data)
#   TRAIN=32000 VAL=1000 WORKERS=16 BATCH=256 SIZES=64,128,224 bash scripts/bench_data_gpu.sh
#   SOURCES=DIR ...   source photos when scikit-image is not installed (a copy of skimage/data)
#
# Expected time with 16 cores: tree ~2 min, prepare ~1 min, benchmark ~3 min per bench-data.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/budgetvit-bench-data}
WORKERS=${WORKERS:-$(nproc)}
TRAIN=${TRAIN:-32000}   # warm-up + timed batches (97 x 256 with 16 workers) fit one epoch
VAL=${VAL:-1000}
BATCH=${BATCH:-256}
SIZES=${SIZES:-64,128,224}
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python

missing=$($PY - <<'EOF'
import importlib.util as u
print(" ".join(m for m in ("torch", "torchvision", "PIL", "numpy", "tqdm")
               if u.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
  echo "missing Python packages: $missing (pip install -e . installs them)" >&2
  exit 2
fi
SRC_ARGS=()
if [ -n "${SOURCES:-}" ]; then
  SRC_ARGS=(--sources "$SOURCES")
elif ! $PY -c "import skimage.data" 2>/dev/null; then
  echo "scikit-image is not installed: set SOURCES to a folder of photos" \
       "(e.g. a copy of skimage/data from another machine)" >&2
  exit 2
fi

mkdir -p "$WORK"
GPU=$($PY -c 'import torch.cuda as c; print(c.get_device_name() if c.is_available() else "no GPU")')
echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, $GPU"
echo "== tree: $TRAIN + $VAL JPEGs of about 500x375 in $WORK/tree"
$PY scripts/make_jpeg_tree.py "$WORK/tree" --train "$TRAIN" --val "$VAL" --workers "$WORKERS" \
    ${SRC_ARGS[@]+"${SRC_ARGS[@]}"}
echo "== prepare (shorter side <= 256 px, JPEG q90, 3 levels)"
$PY -m budgetvit prepare --src "$WORK/tree" --dst "$WORK/cache" --workers "$WORKERS"
echo "== bench-data"
$PY -m budgetvit bench-data --src "$WORK/tree" --cache "$WORK/cache" --sizes "$SIZES" \
    --workers "$WORKERS" --batch-size "$BATCH" --repeats 2 --json "$WORK/bench-data.json"
echo "== bench-data with RandAugment, 2 ops (the imagenet presets'): torchvision per image in"
echo "   its workers, the cache loader batched on the GPU"
$PY -m budgetvit bench-data --src "$WORK/tree" --cache "$WORK/cache" --sizes "$SIZES" \
    --workers "$WORKERS" --batch-size "$BATCH" --repeats 2 --randaugment 2 \
    --json "$WORK/bench-data-randaugment.json"
if $PY -c "import nvidia.dali" 2>/dev/null; then
  echo "== bench-data, DALI backend (JPEG decoding on the GPU)"
  $PY -m budgetvit bench-data --src "$WORK/tree" --cache "$WORK/cache" --sizes "$SIZES" \
      --workers "$WORKERS" --batch-size "$BATCH" --repeats 2 --backend dali \
      --json "$WORK/bench-data-dali.json"
else
  echo "== DALI not installed (pip install nvidia-dali-cuda120): DALI backend not timed"
fi
