"""The model family: shapes at any size, position-embedding resampling, the locality FFN,
and equivalence with timm."""
import pytest
import torch

from budgetvit.models import (count_params, create_model, from_timm_state_dict, model_config,
                              param_groups, to_timm_state_dict)
from budgetvit.models.layers import LocalityFFN
from budgetvit.models.pos_embed import resample_pos_embed

SIZES = [32, 64, 96, 160, 224, (96, 160)]


def small(name="vit_ti16", **kw):
    """A shallow ViT-Ti/16 keeps the 224 px tests fast while keeping the 14x14 base grid."""
    return create_model(name, depth=2, num_classes=7, **kw)


@pytest.mark.parametrize("name", ["vit_ti16", "vit_ti16_local"])
@pytest.mark.parametrize("size", SIZES)
def test_output_shape_at_any_size(name, size):
    h, w = (size, size) if isinstance(size, int) else size
    model = small(name).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, h, w)).shape == (2, 7)


def test_input_not_multiple_of_patch_is_rejected():
    with pytest.raises(ValueError, match="not a multiple of patch size 16"):
        small()(torch.randn(1, 3, 100, 96))


def test_resample_is_identity_at_base_grid():
    pe = torch.randn(1, 1 + 14 * 14, 8)
    assert resample_pos_embed(pe, (14, 14), (14, 14)) is pe


def test_resample_keeps_class_token_and_matches_shapes():
    pe = torch.randn(1, 1 + 14 * 14, 8)
    for grid in [(4, 4), (10, 10), (6, 10), (20, 20)]:
        out = resample_pos_embed(pe, (14, 14), grid)
        assert out.shape == (1, 1 + grid[0] * grid[1], 8)
        assert torch.equal(out[:, 0], pe[:, 0])


def test_resample_computes_in_float32_for_bf16_embeddings():
    pe = torch.randn(1, 1 + 14 * 14, 8)
    ref = resample_pos_embed(pe, (14, 14), (4, 4))
    low = resample_pos_embed(pe.bfloat16(), (14, 14), (4, 4))
    assert low.dtype == torch.bfloat16
    # Only the final rounding to bf16 differs from the float32 result.
    assert torch.allclose(low.float(), ref, atol=2e-2, rtol=1e-2)


def test_locality_ffn_needs_explicit_grid_and_handles_non_square():
    ffn = LocalityFFN(dim=8, hidden=32)
    x = torch.randn(2, 1 + 3 * 5, 8)
    out = ffn(x, (3, 5), num_prefix=1)
    assert out.shape == x.shape
    with pytest.raises(ValueError, match="do not fill the 5x3 grid"):
        ffn(torch.randn(2, 1 + 16, 8), (5, 3), num_prefix=1)


def test_locality_ffn_is_local_on_the_given_grid():
    """Perturbing one patch changes only that patch and its 8 grid neighbours: the conv sees
    the tokens as a (3 x 5) image, not a guessed square."""
    torch.manual_seed(0)
    ffn = LocalityFFN(dim=8, hidden=32)
    x = torch.randn(1, 1 + 15, 8)
    y0 = ffn(x, (3, 5), 1)
    x2 = x.clone()
    x2[0, 1 + 0 * 5 + 0] += 1.0  # patch at row 0, col 0
    changed = ((ffn(x2, (3, 5), 1) - y0).abs().sum(-1)[0, 1:] > 1e-7).reshape(3, 5)
    expected = torch.zeros(3, 5, dtype=torch.bool)
    expected[:2, :2] = True
    assert torch.equal(changed, expected)


def test_class_token_is_not_changed_by_locality_ffn():
    torch.manual_seed(0)
    ffn = LocalityFFN(dim=8, hidden=32)
    out = ffn(torch.randn(3, 1 + 16, 8), (4, 4), num_prefix=1)
    assert torch.equal(out[:, 0], torch.zeros(3, 8))
    assert out[:, 1:].abs().sum() > 0


def test_locality_block_passes_class_token_through_ffn_residual():
    """In a locality block only attention updates the class token: with attention's output
    projection zeroed, the class token leaves the block unchanged."""
    model = small("vit_ti16_local").eval()
    block = model.blocks[0]
    torch.nn.init.zeros_(block.attn.proj.weight)
    torch.nn.init.zeros_(block.attn.proj.bias)
    x = torch.randn(2, 1 + 16, model.cfg.dim)
    out = block(x, (4, 4), 1)
    assert torch.equal(out[:, 0], x[:, 0])
    assert not torch.equal(out[:, 1:], x[:, 1:])


def test_locality_defaults_and_options():
    local = small("vit_ti16_local")
    ffn = local.blocks[0].mlp
    assert isinstance(ffn, LocalityFFN)
    assert ffn.fc1.bias is None and ffn.fc2.bias is None and ffn.conv.bias is None
    assert isinstance(ffn.act1, torch.nn.Hardswish)
    assert ffn.conv.groups == ffn.conv.in_channels and ffn.conv.kernel_size == (3, 3)
    gelu = small("vit_ti16_local", act="gelu", ffn_bias=True).blocks[0].mlp
    assert isinstance(gelu.act1, torch.nn.GELU) and gelu.conv.bias is not None
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in local.modules())


@pytest.mark.parametrize("name", ["vit_ti16", "vit_ti16_local"])
@pytest.mark.parametrize("size", [32, 64, 96, 160, 224])
def test_gradient_reaches_pos_embed_at_every_size(name, size):
    model = small(name)
    model(torch.randn(2, 3, size, size)).sum().backward()
    assert model.pos_embed.grad is not None and model.pos_embed.grad.abs().sum() > 0


def test_optimizer_moves_pos_embed_after_size_change():
    model = small("vit_ti16_local")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    param = model.pos_embed
    for size in (64, 96):  # a curriculum step from 64 to 96 px
        before = param.detach().clone()
        model(torch.randn(2, 3, size, size)).logsumexp(-1).sum().backward()
        opt.step()
        opt.zero_grad()
        assert model.pos_embed is param  # still the parameter the optimizer holds
        assert not torch.equal(param, before)


def test_evaluation_at_another_size_leaves_weights_bit_identical():
    model = small("vit_ti16_local").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for size in (64, 160, 224, 96):
            model(torch.randn(1, 3, size, size))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_init_follows_deit():
    model = create_model("vit_s16")
    w = model.blocks[0].attn.qkv.weight
    # timm's trunc_normal_(std=0.02) truncates at +-2 absolute, i.e. effectively N(0, 0.02).
    assert abs(w.std().item() - 0.02) < 0.001 and abs(w.mean().item()) < 0.001
    assert torch.equal(model.blocks[0].attn.qkv.bias, torch.zeros_like(model.blocks[0].attn.qkv.bias))
    assert torch.equal(model.norm.weight, torch.ones_like(model.norm.weight))
    # Convolutions at PyTorch's default, U(+-1/sqrt(fan_in)) (timm and the authors' code leave
    # them so): the locality FFN's depthwise 3x3 (fan-in 9) at std 1/sqrt(27), not 0.02.
    conv = create_model("vit_s16_local").blocks[0].mlp.conv.weight
    assert abs(conv.std().item() - 27 ** -0.5) < 0.01 and conv.abs().max() <= 1 / 3
    patch = model.patch_embed.proj.weight  # fan-in 3 x 16 x 16
    assert abs(patch.std().item() - 2304 ** -0.5) < 0.001 and patch.abs().max() <= 768 ** -0.5


def test_any_field_can_be_overridden():
    cfg = model_config("vit_s16_local", dim=96, depth=3, heads=4, patch_size=8, num_classes=5,
                       drop_path=0.2, ffn="mlp", act="gelu")
    assert (cfg.dim, cfg.depth, cfg.heads, cfg.patch_size, cfg.num_classes, cfg.ffn) == \
        (96, 3, 4, 8, 5, "mlp")
    with pytest.raises(ValueError, match="unknown model field"):
        model_config("vit_s16", width=3)
    with pytest.raises(ValueError, match="unknown model 'vit_xl'"):
        model_config("vit_xl")


def test_drop_path_rates_grow_with_depth():
    model = create_model("vit_ti16", drop_path=0.1)
    rates = [b.drop_rate.item() for b in model.blocks]
    assert rates[0] == 0.0 and abs(rates[-1] - 0.1) < 1e-7 and rates == sorted(rates)
    # Every block takes the drop path (one graph for torch.compile); at rate 0 it keeps all.
    assert all(b.drops for b in model.blocks)
    x = torch.randn(64, 3, 8)
    assert model.training and torch.equal(model.blocks[0]._drop(x), x)
    assert not any(b.drops for b in create_model("vit_ti16").blocks)


def test_drop_path_drops_whole_images_and_rescales_the_kept_ones():
    block = create_model("vit_ti16", depth=2, drop_path=0.4).blocks[1]  # rate 0.4
    x = torch.ones(4000, 3, 8)
    torch.manual_seed(0)
    out = block._drop(x)
    per_image = out.flatten(1)
    assert torch.equal(per_image.min(1).values, per_image.max(1).values)  # whole images
    dropped, kept = sorted(set(per_image[:, 0].tolist()))
    assert dropped == 0.0 and kept == pytest.approx(1 / 0.6)
    assert abs((per_image[:, 0] == 0).float().mean().item() - 0.4) < 0.03
    block.eval()
    assert torch.equal(block._drop(x), x)


def test_param_groups_exempt_biases_norms_pos_and_cls():
    model = small("vit_ti16_local")
    decay, exempt = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    exempt_names = {names[id(p)] for p in exempt["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert {"pos_embed", "cls_token", "norm.weight", "norm.bias", "head.bias",
            "blocks.0.norm1.weight"} <= exempt_names
    assert {"blocks.0.attn.qkv.weight", "blocks.0.mlp.conv.weight", "head.weight",
            "patch_embed.proj.weight"} <= decay_names
    assert decay["weight_decay"] == 0.05 and exempt["weight_decay"] == 0.0
    assert len(decay_names) + len(exempt_names) == len(list(model.parameters()))


def test_locality_adds_exactly_the_conv_minus_ffn_biases():
    plain, local = create_model("vit_s16"), create_model("vit_s16_local")
    D, H, depth = 384, 4 * 384, 12
    conv = H * 9  # depthwise 3x3, no bias
    removed_biases = H + D  # fc1 and fc2 biases
    assert count_params(local) - count_params(plain) == depth * (conv - removed_biases)


timm = pytest.importorskip("timm")


@pytest.mark.parametrize("ours,theirs", [("vit_ti16", "vit_tiny_patch16_224"),
                                         ("vit_s16", "vit_small_patch16_224"),
                                         ("vit_b16", "vit_base_patch16_224")])
def test_param_counts_equal_timm(ours, theirs):
    for classes in (1000, 10):
        assert count_params(create_model(ours, num_classes=classes)) == count_params(
            timm.create_model(theirs, pretrained=False, num_classes=classes))


def test_logits_equal_timm_at_224_and_160():
    torch.manual_seed(0)
    ours = create_model("vit_s16", num_classes=10).eval()
    state = to_timm_state_dict(ours)
    fixed = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=10).eval()
    fixed.load_state_dict(state)
    dynamic = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=10,
                                dynamic_img_size=True).eval()
    dynamic.load_state_dict(state)
    with torch.no_grad():
        x = torch.randn(2, 3, 224, 224)
        assert (ours(x) - fixed(x)).abs().max() <= 1e-4
        x = torch.randn(2, 3, 160, 160)
        assert (ours(x) - dynamic(x)).abs().max() <= 1e-4


def test_import_from_timm_roundtrip():
    torch.manual_seed(1)
    theirs = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3).eval()
    ours = create_model("vit_ti16", num_classes=3).eval()
    from_timm_state_dict(ours, theirs.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max() <= 1e-4
    with pytest.raises(ValueError, match="plain-FFN.*this one has ffn='local'"):
        to_timm_state_dict(create_model("vit_ti16_local"))
    # Same weights, another activation: timm's model would compute something else.
    with pytest.raises(ValueError, match="this one has act='hswish'$"):
        from_timm_state_dict(create_model("vit_ti16", num_classes=3, act="hswish"),
                             theirs.state_dict())
    with pytest.raises(ValueError, match="does not match"):
        from_timm_state_dict(ours, {k: v for k, v in theirs.state_dict().items()
                                    if k != "head.bias"})
