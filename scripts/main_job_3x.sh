#!/usr/bin/env bash
# The README's main-job figure: the default `budgetvit train` (fmnist, 5 minutes) three times,
# seeds 0, 1, 2, then min / median / max of top-1 and of the training time.
#   bash scripts/main_job_3x.sh [OUT_DIR]      (default runs/main-job)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/main-job}
BV=${BUDGETVIT:-.venv/bin/budgetvit}
mkdir -p "$OUT"
for seed in 0 1 2; do  # a finished run is kept; an interrupted one resumes
  [ -f "$OUT/seed$seed/summary.json" ] ||
    "$BV" train --out "$OUT/seed$seed" --set train.seed=$seed > "$OUT/seed$seed.log" 2>&1
  # Ctrl-C checkpoints and exits 0: stop here rather than start the next seed.
  [ -f "$OUT/seed$seed/summary.json" ] ||
    { echo "seed $seed interrupted; rerun the same command to resume" >&2; exit 130; }
done
.venv/bin/python - "$OUT" <<'PY'
import json, platform, statistics, sys, pathlib
runs = [json.loads((pathlib.Path(sys.argv[1]) / f"seed{k}" / "summary.json").read_text())
        for k in range(3)]
def row(name, key, fmt):
    v = sorted(r[key] for r in runs)
    print(f"| {name} | {fmt.format(v[0])} | {fmt.format(statistics.median(v))} | {fmt.format(v[-1])} |")
print(f"Machine: {runs[0]['device']}, torch {runs[0]['torch']}, code {runs[0]['code_version']}\n")
print("| 3 runs, seeds 0-2 | min | median | max |\n| --- | --- | --- | --- |")
row("top-1 (%)", "top1", "{:.2f}")
row("EMA top-1 (%)", "top1_ema", "{:.2f}")
row("training time (s)", "train_time_s", "{:.2f}")
row("overrun (s)", "overrun_s", "{:+.2f}")
row("images seen", "images_seen", "{:,}")
row("epochs", "epochs", "{:.2f}")
print("\nstages (px: images) of seed 0:", ", ".join(f"{s['img_size']}: {s['images']}" for s in runs[0]["stages"]))
PY
