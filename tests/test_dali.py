"""The DALI backend of the cache (data.backend=dali): the same stream, position and resume
as the PIL workers, the PIL fallback on a damaged record, one-line errors, and what runs on the
CPU without a GPU (most of it needs `nvidia.dali`, and is skipped where it is absent)."""
import importlib.util
import sys

import numpy as np
import pytest
import torch

from budgetvit.config import AugSection, ConfigError, validate
from budgetvit.data.cache_loader import CacheData
from budgetvit.data.prepare import prepare

from .conftest import needs_fmnist, tiny_config
from .imagetree import damaged_copy

pytest.importorskip("skimage")  # the trees' photos
pytestmark = needs_fmnist

AUG = AugSection(crop_scale_min=0.35)


def dali_data(root, **kw):
    pytest.importorskip("nvidia.dali")
    from budgetvit.data.dali import DaliData
    return DaliData(str(root), **{**dict(batch_size=8, seed=3, aug=AUG, device="cpu",
                                         num_workers=2, size=32), **kw})


def test_dali_stream_is_the_cache_stream(caches):
    """Same images, crops, flips, labels and position as the PIL workers; only the decoder
    and resampler differ (DALI decodes the crop at full scale, PIL may decode at 1/2-1/8).
    Like the worker loaders, DALI keeps the size of the batches it had queued at a size change
    (its prefetch depth is 2); the unprefetched reference switches at once."""
    d = dali_data(caches[0])
    c = CacheData(str(caches[0]), batch_size=8, seed=3, aug=AUG, device="cpu", num_workers=0,
                  size=32)
    sizes = []
    for step in range(7):  # across a size change and the epoch boundary
        if step == 3:
            d.set_size(16)
            c.set_size(16)
        (xd, yd), (xc, yc) = d.next_batch(), c.next_batch()
        assert torch.equal(yd, yc) and yd.dtype == torch.long
        sizes.append(xd.shape[2])
        assert xd.shape == (8, 3, sizes[-1], sizes[-1]) and xd.dtype == torch.uint8
        if xd.shape == xc.shape:
            diff = (xd.float() - xc.float()).abs().mean().item()
            assert diff < 6, f"step {step}: mean |DALI - PIL| = {diff:.1f} grey levels"
    assert sizes[:3] == [32] * 3 and sizes[5:] == [16] * 2 and sizes == sorted(sizes)[::-1]
    assert d.state_dict() == c.state_dict() == {"epoch": 1, "batch": 2, "bad_images": 0,
                                                "num_images": 44}


def test_dali_resumes_exactly(caches):
    a = dali_data(caches[1])
    stream, state = [], None
    for step in range(8):
        if step == 3:
            state = a.state_dict()
        stream.append(a.next_batch())
    b = dali_data(caches[1])
    b.load_state_dict(state)
    for x, y in stream[3:]:
        xb, yb = b.next_batch()
        assert torch.equal(x, xb) and torch.equal(y, yb)


def test_dali_damaged_record_falls_back_to_pil(caches, tmp_path):
    dst = damaged_copy(caches[0], tmp_path / "cache", image=5)
    d = dali_data(dst, batch_size=4, size=16)
    c = CacheData(str(dst), batch_size=4, seed=3, aug=AUG, device="cpu", num_workers=0, size=16)
    for _ in range(d.batches_per_epoch + 2):  # every image, and the stream goes on after
        (xd, yd), (_, yc) = d.next_batch(), c.next_batch()
        assert xd.shape == (4, 3, 16, 16) and torch.equal(yd, yc)
    assert d.bad_images == c.bad_images == 1


def test_dali_backend_errors_name_the_fix(caches, monkeypatch):
    cfg = tiny_config("data.backend=dali")
    with pytest.raises(ConfigError, match="data.backend=dali reads a prepared cache"):
        validate(cfg)
    from budgetvit.data import dali
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # as if not installed
    with pytest.raises(ConfigError, match="pip install nvidia-dali-cuda120"):
        dali.DaliData(str(caches[0]), batch_size=8, seed=0, aug=AUG, device="cpu",
                      num_workers=0, size=32)


def test_dali_refuses_a_raw_cache(trees, tmp_path):
    raw = tmp_path / "raw"
    prepare(trees[0], raw, max_size=32, encoding="raw", levels=1, shard_size=64, progress=False)
    with pytest.raises(ConfigError, match="is stored as raw"):
        dali_data(raw)


def test_dali_outputs_kept_on_the_cpu_are_filled_in_host_memory(monkeypatch):
    """DALI copies a CPU output (the labels) only into host memory: handing it a GPU tensor
    would crash the process, so a batch bound for another device is staged on the host."""
    pytest.importorskip("nvidia.dali")
    from nvidia.dali.backend import TensorListCPU
    from nvidia.dali.plugin import pytorch as dali_torch

    from budgetvit.data.dali import to_torch
    real = dali_torch.feed_ndarray

    def host_only(t, out, cuda_stream=None):
        assert out.device.type == "cpu", f"DALI CPU output copied into {out.device} memory"
        return real(t, out, cuda_stream)

    monkeypatch.setattr(dali_torch, "feed_ndarray", host_only)
    labels = TensorListCPU(np.arange(6, dtype=np.int64))
    assert torch.equal(to_torch(labels, "cpu"), torch.arange(6))
    moved = to_torch(labels, torch.device("meta"))  # a device other than the host
    assert moved.device.type == "meta" and moved.shape == (6,)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("nvidia") is None
                    or importlib.util.find_spec("nvidia.dali") is None,
                    reason="needs a CUDA GPU and DALI")
def test_dali_decodes_on_the_gpu(caches):
    d = dali_data(caches[0], device="cuda")
    c = CacheData(str(caches[0]), batch_size=8, seed=3, aug=AUG, device="cpu", num_workers=0,
                  size=32)
    for _ in range(3):
        (xd, yd), (xc, yc) = d.next_batch(), c.next_batch()
        assert xd.is_cuda and yd.is_cuda and torch.equal(yd.cpu(), yc)
        assert (xd.cpu().float() - xc.float()).abs().mean().item() < 6


def test_dali_failure_on_readable_images_is_an_error(caches, monkeypatch):
    d = dali_data(caches[0])
    from budgetvit.data import dali

    class Broken:  # a pipeline that takes its first batch, then fails as a driver error would
        def __init__(self, feed, *args):
            self.feed = feed

        def run(self):
            self.feed()
            raise RuntimeError("CUDA error: out of memory")
    monkeypatch.setattr(dali, "build_pipeline", Broken)
    with pytest.raises(RuntimeError, match=r"DALI failed on a batch of readable images "
                                           r"\(CUDA error: out of memory\); resume with"):
        d.next_batch()
