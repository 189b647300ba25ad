"""Frozen probes: the attentive pooler, multi-view averaging, label tasks, the frozen feature
extractor of each objective, and a Probe that learns a separable task through Lightning."""

import lightning.pytorch as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from arjepa_pl.evaluation import DEMO_TASKS, Probe, ProbeTask, average_view_probabilities, flatten_views
from arjepa_pl.models import (AttentiveClassifier, AttentivePooler, FeatureExtractor, LinearClassifier, PatchKMeans,
                              VisionTransformer, block_causal_mask)
from arjepa_pl.objectives import VJEPA
from arjepa_pl.objectives.ar_video import ARVideo
from tests.read_backs import ListedLabels, ReadBacks


def tiny_encoder(**kw) -> VisionTransformer:
    return VisionTransformer(**{**dict(embed_dim=32, depth=3, num_heads=2, patch_size=8, tubelet_size=2), **kw})


def test_attentive_pooler_shapes_and_every_token_matters():
    torch.manual_seed(0)
    for blocks in (0, 2):
        pooler = AttentivePooler(32, num_heads=4, self_attn_blocks=blocks)
        tokens = torch.randn(3, 10, 32, requires_grad=True)
        pooled = pooler(tokens)
        assert pooled.shape == (3, 32)
        pooled[1].sum().backward()
        grad = tokens.grad.abs().sum(-1)
        assert (grad[1] > 0).all(), "a token has no influence on the pooled output"
        assert (grad[[0, 2]] == 0).all(), "samples leak into each other"
    assert AttentiveClassifier(32, 5, num_heads=4)(torch.randn(2, 7, 32)).shape == (2, 5)
    assert LinearClassifier(32, 5)(torch.randn(2, 7, 32)).shape == (2, 5)


def test_multiview_averages_softmax_over_each_samples_views():
    # Two samples of three views; sample 0's views disagree, sample 1's agree.
    logits = torch.tensor([[10.0, 0.0], [0.0, 10.0], [10.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    probs = average_view_probabilities(logits, views=3)
    p = torch.tensor([10.0, 0.0]).softmax(0)
    assert torch.allclose(probs[0], (2 * p + p.flip(0)) / 3)
    assert torch.allclose(probs[1], torch.tensor([0.5, 0.5]))
    assert torch.allclose(average_view_probabilities(logits, 1), logits.softmax(-1))
    with pytest.raises(ValueError, match="whole number"):
        average_view_probabilities(logits, views=4)
    clips = torch.randn(2, 3, 3, 4, 8, 8)  # [B, V, C, T, H, W]
    flat, views = flatten_views(clips, sample_ndim=4)
    assert views == 3 and flat.shape == (6, 3, 4, 8, 8) and torch.equal(flat[4], clips[1, 1])
    assert flatten_views(clips[:, 0], 4)[1] == 1
    with pytest.raises(ValueError, match="view axis"):
        flatten_views(torch.randn(2, 8, 8), 4)


def test_probe_tasks_read_one_factor_of_the_label_and_refuse_out_of_range_classes():
    shape, direction, cls = DEMO_TASKS
    labels = torch.arange(12)
    assert shape.targets(labels).tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert direction.targets(labels).tolist() == [0, 1, 2, 3] * 3
    assert torch.equal(cls.targets(labels), labels)
    with pytest.raises(ValueError, match="label 12 gives class 3"):
        shape.targets(torch.tensor([12]))
    with pytest.raises(ValueError, match="outside its 10 classes"):
        ProbeTask("c", 10).targets(labels)
    with pytest.raises(ValueError, match=">= 0"):
        cls.targets(torch.tensor([-1]))
    with pytest.raises(ValueError, match="num_classes"):
        ProbeTask("x", 1)


def test_each_objective_hands_probes_the_encoder_as_it_was_trained():
    torch.manual_seed(0)
    clip = torch.randn(2, 3, 4, 16, 16)
    jepa = VJEPA(tiny_encoder(), predictor_embed_dim=16, predictor_depth=1, predictor_num_heads=2)
    with torch.no_grad():
        jepa.target_encoder.blocks[0].mlp.fc2.weight.add_(torch.randn(32, 128))  # teacher != student
        (last,) = jepa.feature_extractor()(clip)
        assert torch.allclose(last, jepa.target_encoder(clip), atol=1e-6)
        assert not torch.allclose(last, jepa.encoder(clip), atol=1e-3)
        enc = jepa.target_encoder
        first, again = jepa.feature_extractor()(clip, [0, -1])
        assert torch.allclose(first, enc.norm(enc.blocks[0](enc.embed(clip))), atol=1e-6)
        assert torch.equal(again, last)

    ar = ARVideo(tiny_encoder(), rollout_context_frames=2)
    with torch.no_grad():
        (causal,) = ar.feature_extractor()(clip)
        tokens = ar.encoder.embed(clip)
        assert torch.allclose(causal, ar.encoder.forward_tokens(tokens, block_causal_mask(2, 4)), atol=1e-6)
        assert not torch.allclose(causal, ar.encoder(clip), atol=1e-4)
        # Block-causal: the first step's features do not depend on the second step.
        later = clip.clone()
        later[:, :, 2:] += 1.0
        assert torch.allclose(ar.feature_extractor()(later)[0][:, :4], causal[:, :4], atol=1e-6)

    with pytest.raises(ValueError, match="does not exist"):
        jepa.feature_extractor()(clip, [3])
    spec = FeatureExtractor(tiny_encoder(), PatchKMeans(8, 3 * 2 * 8 * 8), block_causal=True).spec()
    rebuilt = FeatureExtractor.from_spec(spec)
    assert rebuilt.spec() == spec and rebuilt.tokenizer.num_codes == 8 and rebuilt.block_causal


class ShadeClips(Dataset):
    """Clips whose brightness is their label: separable by any encoder. Two views per clip."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        label = i % 3
        g = torch.Generator().manual_seed(i)
        video = (label - 1.0) + 0.05 * torch.randn(2, 3, 4, 16, 16, generator=g)
        return {"video": video, "label": label}


def test_probe_learns_a_separable_task_with_the_encoder_frozen(tmp_path):
    torch.manual_seed(0)
    for kind in ("attentive", "linear"):
        encoder = tiny_encoder()
        before = {k: v.clone() for k, v in encoder.state_dict().items()}
        probe = Probe(tasks=[ProbeTask("shade", 3)], encoder=encoder, probe=kind, layers=[0, -1], lr=3e-3,
                      start_lr=3e-3)
        assert not any(p.requires_grad for p in probe.extractor.parameters())
        trainer = L.Trainer(max_epochs=15, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
        trainer.fit(probe, DataLoader(ShadeClips(24), batch_size=6, shuffle=True),
                    DataLoader(ShadeClips(12), batch_size=6))
        metrics = trainer.callback_metrics
        assert metrics["val/shade/l0/top1"] >= 0.99 and metrics["val/shade/l2/top1"] >= 0.99, (kind, metrics)
        assert not probe.extractor.training
        assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items()), "the encoder moved"


class CountingProbe(Probe):
    """Counts the values its training steps read back to the host (on a GPU, each a wait)."""

    read_backs = 0

    def training_step(self, batch, batch_idx):
        with ReadBacks() as reads:
            loss = super().training_step(batch, batch_idx)
        self.read_backs += reads.count
        return loss


def test_listed_labels_are_checked_when_the_fit_starts_not_read_back_every_step(tmp_path):
    def fit(data=None, labels=None):
        probe = CountingProbe(tasks=[ProbeTask("shade", 3)], encoder=tiny_encoder(), lr=1e-3, start_lr=1e-3)
        trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                            limit_val_batches=0)
        trainer.fit(probe, train_dataloaders=labels, datamodule=data)
        return probe.read_backs

    assert fit(data=ListedLabels(ShadeClips(12), 6, (0, 1, 2))) == 0
    assert fit(labels=DataLoader(ShadeClips(12), batch_size=6)) > 0  # a loader lists nothing: each batch checked
    with pytest.raises(ValueError, match="label 3 gives class 3, outside its 3 classes"):
        fit(data=ListedLabels(ShadeClips(12), 6, (0, 1, 2, 3)))
    # A trainer keeps the data module of its last fit: a later fit on plain loaders checks its batches.
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(Probe(tasks=[ProbeTask("shade", 3)], encoder=tiny_encoder()), datamodule=ListedLabels(
        ShadeClips(12), 6, (0, 1, 2)))
    wider = [{**ShadeClips(6)[i], "label": 5} for i in range(6)]
    trainer.fit_loop.epoch_loop.max_steps = 2  # one more step
    with pytest.raises(ValueError, match="label 5 gives class 5, outside its 3 classes"):
        trainer.fit(Probe(tasks=[ProbeTask("shade", 3)], encoder=tiny_encoder()), DataLoader(wider, batch_size=6))


def test_probe_needs_an_encoder_and_distinct_tasks():
    with pytest.raises(ValueError, match="encoder_checkpoint"):
        Probe(tasks=[ProbeTask("a", 2)])
    with pytest.raises(ValueError, match="distinct"):
        Probe(tasks=[ProbeTask("a", 2), ProbeTask("a", 3)], encoder=tiny_encoder())
    probe = Probe(tasks=[ProbeTask("a", 2)], encoder=tiny_encoder())
    with pytest.raises(ValueError, match="batch\\['label'\\]"):
        probe.training_step({"video": torch.randn(2, 3, 4, 16, 16)}, 0)
