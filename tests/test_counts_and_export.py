"""FLOP counts against torch's FlopCounterMode, the info command, and safetensors export."""
import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from budgetvit.cli import main
from budgetvit.export import load_weights, save_weights
from budgetvit.models import (VisionTransformer, count_params, create_model, forward_flops,
                              train_flops)


@pytest.mark.parametrize("name", ["vit_ti16", "vit_ti16_local", "vit_micro4_local"])
@pytest.mark.parametrize("size", [32, 64, (64, 96)])
def test_forward_flops_match_torch_flop_counter(name, size):
    model = create_model(name, depth=2, num_classes=10)
    h, w = (size, size) if isinstance(size, int) else size
    # The math SDPA backend runs attention as matmuls, which the counter sees (the fused CPU
    # kernel is invisible to it).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, h, w))
    assert forward_flops(model.cfg, (h, w)) == counter.get_total_flops()


@pytest.mark.parametrize("size", [32, (64, 96)])
def test_train_flops_match_torch_flop_counter_over_forward_and_backward(size):
    """Three forwards but for the patch embedding's input gradient, which the image does not
    need. (A plain FFN: the counter takes a depthwise conv's backward for a dense one's.)"""
    model = create_model("vit_ti16", depth=2, num_classes=10)
    h, w = (size, size) if isinstance(size, int) else size
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(torch.randn(2, 3, h, w)).sum().backward()
    assert 2 * train_flops(model.cfg, (h, w)) == counter.get_total_flops()
    cfg = create_model("vit_s16").cfg
    assert 9.0e9 < forward_flops(cfg, 224) < 9.4e9  # ViT-S/16 at 224: ~4.6 GMACs


def test_info_prints_counts_at_every_size(capsys):
    assert main(["info", "--model", "vit_s16_local"]) == 0
    out = capsys.readouterr().out
    assert "22,193,512" in out and "the same shape plain: 22,050,664" in out
    for size in (32, 64, 96, 128, 160, 192, 224):
        assert f"\n{size:>6} " in out
    gflops_224 = float(out.strip().splitlines()[-1].split()[-1])
    assert gflops_224 == pytest.approx(forward_flops(create_model("vit_s16_local").cfg, 224) / 1e9,
                                       abs=1e-3)


def test_info_on_a_preset_counts_the_model_it_trains(capsys):
    """The fmnist preset's model: vit_micro4_local with a 1x FFN, 10 classes, grey images, at
    its curriculum sizes (the bare name would count a 4x FFN with 1000 classes)."""
    from budgetvit.config import model_shape
    from budgetvit.presets import get_preset
    assert main(["info", "--preset", "fmnist"]) == 0
    out = capsys.readouterr().out
    trained = count_params(VisionTransformer(model_shape(get_preset("fmnist"), 10, 1)))
    assert f"params: {trained:,}  " in out and "ffn local x1" in out
    assert "10 classes, 1 channel\n" in out
    assert [int(line.split()[0]) for line in out.splitlines()[3:]] == [16, 20, 24, 28]


def test_safetensors_roundtrip(tmp_path):
    model = create_model("vit_micro4_local", num_classes=10, in_chans=1).eval()
    save_weights(model, tmp_path / "w.safetensors")
    modes = {(tmp_path / name).stat().st_mode & 0o777 for name in ("w.safetensors", "w.json")}
    assert len(modes) == 1  # both as the umask says (safetensors' save_file makes 0600)
    loaded = load_weights(tmp_path / "w.safetensors").eval()
    assert loaded.cfg == model.cfg
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    # An older export's JSON, the model config alone, still rebuilds the model.
    (tmp_path / "w.json").write_text(json.dumps(model.cfg.to_dict()))
    with torch.no_grad():
        assert torch.equal(model(x), load_weights(tmp_path / "w.safetensors").eval()(x))
