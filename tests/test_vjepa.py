"""The V-JEPA objective: EMA teacher, schedules, loss, optimiser groups, checkpoints."""

import lightning.pytorch as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from arjepa_pl import schedules
from arjepa_pl.masks import MaskConfig
from arjepa_pl.models import VisionTransformer
from arjepa_pl.objectives import VJEPA
from data_modules.datamodules import objective_collate_fn


class RandomClips(Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"video": torch.randn(3, 4, 16, 16, generator=g), "label": i % 3, "index": i, "epoch": 0, "position": i}


class RandomClipData(L.LightningDataModule):
    """Stands in for VideoDataModule: collates with the objective's collate_fn(), as data modules must."""

    def train_dataloader(self):
        return DataLoader(RandomClips(), batch_size=4, collate_fn=objective_collate_fn(self.trainer))


def tiny_vjepa(**kw) -> VJEPA:
    encoder = VisionTransformer(embed_dim=32, depth=2, num_heads=2, patch_size=8, tubelet_size=2)
    args = dict(predictor_embed_dim=16, predictor_depth=1, predictor_num_heads=2,
                masks=[MaskConfig(2, (0.3, 0.3)), MaskConfig(1, (0.6, 0.6))], lr=1e-3, start_lr=1e-3, warmup_steps=0)
    args.update(kw)
    return VJEPA(encoder, **args)


def trainer(tmp_path, **kw) -> L.Trainer:
    args = dict(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    args.update(kw)
    return L.Trainer(**args)


class RecordTarget(L.Callback):
    def __init__(self):
        self.snapshots = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.snapshots.append([p.detach().clone() for p in module.target_encoder.parameters()])


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_target_moves_only_after_a_real_optimizer_step(tmp_path):
    torch.manual_seed(0)
    model = tiny_vjepa()
    initial = [p.detach().clone() for p in model.target_encoder.parameters()]
    assert _same(initial, [p.detach() for p in model.encoder.parameters()])
    record = RecordTarget()
    # Two micro-batches per optimizer step: after the first there has been no step yet.
    trainer(tmp_path, max_steps=2, accumulate_grad_batches=2, callbacks=[record]).fit(model, RandomClipData())
    first, second, third, fourth = record.snapshots
    assert _same(first, initial), "teacher moved before any optimizer step"
    assert not _same(second, initial), "teacher did not move after the first optimizer step"
    assert _same(third, second), "teacher moved on a micro-batch without an optimizer step"
    assert not _same(fourth, third)
    # ... and it moved *towards* the student, not equal to it (momentum < 1).
    assert not _same(fourth, [p.detach() for p in model.encoder.parameters()])
    assert not any(p.requires_grad for p in model.target_encoder.parameters())


def test_ema_update_formula():
    model = tiny_vjepa()
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.target_encoder.parameters()]
    model.update_target(0.9)
    for k0, q, k1 in zip(before, model.encoder.parameters(), model.target_encoder.parameters()):
        torch.testing.assert_close(k1, 0.9 * k0 + 0.1 * q)


def test_schedule_values():
    assert schedules.linear(0, 100, 0.998, 1.0) == 0.998
    assert schedules.linear(50, 100, 0.998, 1.0) == pytest.approx(0.999)
    assert schedules.linear(100, 100, 0.998, 1.0) == 1.0
    assert schedules.linear(500, 100, 0.998, 1.0) == 1.0  # clamped past the end
    assert schedules.warmup_cosine(0, 10, 110, 2e-4, 6.25e-4, 1e-6) == pytest.approx(2e-4)
    assert schedules.warmup_cosine(5, 10, 110, 2e-4, 6.25e-4, 1e-6) == pytest.approx((2e-4 + 6.25e-4) / 2)
    assert schedules.warmup_cosine(10, 10, 110, 2e-4, 6.25e-4, 1e-6) == pytest.approx(6.25e-4)
    assert schedules.warmup_cosine(60, 10, 110, 2e-4, 6.25e-4, 1e-6) == pytest.approx((6.25e-4 + 1e-6) / 2)
    assert schedules.warmup_cosine(110, 10, 110, 2e-4, 6.25e-4, 1e-6) == pytest.approx(1e-6)
    assert schedules.cosine(0, 100, 0.04, 0.4) == pytest.approx(0.04)
    assert schedules.cosine(100, 100, 0.04, 0.4) == pytest.approx(0.4)


def test_momentum_schedule_in_the_module(tmp_path):
    model = tiny_vjepa(ema_momentum=(0.99, 1.0), total_steps=10)
    assert [round(model.momentum_at(s), 6) for s in (0, 5, 10)] == [0.99, 0.995, 1.0]


def test_schedules_are_applied_per_step(tmp_path):
    class Record(L.Callback):
        seen = []

        def on_train_batch_end(self, trainer, module, *args):
            g = trainer.optimizers[0].param_groups
            self.seen.append((g[0]["lr"], g[0]["weight_decay"], g[1]["weight_decay"]))

    model = tiny_vjepa(lr=1e-3, start_lr=0.0, final_lr=0.0, warmup_steps=2, weight_decay=0.1, final_weight_decay=0.3)
    trainer(tmp_path, max_steps=4, callbacks=[Record()]).fit(model, RandomClipData())
    lrs = [s[0] for s in Record.seen]
    assert lrs[:3] == pytest.approx([0.0, 5e-4, 1e-3])
    assert lrs[3] == pytest.approx(5e-4)  # halfway down the cosine (steps 2 -> 4)
    assert Record.seen[0][1] == pytest.approx(0.1) and Record.seen[-1][1] > 0.1
    assert all(s[2] == 0.0 for s in Record.seen), "biases and norms must not be decayed"


def test_no_weight_decay_on_biases_and_1d_params():
    model = tiny_vjepa()
    decay, no_decay = model.configure_optimizers().param_groups
    decayed = {id(p) for p in decay["params"]}
    for name, p in model.named_parameters():
        if name.startswith("target_encoder"):
            assert id(p) not in decayed and all(id(p) != id(q) for q in no_decay["params"])
        elif name.endswith("bias") or p.ndim == 1:
            assert id(p) not in decayed, name
        else:
            assert id(p) in decayed, name


def test_loss_exponent_and_layernormed_targets():
    torch.manual_seed(0)
    from arjepa_pl.masks import MaskCollator

    model = tiny_vjepa()
    samples = [RandomClips()[i] for i in range(4)]
    batch = MaskCollator(model.masks, tubelet_size=2, patch_size=8, seed=0)(samples)
    l1, per_mask = model.jepa_loss(batch)
    assert len(per_mask) == 2 and torch.isclose(l1, torch.stack(per_mask).mean())
    # Predictions are ~0 at init and targets are LayerNorm'ed (unit variance): |z-h| ~ E|N(0,1)| ~ 0.8.
    assert 0.5 < l1.item() < 1.1
    model.loss_exp = 2.0
    l2, _ = model.jepa_loss(batch)
    assert 0.25 < l2.item() < 0.8  # mean(z^2)/2 ~ 0.5
    with pytest.raises(ValueError, match="masks"):
        model.jepa_loss({"video": batch["video"]})


def test_checkpoint_loads_with_weights_only(tmp_path):
    model = tiny_vjepa()
    trainer(tmp_path, max_steps=1, enable_checkpointing=True).fit(model, RandomClipData())
    (path,) = (tmp_path / "checkpoints").glob("*.ckpt")
    ckpt = torch.load(path, weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert hp["encoder"]["init_args"]["embed_dim"] == 32
    assert hp["masks"][0]["num_blocks"] == 2
    assert ckpt["feature_extractor"]["spec"]["encoder"]["patch_size"] == 8
    assert ckpt["feature_extractor"]["prefixes"] == {"encoder": "target_encoder."}
    assert any(k.startswith("target_encoder.") for k in ckpt["state_dict"])
    assert not any("pos_embed" in k for k in ckpt["state_dict"]), "sin-cos tables are derived, not saved"


def test_invalid_arguments_are_clear():
    with pytest.raises(ValueError, match="ema_momentum"):
        tiny_vjepa(ema_momentum=(0.9, 1.5))
    with pytest.raises(ValueError, match="at least one mask"):
        tiny_vjepa(masks=[])
    with pytest.raises(ValueError, match="loss_exp"):
        tiny_vjepa(loss_exp=0)
