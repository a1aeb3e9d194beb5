#!/usr/bin/env bash
# The README's speed figures on the CPU: our ViT-S/16 against timm's at 64 px, the locality
# FFN's cost at 64 and 224 px, and the trainer's overhead over a bare training loop.
set -euo pipefail
cd "$(dirname "$0")/.."
BV=${BUDGETVIT:-.venv/bin/budgetvit}
echo "## vit_s16 vs timm vit_small_patch16_224, 64 px, batch 64"
"$BV" speed --model vit_s16 --img-size 64 --batch-size 64 --compare-timm --repeats 5
echo "## locality FFN cost: plain vs local, 64 px (batch 64) and 224 px (batch 16)"
for m in vit_s16 vit_s16_local; do
  "$BV" speed --model $m --img-size 64 --batch-size 64 --repeats 5
  "$BV" speed --model $m --img-size 224 --batch-size 16 --steps 3 --repeats 3
done
echo "## trainer overhead: vit_micro4_local (4x FFN; the fmnist preset narrows it to 1x) at 28 px, batch 128"
"$BV" speed --model vit_micro4_local --img-size 28 --batch-size 128 --trainer
