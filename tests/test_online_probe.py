"""The online probe: it learns what the features encode (linear and kNN), never touches the objective it
watches, resumes exactly from a checkpoint, averages its heads' gradients across ranks, and fails
clearly on what it cannot probe."""

import subprocess
import sys
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from torch.utils.data import DataLoader

from arjepa_pl.callbacks import OnlineProbe
from arjepa_pl.evaluation import ProbeTask
from arjepa_pl.models import FeatureExtractor, VisionTransformer
from arjepa_pl.objectives import JEPA
from data_modules.datamodules import objective_collate_fn
from tests.dist_helpers import cli_env
from tests.read_backs import ListedLabels, ReadBacks

REPO = Path(__file__).resolve().parents[1]
# A label that encodes two factors, like the demo set's shape * 4 + direction.
TASKS = [ProbeTask("a", 3, divisor=4), ProbeTask("b", 4, modulo=4)]


def factor_images(n: int, seed: int = 0) -> list[dict]:
    """16x16 images whose channel 0 encodes label // 4 and channel 1 label % 4, plus noise: any
    encoder that keeps the channel means keeps the labels linearly separable."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 12, (n,), generator=g)
    images = 0.1 * torch.randn(n, 3, 16, 16, generator=g)
    images[:, 0] += (labels // 4).float().view(-1, 1, 1) - 1.0
    images[:, 1] += (labels % 4).float().view(-1, 1, 1) - 1.5
    return [{"image": x, "label": int(y)} for x, y in zip(images, labels)]


class FixedEncoder(L.LightningModule):
    """An objective whose encoder never changes (lr 0): what the probe can learn is a fixed target."""

    def __init__(self, extractor: bool = True, labels: bool = True, n: int = 64):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = VisionTransformer(embed_dim=32, depth=2, num_heads=2, patch_size=8, video=False)
        self.has_extractor, self.labels, self.n = extractor, labels, n

    def feature_extractor(self):
        return FeatureExtractor(self.encoder) if self.has_extractor else None

    def training_step(self, batch, batch_idx):
        return self.encoder(batch["image"]).mean()

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def _loader(self, seed):
        samples = factor_images(self.n, seed)
        if not self.labels:
            samples = [{"image": s["image"]} for s in samples]
        return DataLoader(samples, batch_size=16)

    def train_dataloader(self):
        return self._loader(0)

    def val_dataloader(self):
        return self._loader(1)  # other images of the same classes


def fit(module, probe, tmp_path, steps, ckpt_path=None, **trainer_args):
    args = dict(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                num_sanity_val_steps=0, val_check_interval=4, check_val_every_n_epoch=None)
    args.update(trainer_args)
    trainer = L.Trainer(callbacks=[probe], **args)
    trainer.fit(module, ckpt_path=ckpt_path)
    return trainer


@pytest.mark.slow
@pytest.mark.parametrize("method, pooling", [("linear", "mean"), ("knn", "mean"), ("linear", "attentive")])
def test_probe_learns_what_the_features_encode(tmp_path, method, pooling):
    probe = OnlineProbe(TASKS, method=method, pooling=pooling, lr=0.05 if pooling == "mean" else 1e-2, k=5,
                        bank_size=128)
    trainer = fit(FixedEncoder(n=128), probe, tmp_path, steps=48)
    metrics = trainer.callback_metrics
    for task in ("a", "b"):
        assert metrics[f"online_probe/{task}/acc"] >= 0.95, dict(metrics)
        assert f"online_probe/{task}/train_acc" in metrics
    assert probe.probe_steps == 48 and probe.seconds > 0


@pytest.mark.slow
def test_probe_on_shuffled_labels_stays_near_chance(tmp_path):
    """The accuracy above comes from the features, not from the probe memorising the val set."""
    class Shuffled(FixedEncoder):
        def val_dataloader(self):
            samples = factor_images(self.n, 1)
            perm = torch.randperm(len(samples), generator=torch.Generator().manual_seed(0))
            return DataLoader([{**s, "label": samples[int(i)]["label"]} for s, i in zip(samples, perm)], batch_size=16)

    trainer = fit(Shuffled(), OnlineProbe(TASKS, lr=0.05), tmp_path, steps=24)
    assert trainer.callback_metrics["online_probe/b/acc"] < 0.6


def tiny_jepa() -> JEPA:
    torch.manual_seed(0)
    encoder = VisionTransformer(embed_dim=32, depth=2, num_heads=2, patch_size=8, tubelet_size=2)
    return JEPA(encoder, predictor_embed_dim=16, predictor_depth=1, predictor_num_heads=2, lr=1e-3,
                start_lr=1e-3, total_steps=10)


class Clips(L.LightningDataModule):
    """Random labelled clips, collated with the objective's collate_fn() (JEPA's masks)."""

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        samples = [{"video": torch.randn(3, 4, 16, 16, generator=g), "label": i % 12, "index": i, "epoch": 0,
                    "position": 0} for i in range(16)]
        return DataLoader(samples, batch_size=4, collate_fn=objective_collate_fn(self.trainer))


def test_the_objective_trains_bit_identically_with_and_without_the_probe(tmp_path):
    weights = []
    for callbacks in ([], [OnlineProbe(TASKS, every_n_steps=1)]):
        L.seed_everything(0)
        model = tiny_jepa()
        trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                            callbacks=callbacks)
        trainer.fit(model, Clips())
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
        if callbacks:
            assert callbacks[0].probe_steps == 3
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
    untrained = tiny_jepa().state_dict()["encoder.blocks.0.attn.qkv.weight"]
    assert not torch.equal(weights[0]["encoder.blocks.0.attn.qkv.weight"], untrained), "the run must train"


def test_the_probe_reads_the_teacher_tokens_the_training_step_hands_over(tmp_path):
    """V-JEPA's training step returns its teacher's tokens: they are exactly what the feature extractor
    gives at the last layer, and a probe trained on them ends as one that runs the extractor."""
    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            (self.expected,) = pl_module.feature_extractor()(batch["video"])
            self.outputs, self.batch = outputs, batch

    torch.manual_seed(0)
    encoder = VisionTransformer(embed_dim=32, depth=2, num_heads=2, patch_size=8, tubelet_size=2)
    model = JEPA(encoder, predictor_embed_dim=16, predictor_depth=1, predictor_num_heads=2, lr=1e-3,
                 start_lr=1e-3, total_steps=10, ema_momentum=(1.0, 1.0))  # a teacher the step leaves as it was
    record = Record()
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[record])
    trainer.fit(model, Clips())
    given = record.outputs["features"]
    assert torch.equal(given, record.expected) and not given.requires_grad
    heads = []
    for outputs in (record.outputs, {"loss": record.outputs["loss"]}):  # handed over / computed by the probe
        probe = OnlineProbe(TASKS, pooling="attentive")
        probe.setup(trainer, model, "fit")
        probe.on_fit_start(trainer, model)
        probe.on_train_batch_end(trainer, model, outputs, record.batch, 0)
        heads.append(probe.head.state_dict())
    for key in heads[0]:
        assert torch.equal(heads[0][key], heads[1][key]), key


def test_features_carry_no_gradient():
    module = FixedEncoder()
    probe = OnlineProbe(TASKS)
    probe.setup(None, module, "fit")
    probe.on_fit_start(None, module)
    trainer = L.Trainer(accelerator="cpu", logger=False)
    batch = torch.utils.data.default_collate(factor_images(8))
    features, labels = probe.features(trainer, batch)
    assert features.shape == (8, 32) and not features.requires_grad
    before = [p.clone() for p in probe.head.parameters()]
    probe._linear_step(features, probe._targets(labels))
    assert all(p.grad is None for p in module.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(before, probe.head.parameters()))
    # Several views per clip ([B, V, C, H, W]) are pooled together: one feature per clip.
    views, _ = probe.features(trainer, {"image": batch["image"][:, None].expand(-1, 2, -1, -1, -1), "label": labels})
    torch.testing.assert_close(views, features)
    # The attentive heads read every token of every view.
    attentive = OnlineProbe(TASKS, pooling="attentive")
    attentive.setup(None, module, "fit")
    attentive.on_fit_start(None, module)
    two_views = {"image": batch["image"][:, None].expand(-1, 2, -1, -1, -1), "label": labels}
    tokens, _ = attentive.features(trainer, two_views)
    assert tokens.shape == (8, 2 * 4, 32) and not tokens.requires_grad
    assert [head.linear.out_features for head in attentive.head] == [3, 4]


@pytest.mark.parametrize("method, pooling", [("linear", "mean"), ("knn", "mean"), ("linear", "attentive")])
def test_resume_continues_exactly(tmp_path, method, pooling):
    def probe():
        return OnlineProbe(TASKS, method=method, pooling=pooling, lr=0.05, k=3, bank_size=24)

    straight = probe()
    fit(FixedEncoder(), straight, tmp_path / "straight", steps=8)
    first = probe()
    fit(FixedEncoder(), first, tmp_path / "resumed", steps=4, enable_checkpointing=True)
    (ckpt,) = (tmp_path / "resumed").rglob("*.ckpt")
    resumed = probe()
    fit(FixedEncoder(), resumed, tmp_path / "resumed", steps=8, ckpt_path=str(ckpt))
    assert resumed.batches_seen == straight.batches_seen == 8
    a, b = straight.state_dict(), resumed.state_dict()
    if method == "linear":
        for key in a["head"]:
            assert torch.equal(a["head"][key], b["head"][key]), key
        assert a["optimizer"]["state"][0]["step"] == b["optimizer"]["state"][0]["step"]
        assert torch.equal(a["optimizer"]["state"][0]["exp_avg_sq"], b["optimizer"]["state"][0]["exp_avg_sq"])
    else:
        assert torch.equal(a["bank"], b["bank"]) and torch.equal(a["bank_labels"], b["bank_labels"])
        assert a["bank_next"] == b["bank_next"] == (8 * 16) % 24


def test_state_loaded_before_setup_is_applied_at_setup():
    """Lightning restores callbacks before setup in some stages (and validate / predict never build the head)."""
    module, trained = FixedEncoder(), OnlineProbe(TASKS)
    trained.setup(None, module, "fit")
    torch.nn.init.ones_(trained.head.weight)
    trained.batches_seen = 7
    fresh = OnlineProbe(TASKS)
    fresh.load_state_dict(trained.state_dict())  # no error: nothing to load into yet
    fresh.setup(None, module, "predict")
    assert fresh.head is None
    fresh.setup(None, module, "fit")
    assert fresh.batches_seen == 7 and torch.equal(fresh.head.weight, trained.head.weight)


def test_a_changed_probe_starts_afresh_on_resume():
    module = FixedEncoder()
    old = OnlineProbe(TASKS)
    old.setup(None, module, "fit")
    new = OnlineProbe(TASKS[:1])
    new.setup(None, module, "fit")
    with pytest.warns(UserWarning, match="starts afresh"):
        new.load_state_dict(old.state_dict())


@pytest.mark.slow
def test_ddp_ranks_keep_identical_heads_equal_to_one_process():
    """2 gloo processes, each with half the batch, end with the head one process trains on all of it
    (and the bank); the same with the encoder sharded by FSDP2."""
    done = subprocess.run([sys.executable, "-m", "tests.online_probe_ddp"], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "heads identical and equal to one process" in done.stdout
    assert "banks identical" in done.stdout
    assert "the same under FSDP2" in done.stdout


# ---------------------------------------------------------------------------------------------
# clear errors


def test_an_objective_without_features_is_refused_at_setup():
    with pytest.raises(TypeError, match="no feature_extractor"):
        OnlineProbe(TASKS).setup(None, FixedEncoder(extractor=False), "fit")


def test_unlabelled_batches_are_refused(tmp_path):
    with pytest.raises(ValueError, match="'label'"):
        fit(FixedEncoder(labels=False), OnlineProbe(TASKS), tmp_path, steps=1)


def test_negative_labels_are_refused(tmp_path):
    class Unlabelled(FixedEncoder):
        def train_dataloader(self):
            return DataLoader([{**s, "label": -1} for s in factor_images(16)], batch_size=16)

    with pytest.raises(ValueError, match="labels must be >= 0.*unlabelled data"):
        fit(Unlabelled(), OnlineProbe(TASKS), tmp_path, steps=1)


def test_labels_outside_a_task_are_refused(tmp_path):
    with pytest.raises(ValueError, match="OnlineProbe: task 'b': label \\d+ gives class \\d+, outside its 4 classes"):
        fit(FixedEncoder(), OnlineProbe([ProbeTask("b", 4)]), tmp_path, steps=1)  # no modulo: labels run to 11


class CountingReadBacks(OnlineProbe):
    """Counts the values the label checks of training batches read back to the host (.item(), int() of
    tensors: on a GPU each one waits for the device)."""

    read_backs = 0
    _training = False

    def on_train_batch_end(self, *args, **kwargs):
        self._training = True
        try:
            super().on_train_batch_end(*args, **kwargs)
        finally:
            self._training = False

    def _targets(self, labels, check=True):
        with ReadBacks() as reads:
            targets = super()._targets(labels, check)
        if self._training:
            self.read_backs += reads.count
        return targets


def test_labels_a_data_module_lists_are_checked_once_not_read_back_every_batch(tmp_path):
    class NoLoaders(FixedEncoder):  # the data module's loaders
        train_dataloader = val_dataloader = None

    probe = CountingReadBacks(TASKS)
    trainer = L.Trainer(callbacks=[probe], accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        limit_val_batches=0)
    trainer.fit(NoLoaders(), datamodule=ListedLabels(factor_images(32), 16, range(12)))
    assert probe.probe_steps == 2 and probe.read_backs == 0  # on a GPU: no wait for the device per batch
    unlisted = CountingReadBacks(TASKS)
    fit(FixedEncoder(), unlisted, tmp_path, steps=2)
    assert unlisted.read_backs > 0  # batches of a data set that lists nothing are checked as they come
    with pytest.raises(ValueError, match="OnlineProbe: task 'a': label 12 gives class 3, outside its 3 classes"):
        trainer = L.Trainer(callbacks=[OnlineProbe(TASKS)], accelerator="cpu", max_steps=1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)
        trainer.fit(NoLoaders(), datamodule=ListedLabels(factor_images(32), 16, range(13)))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="distinct"):
        OnlineProbe([ProbeTask("a", 2), ProbeTask("a", 3)])
    with pytest.raises(ValueError, match="every_n_steps"):
        OnlineProbe(TASKS, every_n_steps=0)
    with pytest.raises(ValueError, match="bank_size >= k"):
        OnlineProbe(TASKS, method="knn", k=10, bank_size=5)
    with pytest.raises(ValueError, match="method"):
        OnlineProbe(TASKS, method="svm")
    with pytest.raises(ValueError, match="pooling must be 'mean' or 'attentive', got 'max'"):
        OnlineProbe(TASKS, pooling="max")
    with pytest.raises(ValueError, match="knn.*use pooling 'mean'"):
        OnlineProbe(TASKS, method="knn", pooling="attentive")
    with pytest.raises(ValueError, match="layer 5 does not exist"):
        OnlineProbe(TASKS, layer=5).setup(None, FixedEncoder(), "fit")
