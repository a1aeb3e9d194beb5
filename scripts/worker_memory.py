"""How much memory each DataLoader worker copies of an ImageFolder file list in one epoch: the
list of (path, label) tuples that torchvision's make_dataset gives, against budgetvit's
SampleTable (budgetvit/data/sample_table.py), for ImageNet's 1,281,167 training files (made-up
paths of ImageNet's shape; no file is opened). Linux only (it reads /proc/self/smaps_rollup).

    python scripts/worker_memory.py [--images N] [--workers W]

Each worker reads the (path, label) of every image it is given, in a shuffled order, as
FolderDataset does; it reports the growth of its private memory (pages no longer shared with
the trainer) from its first batch to its last.
"""
import argparse
import time

import torch
from torch.utils.data import DataLoader, Dataset

from budgetvit.data.sample_table import SampleTable


def private_mib() -> float:
    with open("/proc/self/smaps_rollup") as f:
        return sum(int(line.split()[1]) for line in f
                   if line.startswith(("Private_Clean", "Private_Dirty"))) / 1024


class Reader(Dataset):
    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitems__(self, indices):  # a batch at once (DataLoader's batched fetch)
        for i in indices:
            path, label = self.samples[i]
        return private_mib()  # (read per batch: the reading walks the page tables)


def growth_per_worker(samples, workers: int, batch: int) -> list[float]:
    loader = DataLoader(Reader(samples), batch_size=batch, shuffle=True, num_workers=workers,
                        multiprocessing_context="fork", collate_fn=lambda mib: mib,
                        generator=torch.Generator().manual_seed(0))
    first, last = {}, {}
    for n, mib in enumerate(loader):
        w = n % workers  # (the loader hands out batches to its workers in turn)
        first.setdefault(w, mib)
        last[w] = mib
    return [last[w] - first[w] for w in sorted(first)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1_281_167)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1024)
    args = ap.parse_args()
    # ImageNet's shape: 1,000 class folders, names like n01440764/n01440764_10026.JPEG.
    samples = [(f"/data/imagenet/train/n{1440764 + c:08d}/n{1440764 + c:08d}_{i}.JPEG", c)
               for i in range(args.images) for c in [i % 1000]]
    table = SampleTable(samples)
    size = (table.blob.nbytes + table.ends.nbytes + table.labels.nbytes) / 2**20
    print(f"{args.images:,} files, {args.workers} workers, one epoch each way; the SampleTable "
          f"takes {size:.0f} MiB in the trainer")
    for name, held in (("list of tuples", samples), ("SampleTable", table)):
        start = time.perf_counter()
        grown = growth_per_worker(held, args.workers, args.batch)
        print(f"  {name:15s} each worker's private memory grew by "
              f"{', '.join(f'{g:.0f}' for g in grown)} MiB ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
