"""Tests for the V-JEPA multiblock-3D masks and the mask collator, against V-JEPA's public collator."""

import pickle

import numpy as np
import pytest
import torch

from arjepa_pl.masks import multiblock3d
from arjepa_pl.masks import (
    LONG_RANGE,
    SHORT_RANGE,
    VJEPA_DEFAULT_MASKS,
    MaskCollator,
    MaskConfig,
    mask_rng,
    masks_to_indices,
    sample_multiblock3d,
    sample_target_masks,
)

GRID = (8, 14, 14)  # 16 frames / tubelet 2, 224 px / patch 16
N_TOKENS = 8 * 14 * 14


# ---------------------------------------------------------------------------------------------
# statistics against V-JEPA's public collator's measurements

# (context after truncation, target after truncation, masked fraction before truncation)
REFERENCE_STATS = {"short": (0.233, 0.478, 0.628), "long": (0.065, 0.705, 0.811)}


def _measure(cfg, n_batches=300, batch_size=24):
    pre, ctx, tgt = [], [], []
    for b in range(n_batches):
        # Same code path as sample_multiblock3d: target masks, then truncation to indices.
        masks = sample_target_masks(mask_rng(1234, b), batch_size, GRID, cfg)
        pre.append(masks.reshape(batch_size, -1).mean())
        context, target = masks_to_indices(masks)
        ctx.append(context.shape[1] / N_TOKENS)
        tgt.append(target.shape[1] / N_TOKENS)
    return float(np.mean(ctx)), float(np.mean(tgt)), float(np.mean(pre))


@pytest.mark.parametrize("name,cfg", [("short", SHORT_RANGE), ("long", LONG_RANGE)])
def test_statistics_match_reference(name, cfg):
    measured = _measure(cfg)
    ref = REFERENCE_STATS[name]
    print(
        f"\n{name}-range: context {measured[0]:.4f} (ref {ref[0]}), target {measured[1]:.4f} (ref {ref[1]}), "
        f"masked before truncation {measured[2]:.4f} (ref {ref[2]})"
    )
    for m, r in zip(measured, ref):
        assert abs(m - r) <= 0.01, (name, measured, ref)


def test_sample_multiblock3d_is_target_masks_plus_truncation():
    a = sample_multiblock3d(mask_rng(5, 1), 24, GRID, SHORT_RANGE)
    b = masks_to_indices(sample_target_masks(mask_rng(5, 1), 24, GRID, SHORT_RANGE))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ---------------------------------------------------------------------------------------------
# structure of the index tensors


def _check_indices(context, target, batch_size, n_tokens):
    assert context.dtype == torch.int64 and target.dtype == torch.int64
    assert context.ndim == 2 and target.ndim == 2
    assert context.shape[0] == target.shape[0] == batch_size
    assert context.shape[1] >= 1 and target.shape[1] >= 1
    for c, t in zip(context.tolist(), target.tolist()):
        for row in (c, t):
            assert all(0 <= i < n_tokens for i in row)
            assert row == sorted(set(row))  # ascending and unique
        assert not set(c) & set(t)


@pytest.mark.parametrize("cfg", VJEPA_DEFAULT_MASKS + (MaskConfig(4, (0.1, 0.3), (0.3, 0.6), (0.5, 2.0)),))
@pytest.mark.parametrize("grid,batch_size", [(GRID, 24), ((8, 8, 8), 8), ((1, 3, 5), 4), ((4, 2, 2), 3)])
def test_indices_valid(cfg, grid, batch_size):
    for key in range(10):
        context, target = sample_multiblock3d(mask_rng(0, key), batch_size, grid, cfg)
        _check_indices(context, target, batch_size, int(np.prod(grid)))


def test_truncation_keeps_lowest_indices():
    masks = sample_target_masks(mask_rng(3), 16, GRID, SHORT_RANGE)
    context, target = masks_to_indices(masks)
    flat = masks.reshape(16, -1)
    for b in range(16):
        full_ctx, full_tgt = np.flatnonzero(~flat[b]), np.flatnonzero(flat[b])
        assert context[b].tolist() == full_ctx[: context.shape[1]].tolist()
        assert target[b].tolist() == full_tgt[: target.shape[1]].tolist()
    # Truncated to the batch minimum: some row keeps its whole list.
    assert context.shape[1] == (~flat).sum(1).min() and target.shape[1] == flat.sum(1).min()


def test_one_block_size_per_batch_positions_per_sample():
    cfg = MaskConfig(1, (0.2, 0.2), (0.5, 0.5))
    masks = sample_target_masks(mask_rng(11), 32, GRID, cfg)
    # With a single box the target of each sample is exactly that box: same size, varied place.
    sizes = {int(m.sum()) for m in masks}
    assert len(sizes) == 1
    assert len({m.tobytes() for m in masks}) > 1


def test_positions_reach_every_edge():
    # Inclusive upper bounds: the last frame, row and column are covered too (unlike ijepa #60).
    cfg = MaskConfig(1, (0.05, 0.05), (0.25, 0.25))
    masks = sample_target_masks(mask_rng(2), 2000, GRID, cfg)
    covered = masks.any(axis=0)
    assert covered.all()


def test_deterministic_from_key():
    a = sample_multiblock3d(mask_rng(7, 0, 3, 48), 24, GRID, SHORT_RANGE)
    np.random.seed(99)
    torch.manual_seed(99)
    b = sample_multiblock3d(mask_rng(7, 0, 3, 48), 24, GRID, SHORT_RANGE)
    c = sample_multiblock3d(mask_rng(7, 0, 3, 72), 24, GRID, SHORT_RANGE)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape != c[0].shape or not torch.equal(a[0], c[0])


def test_max_temporal_keep_hides_late_frames_from_context():
    T, H, W = GRID
    for keep, cutoff in [(0.5, 4), (0.3, 2), (0.01, 1)]:
        cfg = MaskConfig(2, (0.15, 0.15), (0.25, 0.5), max_temporal_keep=keep)
        for key in range(20):
            context, target = sample_multiblock3d(mask_rng(0, key), 8, GRID, cfg)
            assert context.max() < cutoff * H * W
            # The hidden frames are predicted: every row's target (before truncation) includes them.
            masks = sample_target_masks(mask_rng(0, key), 8, GRID, cfg)
            assert masks[:, cutoff:].all()


def test_tiny_grid_clamps_block_size():
    # H*W*scale rounds to 0 tokens here; the block is clamped to 1x1 instead of vanishing.
    cfg = MaskConfig(1, (0.01, 0.01))
    masks = sample_target_masks(mask_rng(0), 4, (2, 3, 3), cfg)
    assert (masks.reshape(4, -1).sum(1) == 2).all()  # a 2x1x1 tube in each sample


def test_impossible_config_raises_instead_of_looping(monkeypatch):
    # One full-grid block leaves no context whatever the positions: fail at once.
    cfg = MaskConfig(1, (1.0, 1.0), aspect_ratio=(1.0, 1.0))
    with pytest.raises(RuntimeError, match="context is empty whatever the positions"):
        sample_multiblock3d(mask_rng(0), 4, (2, 4, 4), cfg)
    with pytest.raises(RuntimeError, match="context is empty whatever the positions"):
        sample_multiblock3d(mask_rng(0), 4, (4, 1, 1), SHORT_RANGE)  # full-time 1x1 "frame"
    # Otherwise retries are bounded. Two 1x1 blocks on a 1x1x2 grid leave no context half the
    # time; with a single retry allowed, some of 64 samples fail twice (all but certain, and the
    # seed is fixed).
    monkeypatch.setattr(multiblock3d, "MAX_RETRIES", 1)
    cfg = MaskConfig(2, (0.5, 0.5))
    with pytest.raises(RuntimeError, match="context is empty after 1 retries"):
        sample_multiblock3d(mask_rng(0), 64, (1, 1, 2), cfg)


def test_rare_empty_context_is_retried():
    # Two 1x2 blocks on a 1x1x3 grid cover everything whenever one sits at each end (half the
    # time): many samples need retries, but every row must still come back with context.
    cfg = MaskConfig(2, (0.67, 0.67), aspect_ratio=(0.5, 0.5))
    context, target = sample_multiblock3d(mask_rng(0), 64, (1, 1, 3), cfg)
    assert context.shape == (64, 1)
    _check_indices(context, target, 64, 3)


# ---------------------------------------------------------------------------------------------
# MaskConfig validation


def test_mask_config_defaults_and_lists():
    assert SHORT_RANGE.num_blocks == 8 and SHORT_RANGE.spatial_scale == (0.15, 0.15)
    assert LONG_RANGE.num_blocks == 2 and LONG_RANGE.spatial_scale == (0.7, 0.7)
    assert VJEPA_DEFAULT_MASKS == (SHORT_RANGE, LONG_RANGE)
    cfg = MaskConfig(4, [0.1, 0.2], [1, 1], [0.5, 2], 1)  # YAML gives lists and ints
    assert cfg.spatial_scale == (0.1, 0.2) and cfg.temporal_scale == (1.0, 1.0)
    assert isinstance(cfg.aspect_ratio, tuple) and isinstance(cfg.max_temporal_keep, float)
    assert hash(cfg) == hash(MaskConfig(4, (0.1, 0.2), (1.0, 1.0), (0.5, 2.0)))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_blocks=0), "num_blocks must be >= 1"),
        (dict(num_blocks=2.5), "num_blocks must be an integer"),
        (dict(num_blocks=True), "num_blocks must be an integer"),
        (dict(spatial_scale=(0.0, 0.5)), r"spatial_scale values must lie in \(0, 1\]"),
        (dict(spatial_scale=(0.5, 1.5)), "spatial_scale values must lie in"),
        (dict(spatial_scale=(0.5, 0.2)), "spatial_scale must have min <= max"),
        (dict(spatial_scale=(0.5,)), "spatial_scale must be a pair"),
        (dict(temporal_scale=(-0.1, 1.0)), "temporal_scale values must lie in"),
        (dict(temporal_scale=(1.0, 0.5)), "temporal_scale must have min <= max"),
        (dict(aspect_ratio=(0.0, 1.0)), "aspect_ratio values must lie in"),
        (dict(aspect_ratio=(2.0, 1.0)), "aspect_ratio must have min <= max"),
        (dict(max_temporal_keep=0.0), "max_temporal_keep must lie in"),
        (dict(max_temporal_keep=1.5), "max_temporal_keep must lie in"),
    ],
)
def test_mask_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MaskConfig(**kwargs)


# ---------------------------------------------------------------------------------------------
# collator


def _samples(n, epoch=0, position=0, shape=(3, 16, 32, 48)):
    return [
        {"video": torch.randn(shape), "label": i % 3, "index": 100 + i, "epoch": epoch, "position": position + i}
        for i in range(n)
    ]


def test_collator_shapes():
    collate = MaskCollator(VJEPA_DEFAULT_MASKS, tubelet_size=2, patch_size=16)
    batch = collate(_samples(6))
    assert batch["video"].shape == (6, 3, 16, 32, 48)
    assert batch["label"].tolist() == [0, 1, 2, 0, 1, 2] and batch["index"].tolist() == list(range(100, 106))
    assert len(batch["masks"]) == 2
    for m in batch["masks"]:
        assert set(m) == {"context", "target"}
        _check_indices(m["context"], m["target"], 6, 8 * 2 * 3)


def test_collator_grid_divisibility_error():
    collate = MaskCollator(VJEPA_DEFAULT_MASKS, tubelet_size=2, patch_size=16)
    with pytest.raises(ValueError, match=r"T=15, H=32, W=48 does not divide"):
        collate(_samples(2, shape=(3, 15, 32, 48)))
    with pytest.raises(ValueError, match="multiples of 16"):
        collate(_samples(2, shape=(3, 16, 30, 48)))


def _mask_tensors(batch):
    return [t for m in batch["masks"] for t in (m["context"], m["target"])]


def _same(a, b):
    return all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(_mask_tensors(a), _mask_tensors(b)))


def test_collator_deterministic_and_ignores_global_rng():
    collate = MaskCollator(VJEPA_DEFAULT_MASKS, tubelet_size=2, patch_size=16, seed=3, rank=1)
    torch.manual_seed(0)
    np.random.seed(0)
    first = collate(_samples(4, epoch=2, position=8))
    # Other batches in between and a different global RNG state: the batch's masks do not change.
    collate(_samples(4, epoch=2, position=12))
    torch.manual_seed(12345)
    np.random.seed(54321)
    again = collate(_samples(4, epoch=2, position=8))
    assert _same(first, again)
    # A fresh collator with the same settings (e.g. after resume, or in another worker) agrees.
    assert _same(first, MaskCollator(VJEPA_DEFAULT_MASKS, 2, 16, seed=3, rank=1)(_samples(4, epoch=2, position=8)))


@pytest.mark.parametrize(
    "change", [dict(rank=2), dict(seed=4), dict(epoch=3), dict(position=12)], ids=lambda d: next(iter(d))
)
def test_collator_masks_change_with_each_key_part(change):
    base = dict(seed=3, rank=1, epoch=2, position=8)
    def run(p):
        collate = MaskCollator(VJEPA_DEFAULT_MASKS, 2, 16, seed=p["seed"], rank=p["rank"])
        return collate(_samples(4, epoch=p["epoch"], position=p["position"]))
    assert not _same(run(base), run({**base, **change}))


def test_collator_configs_get_independent_generators():
    # Adding a config must not change the masks of the ones before it.
    one = MaskCollator((SHORT_RANGE,), 2, 16)(_samples(4))
    two = MaskCollator((SHORT_RANGE, LONG_RANGE), 2, 16)(_samples(4))
    assert torch.equal(one["masks"][0]["context"], two["masks"][0]["context"])


def test_collator_pickles():
    collate = MaskCollator(VJEPA_DEFAULT_MASKS, tubelet_size=2, patch_size=16, seed=5, rank=3)
    clone = pickle.loads(pickle.dumps(collate))
    assert clone.mask_configs == collate.mask_configs and (clone.seed, clone.rank) == (5, 3)
    assert _same(collate(_samples(4, epoch=1, position=4)), clone(_samples(4, epoch=1, position=4)))


def test_collator_accepts_dict_configs():
    collate = MaskCollator([{"num_blocks": 8, "spatial_scale": [0.15, 0.15]}], 2, 16)
    assert collate.mask_configs == (SHORT_RANGE,)
