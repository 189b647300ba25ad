"""Rotary positions (V-JEPA 2): scores depend on offsets only (true RoPE), V-JEPA 2's published layout
is kept as it is (it is not a rotation), and RoPE encoders / predictors run the same code paths as
sin-cos ones (token subsets, feature extractors, next-step caches)."""

import pytest
import torch

from arjepa_pl.models import VIT_PRESETS, FeatureExtractor, JepaPredictor, Rope3D, VisionTransformer, gather_tokens
from arjepa_pl.models.next_step import next_step_outputs
from arjepa_pl.models.rope import axis_channels, grid_coordinates
from arjepa_pl.models.vit import KVCache

GRID = (6, 7, 8)


def flat(t: int, h: int, w: int) -> int:
    return (t * GRID[1] + h) * GRID[2] + w


def score(rope: Rope3D, q: torch.Tensor, k: torch.Tensor, p: tuple, s: tuple) -> torch.Tensor:
    """Attention score of a query at grid position p and a key at s (one head)."""
    tables = rope(GRID, torch.tensor([[flat(*p), flat(*s)]]))
    qk = torch.stack([q, k])[None, None]  # [1, 1, 2, head_dim]
    rotated = tables.rotate(qk)[0, 0]
    return rotated[0] @ rotated[1]


@pytest.mark.parametrize("head_dim", [20, 64, 11 * 2])
def test_rope_scores_depend_on_the_offset_only(head_dim):
    torch.manual_seed(0)
    rope = Rope3D(head_dim, "rope")
    q, k = torch.randn(head_dim, dtype=torch.float64), torch.randn(head_dim, dtype=torch.float64)
    q, k = q.float(), k.float()
    base = score(rope, q, k, (0, 1, 2), (2, 0, 5))
    for shift in [(1, 0, 0), (0, 3, 0), (0, 0, 2), (3, 2, 1)]:
        p = tuple(a + d for a, d in zip((0, 1, 2), shift))
        s = tuple(a + d for a, d in zip((2, 0, 5), shift))
        torch.testing.assert_close(score(rope, q, k, p, s), base, rtol=0, atol=1e-5)
    # ... and on the offset: another offset gives another score.
    assert (score(rope, q, k, (0, 1, 2), (2, 0, 4)) - base).abs() > 1e-3
    # Rotations keep norms: a token's query is as long at every position.
    tables = rope(GRID, torch.arange(50)[None])
    norms = tables.rotate(q.expand(1, 1, 50, -1)).norm(dim=-1)
    torch.testing.assert_close(norms, q.norm().expand_as(norms))


def test_vjepa2_layout_is_kept_and_is_not_a_rotation():
    """V-JEPA 2's frequencies are written twice (concatenated), so a channel pair is turned by two
    different angles: scores change under a common shift. The public weights need exactly this."""
    torch.manual_seed(0)
    rope = Rope3D(64, "rope_vjepa2")  # 20 channels per axis: 10 frequencies ...
    freq = rope.frequencies(torch.device("cpu"))
    assert torch.equal(freq[:10], freq[10:])  # ... written twice
    assert torch.equal(Rope3D(64, "rope").frequencies(torch.device("cpu")), freq[:10].repeat_interleave(2))
    q, k = torch.randn(64), torch.randn(64)
    assert (score(rope, q, k, (0, 0, 1), (0, 0, 2)) - score(rope, q, k, (0, 0, 5), (0, 0, 6))).abs() > 1e-3


def test_head_split_and_coordinates():
    assert [axis_channels(d) for d in (64, 32, 96, 6)] == [20, 10, 32, 2]  # 64-d heads: 3 x 20, 4 unrotated
    t, h, w = grid_coordinates(GRID, torch.tensor([flat(5, 6, 7), flat(1, 2, 3)]), torch.device("cpu"))
    assert t.tolist() == [5, 1] and h.tolist() == [6, 2] and w.tolist() == [7, 3]
    with pytest.raises(ValueError, match="even number >= 6"):
        Rope3D(4)
    with pytest.raises(ValueError, match="positions must be one of"):
        VisionTransformer(embed_dim=32, depth=1, num_heads=2, positions="learned")


def rope_vit(positions="rope_vjepa2", **kw):
    torch.manual_seed(0)
    return VisionTransformer(**{**dict(embed_dim=48, depth=2, num_heads=2, patch_size=8, tubelet_size=2,
                                       positions=positions), **kw}).eval()


@pytest.mark.parametrize("positions", ["rope", "rope_vjepa2"])
def test_rope_encoder_paths_agree(positions):
    vit = rope_vit(positions)
    sincos = VisionTransformer(embed_dim=48, depth=2, num_heads=2, patch_size=8, tubelet_size=2)
    assert vit.state_dict().keys() == sincos.state_dict().keys()  # the same tensors; positions are not weights
    assert vit.config["positions"] == positions and vit.pos_embed is None
    x = torch.randn(2, 3, 4, 16, 24)
    with torch.no_grad():
        full = vit(x)
        everything = torch.arange(full.size(1)).expand(2, -1)
        torch.testing.assert_close(vit(x, everything), full)
        # Positions travel with the token: permuting the kept tokens permutes the outputs.
        keep = torch.tensor([[0, 5, 7, 11], [3, 2, 9, 1]])
        perm = torch.tensor([2, 0, 3, 1])
        torch.testing.assert_close(vit(x, keep[:, perm]), vit(x, keep)[:, perm])
        # The feature extractor (probes) runs the blocks itself: its last layer is the encoder's output.
        (last,) = FeatureExtractor(vit)(x, [-1])
        torch.testing.assert_close(last, full)
    # A sin-cos model needs no tables, a rotary one refuses to run without.
    with pytest.raises(ValueError, match="needs rope tables"):
        vit.forward_tokens(vit.embed(x))
    # Images: one frame, the time channels unrotated.
    assert rope_vit(positions, video=False)(torch.randn(1, 3, 16, 16)).shape == (1, 4, 48)


def test_rope_next_step_cache_matches_a_full_pass():
    """Rotated keys are cached: decoding one step at a time gives the full pass's outputs."""
    vit = rope_vit("rope")
    head = torch.nn.Identity()
    x = torch.randn(1, 3, 6, 16, 16)
    with torch.no_grad():
        full = next_step_outputs(vit, head, x)
        caches = [KVCache() for _ in vit.blocks]
        first = next_step_outputs(vit, head, x[:, :, :4], caches=caches)
        last = next_step_outputs(vit, head, x, caches=caches)
    torch.testing.assert_close(torch.cat([first, last], 1), full, rtol=1e-5, atol=1e-5)


def test_rope_predictor_adds_no_table_and_is_order_free():
    torch.manual_seed(0)
    pred = JepaPredictor(encoder_dim=48, embed_dim=24, depth=2, num_heads=2, positions="rope_vjepa2").eval()
    assert pred.pos_embed is None and pred.rope is not None
    context = torch.randn(2, 5, 48)
    ci, ti = torch.tensor([[0, 4, 6, 9, 11]] * 2), torch.tensor([[1, 2, 3], [5, 7, 8]])
    with torch.no_grad():
        out = pred(context, ci, ti, (2, 2, 3))
        perm = torch.tensor([4, 0, 3, 1, 2])
        # Context order does not matter (V-JEPA 2 sorts tokens by position; under full attention it
        # changes nothing), and each target slot's output follows its position.
        torch.testing.assert_close(pred(context[:, perm], ci[:, perm], ti, (2, 2, 3)), out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pred(context, ci, ti[:, [2, 0, 1]], (2, 2, 3)), out[:, [2, 0, 1]],
                                   rtol=1e-5, atol=1e-5)
        assert not torch.allclose(pred(context, ci, ti + 1, (2, 2, 3)), out)
    assert gather_tokens(context, ci[:, :2]).shape == (2, 2, 48)


def test_giant_preset_is_vjepa2_vitg():
    with torch.device("meta"):
        vit = VisionTransformer(preset="giant", positions="rope_vjepa2")
    assert (vit.embed_dim, vit.depth, vit.num_heads) == (1408, 40, 22)
    assert vit.blocks[0].mlp.fc1.out_features == 6144  # 1408 * 48 / 11
    assert VIT_PRESETS["giant"]["mlp_ratio"] == pytest.approx(48 / 11)
    millions = sum(p.numel() for p in vit.parameters()) / 1e6
    assert millions == pytest.approx(1012.0, abs=1.0)  # V-JEPA 2's "1B" ViT-g/16
