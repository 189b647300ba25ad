import math

import pytest
import torch

from arjepa_pl.models import VIT_PRESETS, JepaPredictor, VisionTransformer, gather_tokens, sincos_pos_embed


def tiny_vit(**kw):
    args = dict(embed_dim=48, depth=2, num_heads=3, patch_size=8, tubelet_size=2)
    args.update(kw)
    return VisionTransformer(**args)


def test_video_shapes_and_subset_of_tokens():
    torch.manual_seed(0)
    vit = tiny_vit().eval()
    x = torch.randn(2, 3, 8, 32, 24)
    assert vit.token_grid(x.shape) == (4, 4, 3)
    full = vit(x)
    assert full.shape == (2, 48, 48)
    keep = torch.tensor([[0, 5, 47], [1, 2, 3]])
    part = vit(x, keep)
    assert part.shape == (2, 3, 48)
    # Running on a subset is not the same as slicing the full output (attention sees fewer tokens),
    # but a subset that is everything is.
    everything = torch.arange(48).expand(2, -1)
    torch.testing.assert_close(vit(x, everything), full)


def test_tokens_stay_contiguous_through_the_blocks():
    # A transposed patch embedding would keep its layout through every residual add (and every
    # LayerNorm / linear would copy it): the AR video bench step ran ~7 % slower that way.
    for video, shape in ((True, (2, 3, 8, 32, 24)), (False, (2, 3, 32, 24))):
        vit = tiny_vit(video=video)
        tokens = vit.embed(torch.randn(*shape))
        assert tokens.is_contiguous()
        assert vit.blocks[0](tokens).is_contiguous()


def test_image_encoder_2d_patches():
    vit = tiny_vit(video=False)
    assert vit.patch_embed.proj.weight.shape == (48, 3, 8, 8)
    assert vit(torch.randn(2, 3, 32, 32)).shape == (2, 16, 48)


def test_bad_input_sizes_are_clear_errors():
    vit = tiny_vit()
    with pytest.raises(ValueError, match="not divisible"):
        vit(torch.randn(1, 3, 8, 30, 32))
    with pytest.raises(ValueError, match=r"\[B, C, T, H, W\]"):
        vit(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="preset"):
        VisionTransformer(preset="gigantic")
    with pytest.raises(ValueError, match="embed_dim 48 must be divisible by num_heads 5"):
        VisionTransformer(embed_dim=48, depth=1, num_heads=5)


@pytest.mark.parametrize(
    "preset,millions", [("tiny", 5.63), ("small", 21.88), ("base", 86.24), ("large", 303.89), ("huge", 631.65)]
)
def test_preset_parameter_counts(preset, millions):
    with torch.device("meta"):
        vit = VisionTransformer(preset, patch_size=16, tubelet_size=2)
    assert (vit.embed_dim, vit.depth, vit.num_heads) == tuple(VIT_PRESETS[preset].values())
    assert sum(p.numel() for p in vit.parameters()) / 1e6 == pytest.approx(millions, abs=0.01)


def test_vitl_matches_official_layout():
    # Official V-JEPA ViT-L encoders: 293 tensors with the fixed position table, which we compute instead of storing.
    with torch.device("meta"):
        sd = VisionTransformer("large").state_dict()
    assert len(sd) == 292
    assert sd["patch_embed.proj.weight"].shape == (1024, 3, 2, 16, 16)
    assert sd["blocks.0.attn.qkv.weight"].shape == (3072, 1024)
    assert sd["blocks.23.mlp.fc1.weight"].shape == (4096, 1024)
    assert "norm.weight" in sd


def test_residual_projections_are_rescaled_by_depth():
    torch.manual_seed(0)
    vit = tiny_vit(embed_dim=192, depth=8, num_heads=3)
    first, last = vit.blocks[0].mlp.fc2.weight.std(), vit.blocks[7].mlp.fc2.weight.std()
    assert (first / last).item() == pytest.approx(math.sqrt(16 / 2), rel=0.1)


def test_sincos_table_properties():
    table = sincos_pos_embed((4, 3, 5), 96)
    assert table.shape == (60, 96)
    assert torch.unique(table, dim=0).shape[0] == 60  # every position distinct
    # time occupies the first third with uniform power: two tokens at the same t share it.
    same_t = table.view(4, 15, 96)[0]
    assert torch.allclose(same_t[0, :32], same_t[1, :32])
    assert sincos_pos_embed((7, 7), 64).shape == (49, 64)


def test_predictor_returns_targets_only_and_uses_its_mask_token():
    torch.manual_seed(0)
    pred = JepaPredictor(encoder_dim=48, embed_dim=24, depth=2, num_heads=3, num_mask_tokens=2)
    ctx = torch.randn(2, 5, 48)
    ctx_idx = torch.tensor([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])
    tgt_idx = torch.tensor([[10, 11, 12], [20, 21, 22]])
    out0 = pred(ctx, ctx_idx, tgt_idx, grid=(2, 4, 4), mask_token=0)
    assert out0.shape == (2, 3, 48)
    with torch.no_grad():
        pred.mask_tokens[1].fill_(1.0)
    out1 = pred(ctx, ctx_idx, tgt_idx, grid=(2, 4, 4), mask_token=1)
    assert not torch.allclose(out0, out1)
    with pytest.raises(ValueError, match="mask_token"):
        pred(ctx, ctx_idx, tgt_idx, grid=(2, 4, 4), mask_token=2)


def test_gather_tokens():
    x = torch.arange(24.0).view(2, 4, 3)
    out = gather_tokens(x, torch.tensor([[3, 0], [1, 1]]))
    torch.testing.assert_close(out, torch.stack([x[0, [3, 0]], x[1, [1, 1]]]))


def test_several_token_subsets_in_one_call_match_separate_calls():
    torch.manual_seed(0)
    vit = tiny_vit().eval()
    x = torch.randn(2, 3, 8, 32, 32)
    a, b = torch.tensor([[0, 3, 9], [1, 4, 63]]), torch.tensor([[5, 6], [7, 8]])
    out_a, out_b = vit(x, [a, b])
    torch.testing.assert_close(out_a, vit(x, a))
    torch.testing.assert_close(out_b, vit(x, b))
