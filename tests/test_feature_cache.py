"""The feature cache of frozen-encoder probes: the cached probe trains exactly as the uncached one, the
encoder runs once per clip, entries are keyed by the weights and the data (not by loader options),
written atomically; and the Wilson interval the probes report."""

import json
import math

import pytest
import torch

from arjepa_pl.evaluation import FrozenFeatureData, Probe, ProbeTask, TopKCounts, wilson_interval
from arjepa_pl.models import VisionTransformer
from data_modules import VideoDataModule
from tests.frozen_helpers import ShadeData, count_encoder_calls, fit


def tiny_probe(seed: int = 0, **kw) -> Probe:
    torch.manual_seed(seed)
    encoder = VisionTransformer(embed_dim=32, depth=2, num_heads=2, patch_size=8, tubelet_size=2)
    return Probe(tasks=[ProbeTask("shade", 3, divisor=2), ProbeTask("side", 2, modulo=2)], encoder=encoder,
                 layers=[0, -1], lr=3e-3, start_lr=3e-3, **kw)


def test_cached_and_uncached_probes_agree_and_the_encoder_runs_once_per_clip(tmp_path):
    uncached, cached = tiny_probe(), tiny_probe()
    calls_uncached, calls_cached = count_encoder_calls(uncached), count_encoder_calls(cached)
    plain = fit(uncached, ShadeData(), tmp_path / "a")
    wrapped = FrozenFeatureData(ShadeData(), cache_dir=str(tmp_path / "cache"))
    served = fit(cached, wrapped, tmp_path / "b")
    assert sum(calls_uncached) == 3 * (24 + 12)  # every epoch encodes every clip again
    assert sum(calls_cached) == 24 + 12  # once per clip, then only the heads
    for key in ("val/shade/l1/top1", "val/side/l0/top1", "val/shade/l1/top1_low", "val/loss", "train/loss"):
        assert served[key] == pytest.approx(plain[key], abs=1e-5), key
    heads_a, heads_b = uncached.heads.state_dict(), cached.heads.state_dict()
    for name in heads_a:
        assert torch.allclose(heads_a[name], heads_b[name], atol=1e-5), name
    assert served["val/clips"] == 12 and 1.0 <= served["features/l1/rankme"] <= 32
    assert 0.0 < served["features/l1/within_clip_share"] < 1.0
    assert plain["val/shade/l1/top1_low"] <= plain["val/shade/l1/top1"] <= plain["val/shade/l1/top1_high"]
    notes = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*.json")]
    assert len(notes) == 2 * 3  # per split: labels and two layers
    assert not list((tmp_path / "cache").glob(".*tmp*")), "a temporary file was left behind"


def test_the_wrapper_lists_the_labels_its_data_lists():
    # The probes' once-per-fit label check and the pre-flight check read them through the wrapper.
    class Listing(ShadeData):
        def label_values(self):
            return [0, 1, 2, 3]

    assert FrozenFeatureData(Listing()).label_values() == [0, 1, 2, 3]
    assert FrozenFeatureData(ShadeData()).label_values is None


def test_entries_are_keyed_by_weights_and_data_not_by_loader_options(tmp_path):
    cache = str(tmp_path / "cache")

    def run(probe, **data):
        calls = count_encoder_calls(probe)
        fit(probe, FrozenFeatureData(ShadeData(**data), cache_dir=cache), tmp_path, epochs=1)
        return sum(calls)

    assert run(tiny_probe()) == 36
    assert run(tiny_probe(), batch_size=6, seed=5) == 0  # another order and batch size: the same features
    assert run(tiny_probe(seed=1)) == 36  # other weights (another random encoder)
    assert run(tiny_probe(), frames_per_clip=6) == 36  # other clips
    one_layer = tiny_probe()
    one_layer.layers = [1]  # the last layer alone: its entries exist already
    assert run(one_layer) == 0


def test_data_without_fixed_training_views_is_refused_with_a_clear_message(tmp_path, demo_manifests):
    class Augmenting(ShadeData):
        fixed_train_views = False

    with pytest.raises(NotImplementedError, match="probe it without the feature cache"):
        fit(tiny_probe(), FrozenFeatureData(Augmenting(), cache_dir=str(tmp_path)), tmp_path, epochs=1)
    with pytest.raises(ValueError, match="dtype"):
        FrozenFeatureData(ShadeData(), dtype="float8")


def test_video_data_module_serves_fixed_views_of_its_training_clips(demo_manifests):
    data = VideoDataModule(train_manifest=str(demo_manifests.train), val_manifest=str(demo_manifests.val),
                           frames_per_clip=8, crop_size=32, num_workers=0, eval_views=2, report_skipped=False)
    data.setup("fit")
    fixed = data.fixed_view_dataset("train")
    assert len(fixed) == len(data.train_dataset) and not fixed.train
    first, again = fixed[(3, 0, 0)], fixed[(3, 7, 1)]
    assert first["video"].shape == (2, 3, 8, 32, 32)  # two spatial views
    assert torch.equal(first["video"], again["video"])  # the same tensors in every epoch
    assert data.fixed_view_dataset("val") is data.val_dataset
    with pytest.raises(ValueError, match="split must be"):
        data.fixed_view_dataset("holdout")


def test_wilson_interval_and_counts():
    low, high = wilson_interval(45, 50)
    assert (round(low, 4), round(high, 4)) == (0.7864, 0.9565)  # Wilson (1927), e.g. Newcombe (1998)'s table
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    half = (wilson_interval(600, 1200)[1] - wilson_interval(600, 1200)[0]) / 2
    assert half == pytest.approx(1.96 * math.sqrt(0.25 / 1200), rel=0.01)  # ~ +-2.8 % at 50 % on 1200 clips
    with pytest.raises(ValueError):
        wilson_interval(5, 4)
    metric = TopKCounts(2)
    metric.update(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]]), torch.tensor([1, 0]))
    accuracy, low, high, total = metric.compute().tolist()
    assert (accuracy, total) == (0.5, 2) and low < 0.5 < high


def test_cache_false_serves_the_wrapped_modules_own_loaders():
    wrapped = FrozenFeatureData(ShadeData(), cache=False)
    wrapped.setup("fit")
    batch = next(iter(wrapped.train_dataloader()))
    assert "video" in batch and "features" not in batch
    assert next(iter(wrapped.val_dataloader()))["video"].shape == (4, 3, 4, 16, 16)
