"""The short table of scripts/gpu_check.sh, from the logs it wrote; run it on its own on a
log folder that came back from a cut-short check: python scripts/gpu_summary.py LOG_DIR."""
import json
import pathlib
import sys

log = pathlib.Path(sys.argv[1])


def lines(name: str) -> list[str]:
    """The lines of a log file; none where the check was cut short before writing it."""
    path = log / name
    return path.read_text().strip().splitlines() if path.exists() else []


env = lines("env.txt")
print("\n== budgetvit GPU check:", env[0] if env else "?")
print("  ", env[1] if len(env) > 1 else "")
tests = lines("cuda_tests.txt")
print(f"{'CUDA tests':<28} {tests[-1] if tests else 'no output'}")


def speed_rows(name):
    """{size: [size, img/s, MFU, mem, warm-up(, timm img/s, ratio)]} of a speed output."""
    return {int(p[0]): p for p in map(str.split, lines(name)) if p and p[0].isdigit()}


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
