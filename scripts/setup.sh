#!/usr/bin/env bash
# One-time (idempotent) setup on a fresh machine: the Fashion-MNIST Debian package, a virtual
# environment in .venv (or $VENV), PyTorch, and budgetvit with its test extras. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY=$VENV/bin/python
$PY -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! $PY -c "import torch, torchvision" 2>/dev/null; then
  # This pair is served from the machine's disk; override TORCH_SPEC elsewhere.
  $PY -m pip install -q ${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
fi
$PY -m pip install -q -e ".[dev]"
