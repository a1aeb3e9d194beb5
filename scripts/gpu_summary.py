"""The short table of scripts/gpu_check.sh, from the logs it wrote; run it on its own on a
log folder that came back from a cut-short check: python scripts/gpu_summary.py LOG_DIR.
Whatever a step did not write is said to be missing, never left out silently."""
import json
import pathlib
import re
import statistics
import sys

log = pathlib.Path(sys.argv[1])


def lines(name: str) -> list[str]:
    """The lines of a log file; none where the check was cut short before writing it."""
    path = log / name
    return path.read_text().strip().splitlines() if path.exists() else []


def summary(name: str) -> dict | None:
    try:
        return json.loads((log / name).read_text())
    except (OSError, ValueError):
        return None


def row(label: str, text: str) -> None:
    print(f"{label:<32} {text}")


def speed_tables() -> tuple[list[tuple[str, dict, str]], str]:
    """[(header, {size: [size, img/s, MFU, mem, warm-up(, timm img/s, ratio)]}, last line)],
    one per `speed` run in speed.txt (each begins with its "device ..." line); and the last
    line before the first header (a library's warning, or the error that stopped step 2 before
    it printed one), which opens no table."""
    tables, before = [], ""
    for line in lines("speed.txt"):
        parts = line.split()
        if line.startswith("device "):
            tables.append((line, {}, line))
        elif not tables:
            before = line
            continue
        elif parts and parts[0].isdigit():
            tables[-1][1][int(parts[0])] = parts
        tables[-1] = (*tables[-1][:2], line)
    return tables, before


check = lines("check.txt")
print("\n== budgetvit GPU check:", check[0] if check else "no check.txt")
for line in check[1:]:
    print("  ", line)

# Step 5's compile variants append to speed.txt: the main table is the first that is not one
# of them (none where step 2 was skipped); the others are compared with it.
variant = re.compile(r"compile on \((model|.*reduce-overhead)")
tables, before = speed_tables()
main = next((t for t in tables if not variant.search(t[0])), None)
rows = main[1] if main else {}
if not rows:
    row("speed table", f"MISSING; last line: {main[2] if main else before or 'no speed table'}")
else:
    row("speed table", main[0])
    for size, r in sorted(rows.items()):
        timm = f"; timm {r[5]} img/s, ratio {r[6]}" if len(r) > 6 else ""
        row(f"  {size} px", f"{r[1]} img/s, MFU {r[2]}, {r[3]} GiB, warm-up {r[4]} s{timm}")
    small, large = min(rows), max(rows)
    if small != large:
        row(f"  {small} px / {large} px",
            f"{float(rows[small][1]) / float(rows[large][1]):.2f}x")
for header, table, last in (t for t in tables if t is not main):
    how = re.search(r"compile (?:on \((.*?)\)|off)", header)
    if not table:
        row(f"  {how and how[1] or 'variant'}", f"MISSING; last line: {last}")
    for size, r in table.items():
        base = f" (default: {rows[size][1]} img/s)" if size in rows else " (no default row)"
        row(f"  {size} px, {how and how[1] or 'no compile'}",
            f"{r[1]} img/s, MFU {r[2]}, warm-up {r[4]} s{base}")

tests = lines("cuda_tests.txt")
result = next((t for t in reversed(tests) if " in " in t
               and any(w in t for w in ("passed", "failed", "skipped", "error"))), None)
row("CUDA tests", result or f"NO RESULT LINE; last line: {tests[-1] if tests else 'no log'}")
for t in tests:
    if t.startswith(("SKIPPED", "FAILED", "ERROR")):
        row("", t[:120])

s = summary("fmnist_summary.json")
if s is None:
    row("fmnist run", "NO summary.json; see check.txt and train.txt")
else:
    overrun = f", overrun {s['overrun_s']:+.2f}s" if s.get("overrun_s") is not None else ""
    budget = f"{s['budget_s']:g}s budget, " if s.get("budget_s") else ""
    row("fmnist run", f"{budget}top-1 {s['top1']:.2f}%, trained {s['train_time_s']:.1f}s{overrun}, "
        f"warm-up {s['warmup_time_s']:.1f}s, {s['images_seen']} images, "
        f"sizes {[st['img_size'] for st in s['stages']]}, on {s['device']}")
    mfus = [r["mfu"] for r in map(json.loads, lines("fmnist_log.jsonl")) if "mfu" in r]
    row("  MFU in its log.jsonl", f"median {100 * statistics.median(mfus):.1f}% of "
        f"{len(mfus)} records" if mfus else "none (unknown GPU or no log)")

w = summary("warmup_summary.json")
# "warm-up 64px: compiled and ran 4 steps in 21.3s (not charged)", one line per size
done = [t.split() for t in lines("warmup.txt") if t.startswith("warm-up ")]
sizes = [d[1][:-1] for d in done]
if w is not None:
    row("imagenet preset warm-up", f"{w['warmup_time_s']:.1f}s for {', '.join(sizes) or '?'} "
        f"(cold caches; target <= 180s), batch {w['config']['train']['batch_size']}")
elif done:  # cut short: what the sizes that finished took
    took = sum(float(d[-3][:-1]) for d in done)
    row("imagenet preset warm-up", f"CUT SHORT after {', '.join(sizes)}: {took:.1f}s for "
        f"those (cold caches; target <= 180s for all 7); see warmup.txt")
else:
    row("imagenet preset warm-up", "MISSING; see warmup.txt")
