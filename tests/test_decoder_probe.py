"""The pixel decoder probe: it learns to reconstruct clips from frozen features, the cached path gives
the uncached numbers, and what it cannot read is refused clearly."""

import pytest
import torch

from arjepa_pl.evaluation import DecoderProbe, FrozenFeatureData
from arjepa_pl.models import PixelDecoder, VisionTransformer
from tests.frozen_helpers import ShadeData, count_encoder_calls, fit, validate


def tiny_decoder(**kw) -> DecoderProbe:
    torch.manual_seed(0)
    encoder = VisionTransformer(embed_dim=32, depth=2, num_heads=2, patch_size=8, tubelet_size=2)
    return DecoderProbe(encoder=encoder, depth=1, num_heads=2, lr=3e-3, start_lr=3e-3, **kw)


def test_decoder_probe_learns_and_the_cache_gives_the_same_numbers(tmp_path):
    plain_probe, cached_probe = tiny_decoder(), tiny_decoder()
    calls = count_encoder_calls(cached_probe)
    start = validate(tiny_decoder(), ShadeData(), tmp_path / "start")
    plain = fit(plain_probe, ShadeData(), tmp_path / "a", epochs=6)
    wrapped = FrozenFeatureData(ShadeData(), cache_dir=str(tmp_path / "cache"))
    cached = fit(cached_probe, wrapped, tmp_path / "b", epochs=6)
    assert sum(calls) == 24 + 12  # the encoder ran once per clip
    for key in ("val/psnr", "val/mse", "val/ssim", "val/loss"):
        assert cached[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-6), key
    assert plain["val/psnr"] > start["val/psnr"] + 1.0, (start, plain)  # it learns to read the pixels back
    assert plain["val/mse"] == pytest.approx(10 ** (-plain["val/psnr"] / 10), rel=0.5)  # per-frame mean vs mean MSE


def test_pixel_decoder_shapes_and_refusals():
    decoder = PixelDecoder(32, 3 * 2 * 8 * 8, width=16, depth=2, num_heads=2)
    assert decoder(torch.randn(2, 10, 32)).shape == (2, 10, 384)
    assert PixelDecoder(32, 12, depth=0)(torch.randn(1, 3, 32)).shape == (1, 3, 12)
    with pytest.raises(ValueError, match="depth"):
        PixelDecoder(32, 12, depth=-1)
    image_encoder = VisionTransformer(embed_dim=32, depth=1, num_heads=2, patch_size=8, video=False)
    with pytest.raises(ValueError, match="video encoders"):
        DecoderProbe(encoder=image_encoder)
    with pytest.raises(ValueError, match=r"batch\['video'\]"):
        tiny_decoder().training_step({"label": torch.zeros(2)}, 0)
