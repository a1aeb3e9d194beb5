"""DaliData: training batches from a JPEG cache, decoded by NVIDIA DALI (`data.backend=dali`).

The plan of every view (which stored copy, the crop box, the flip) is CacheDataset.plan's,
drawn from the same per-image seeds, so DALI sees the same crops of the same images in the same
order as the PIL workers; only the decoding and resizing run elsewhere. On a GPU, DALI's "mixed"
decoder does the JPEG work on the device (nvJPEG; the hardware decoder where the GPU has one),
decoding only the crop, and the resize and flip run on the device too; without a GPU the same
pipeline runs on DALI's CPU operators (that is how the tests check it). The Python side only
slices the memory-mapped records and hands DALI bytes, crop boxes, sizes and flips.

The position, the sampler and the checkpoint state are WorkerStream's; evaluation reuses
CacheData's PIL workers (not charged to the budget). A record DALI fails to decode does not stop
training: that batch is made by the PIL path (which counts and replaces unreadable images) and a
fresh pipeline carries on with the batches already queued. A failure on a batch whose images
all decode is DALI's own (memory, driver): it stops the run rather than quietly continuing at
PIL speed; the run resumes with either backend.
"""
from __future__ import annotations

import itertools
from collections import deque

import numpy as np
import torch

from ..config import ConfigError
from .cache_loader import CacheData


def require_dali():
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as e:
        raise ConfigError("data.backend=dali needs NVIDIA DALI: pip install "
                          "nvidia-dali-cuda120 (or -cuda130 for CUDA 13), or use "
                          "data.backend=pil") from e


def dali_inputs(dataset, keys) -> list[list[np.ndarray]]:
    """Per-sample inputs for the pipeline: [record bytes], [crop x, y], [crop w, h],
    [output w, h], [flip], [label]."""
    columns = [[] for _ in range(6)]
    for idx, size, epoch in keys:
        level, (x, y, w, h), flip = dataset.plan(idx, size, dataset.rng(idx, epoch))
        record = np.frombuffer(dataset.split.record(idx, level), dtype=np.uint8)
        for col, value in zip(columns, (record, np.array([x, y], np.float32),
                                        np.array([w, h], np.float32),
                                        np.array([size, size], np.float32),
                                        np.array(int(flip), np.int32),
                                        np.array(dataset.split.labels[idx], np.int64))):
            col.append(value)
    return columns


QUEUE_DEPTH = 2  # batches DALI prepares ahead of the trainer


def build_pipeline(feed, batch_size: int, threads: int, device_id: int | None):
    """decode the crop -> resize (linear, antialiased, as PIL's bilinear) -> flip -> CHW."""
    from nvidia.dali import Pipeline, fn, types
    pipe = Pipeline(batch_size=batch_size, num_threads=threads, device_id=device_id,
                    prefetch_queue_depth=QUEUE_DEPTH)
    with pipe:
        jpegs, anchor, shape, size, flip, labels = fn.external_source(
            source=feed, num_outputs=6, batch=True,
            dtype=[types.UINT8, types.FLOAT, types.FLOAT, types.FLOAT, types.INT32,
                   types.INT64])
        images = fn.decoders.image_slice(jpegs, anchor, shape, normalized_anchor=False,
                                         normalized_shape=False, output_type=types.RGB,
                                         device="cpu" if device_id is None else "mixed")
        images = fn.resize(images, size=size, interp_type=types.INTERP_LINEAR, antialias=True)
        images = fn.flip(images, horizontal=flip)
        pipe.set_outputs(fn.transpose(images, perm=[2, 0, 1]), labels)
    pipe.build()
    return pipe


def to_torch(dali_batch, device) -> torch.Tensor:
    """One DALI output batch as a torch tensor on `device`, ordered on torch's current stream.
    An output DALI keeps on the CPU (the labels) can only be copied into host memory: it is
    filled there (pinned when bound for a GPU), then moved."""
    from nvidia.dali.backend import TensorGPU
    from nvidia.dali.plugin import pytorch as dali_torch
    device = torch.device(device)
    t = dali_batch.as_tensor()
    on_gpu = isinstance(t, TensorGPU)
    out = torch.empty(t.shape(), dtype=dali_torch.to_torch_type[t.dtype],
                      device=device if on_gpu else "cpu",
                      pin_memory=not on_gpu and device.type == "cuda")
    stream = torch.cuda.current_stream(device) if on_gpu else None
    dali_torch.feed_ndarray(t, out, cuda_stream=stream)
    return out.to(device, non_blocking=True)


class DaliData(CacheData):
    prefetch_batches = QUEUE_DEPTH

    def __init__(self, root: str, **kw):
        require_dali()
        super().__init__(root, **kw)
        if self.train_split.encoding != "jpeg":
            raise ConfigError(f"data.backend=dali decodes JPEG caches; {root} is stored as "
                              f"{self.train_split.encoding}: use data.backend=pil, or prepare "
                              f"it again with --format jpeg")
        device = torch.device(self.device)
        self.device_id = (device.index or 0) if device.type == "cuda" else None

    def make_loader(self):
        return self._batches(iter(self.sampler()))

    def _batches(self, keys):
        """Endless (x, y, bad) batches for the batch keys `keys` yields, in order."""
        queued = deque()  # keys handed to DALI whose images have not come out yet

        def feed():  # DALI calls this ahead of run() to fill its prefetch queue
            batch = next(keys)
            queued.append(batch)
            return dali_inputs(self.dataset, batch)

        def start():
            return build_pipeline(feed, self.local_batch, max(self.workers, 1), self.device_id)

        pipe = start()
        while True:
            try:
                images, labels = pipe.run()
            except Exception as e:  # a damaged record? PIL makes this batch, replacing it
                failed = queued.popleft()
                keys = itertools.chain(list(queued), keys)
                queued.clear()
                x, y, bad = self.dataset.batch(failed)
                if not bad.any():  # every image decodes: the fault is DALI's, not the data's
                    raise RuntimeError(f"DALI failed on a batch of readable images ({e}); "
                                       f"resume with --set data.backend=pil (same stream)") from e
                yield x, y, bad
                pipe = start()
                continue
            queued.popleft()
            yield (to_torch(images, self.device), to_torch(labels, self.device),
                   torch.zeros(self.local_batch, dtype=torch.long))
