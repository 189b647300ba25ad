"""Collapse: the VICReg terms, RankMe and the normalised std on hand-made features; the JEPA objective's
prevention options (VICReg, stop-gradient teacher); the collapse monitor's alarm, on a model built to
collapse and on real short runs (a deliberately collapsing one fires, configs/vjepa.yaml does not)."""

import math
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from arjepa_pl.callbacks import CollapseMonitor
from arjepa_pl.cli import ArJepaCLI
from arjepa_pl.feature_stats import (
    normalized_std,
    rankme,
    reverse_playback_similarity,
    vicreg_covariance,
    vicreg_variance,
    within_clip_share,
)
from arjepa_pl.masks import MaskCollator
from arjepa_pl.models import VisionTransformer
from arjepa_pl.objectives import JEPA
from tests.dist_helpers import cli_env

REPO = Path(__file__).resolve().parents[1]


def whitened(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """n vectors whose sample covariance is exactly the identity (ZCA-whitened Gaussian noise)."""
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x - x.mean(0)
    cov = x.T @ x / (n - 1)
    evals, evecs = torch.linalg.eigh(cov)
    return (x @ evecs @ torch.diag(evals.rsqrt()) @ evecs.T).float()


# ---------------------------------------------------------------------------------------------
# feature statistics on hand-made tensors


def test_vicreg_variance_constant_batch_gets_the_maximal_penalty():
    constant = torch.full((256, 32), 3.0)
    assert vicreg_variance(constant).item() == pytest.approx(1.0 - math.sqrt(1e-4), abs=1e-6)
    # Token-shaped input [B, N, D] is the same rows.
    assert vicreg_variance(constant.view(8, 32, 32)).item() == pytest.approx(1.0 - math.sqrt(1e-4), abs=1e-6)


def test_vicreg_terms_vanish_on_a_whitened_batch():
    z = whitened(512, 32)
    assert vicreg_variance(z).item() == 0.0
    assert vicreg_covariance(z).item() < 1e-8
    # ... and not on a correlated one: every dimension a copy of the first.
    copies = z[:, :1].expand(-1, 32)
    assert vicreg_covariance(copies).item() == pytest.approx(31.0, rel=1e-4)  # (32*32 - 32) / 32
    # Half the spread: std 0.5 in every dimension -> hinge 1 - sqrt(0.25 + 1e-4).
    assert vicreg_variance(0.5 * z).item() == pytest.approx(1 - math.sqrt(0.25 + 1e-4), rel=1e-4)


def test_vicreg_terms_are_differentiable():
    z = torch.randn(64, 8, requires_grad=True)
    (vicreg_variance(0.1 * z) + vicreg_covariance(z)).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_vicreg_terms_across_ddp_ranks_equal_one_process_on_the_global_batch():
    # Per-rank statistics would regularise each GPU's share of the batch, not the batch: a subprocess
    # (multi-process tests stay out of the pytest process) runs 2 gloo ranks holding 13 and 27 rows.
    done = subprocess.run([sys.executable, "-m", "tests.vicreg_ddp"], cwd=REPO, env=cli_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "vicreg across ranks = one process" in done.stdout and "per rank differs" in done.stdout, done.stdout


def test_rankme_rank_one_is_one_and_isotropic_is_the_dimension():
    g = torch.Generator().manual_seed(0)
    rank_one = torch.randn(2048, 1, generator=g) * torch.randn(1, 64, generator=g)
    assert rankme(rank_one) == pytest.approx(1.0, abs=0.01)
    isotropic = torch.randn(4096, 64, generator=g)
    assert 0.95 * 64 < rankme(isotropic) <= 64
    # 8 orthogonal directions of equal spread, embedded in 64 dimensions -> 8.
    basis = torch.linalg.qr(torch.randn(64, 8, generator=g)).Q  # [64, 8], orthonormal columns
    assert rankme(whitened(1024, 8) @ basis.T) == pytest.approx(8, rel=0.01)


def test_normalized_std_isotropic_about_one_collapsed_zero():
    g = torch.Generator().manual_seed(0)
    assert normalized_std(torch.randn(4096, 128, generator=g)) == pytest.approx(1.0, abs=0.05)
    one_direction = torch.randn(1, 128, generator=g).expand(512, -1) * torch.rand(512, 1, generator=g)
    assert normalized_std(one_direction) < 1e-3


def test_within_clip_share_is_zero_for_one_code_per_clip_and_splits_the_variance():
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(8, 1, 32, generator=g)
    # Every token of a clip the same (the clip-code shortcut): no variance within clips.
    assert within_clip_share(codes.expand(-1, 64, -1)) == pytest.approx(0.0, abs=1e-6)
    assert within_clip_share(torch.randn(1, 64, 32, generator=g).expand(8, -1, -1)) == pytest.approx(1.0)
    tokens = torch.randn(8, 64, 32, generator=g)
    # Zero-mean noise in every clip with mean squared norm 0.25 * D, on clip codes of mean squared norm D
    # around their mean: within / total = 0.25 / 1.25 exactly (the law of total variance).
    noise = tokens - tokens.mean(1, keepdim=True)
    noise = noise * (0.25 * 32 / noise.pow(2).sum(-1).mean()).sqrt()
    centred = codes - codes.mean(0)
    centred = centred * (32 / centred.pow(2).sum(-1).mean()).sqrt()
    assert within_clip_share(centred + noise) == pytest.approx(0.2, rel=1e-4)
    with pytest.raises(ValueError, match=r"\[B, N, D\] of B >= 2 clips"):
        within_clip_share(tokens[0])


def test_reverse_playback_similarity_is_one_for_order_blind_features_and_near_zero_for_unrelated_ones():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(16, 32, 24, generator=g)
    assert reverse_playback_similarity(tokens, tokens.flip(1)) == pytest.approx(1.0)  # same tokens, other order
    assert abs(reverse_playback_similarity(tokens, torch.randn(16, 32, 24, generator=g))) < 0.2
    with pytest.raises(ValueError, match="differ in shape"):
        reverse_playback_similarity(tokens, tokens[:, :8])


# ---------------------------------------------------------------------------------------------
# prevention options of the JEPA objective


def tiny_jepa(**kw) -> JEPA:
    torch.manual_seed(0)
    encoder = VisionTransformer(embed_dim=32, depth=2, num_heads=2, patch_size=8, tubelet_size=2)
    args = dict(predictor_embed_dim=16, predictor_depth=1, predictor_num_heads=2, lr=1e-3, start_lr=1e-3,
                total_steps=10)
    args.update(kw)
    return JEPA(encoder, **args)


def clip_batch(model: JEPA, n: int = 4) -> dict:
    samples = [{"video": torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(i)), "label": 0,
                "index": i, "epoch": 0, "position": i} for i in range(n)]
    return MaskCollator(model.masks, tubelet_size=2, patch_size=8, seed=0)(samples)


def test_vicreg_terms_join_the_loss_only_when_on():
    off = tiny_jepa()
    batch = clip_batch(off)
    terms = off.jepa_terms(batch)
    assert "vicreg_var" not in terms and "vicreg_cov" not in terms
    on = tiny_jepa(vicreg_var_coeff=2.0, vicreg_cov_coeff=0.5, vicreg_features=["predicted", "context"])
    terms_on = on.jepa_terms(batch)
    prediction = torch.stack([terms_on["loss_mask0"], terms_on["loss_mask1"]]).mean()
    assert terms_on["vicreg_var"] > 0.5  # predictions start near constant: a large variance penalty
    torch.testing.assert_close(terms_on["loss"], prediction + 2.0 * terms_on["vicreg_var"] + 0.5 * terms_on["vicreg_cov"])
    torch.testing.assert_close(terms_on["loss_mask0"], terms["loss_mask0"])  # same weights, same masks
    terms_on["loss"].backward()
    assert on.encoder.patch_embed.proj.weight.grad is not None


def test_stop_grad_teacher_is_the_encoder_itself():
    model = tiny_jepa(teacher="stop_grad")
    assert model.target_encoder is None and model.teacher_encoder is model.encoder
    assert not any(n.startswith("target_encoder") for n, _ in model.named_parameters())
    batch = clip_batch(model)
    targets, _ = model.jepa_forward(batch)
    with torch.no_grad():
        expected = model.encoder(batch["video"])
    torch.testing.assert_close(targets, torch.nn.functional.layer_norm(expected, expected.shape[-1:]))
    assert not targets.requires_grad
    with pytest.raises(RuntimeError, match="no target encoder"):
        model.update_target(0.5)


def test_prevention_options_are_validated():
    with pytest.raises(ValueError, match="teacher"):
        tiny_jepa(teacher="momentum")
    with pytest.raises(ValueError, match="VICReg coefficients"):
        tiny_jepa(vicreg_var_coeff=-1.0)
    with pytest.raises(ValueError, match="vicreg_features"):
        tiny_jepa(vicreg_features=["target"])
    with pytest.raises(ValueError, match="loss"):
        tiny_jepa(loss="l2")


def test_collapse_features_names_and_shapes():
    model = tiny_jepa()
    batch = clip_batch(model)
    feats = model.collapse_features(batch)
    assert set(feats) == {"target", "context", "predicted"}
    assert feats["target"].shape == (4, 2 * 2 * 2, 32)  # every token of the clip
    assert feats["context"].shape[:2] == batch["masks"][0]["context"].shape
    assert feats["predicted"].shape[:2] == batch["masks"][0]["target"].shape
    assert model.collapse_watch == {"rankme": ("target",), "std": ("target", "context")}


# ---------------------------------------------------------------------------------------------
# the monitor on a model made to collapse


class Shrinking(L.LightningModule):
    """Features = x @ W with W pulled towards one direction by every step: a collapse on demand."""

    collapse_watch = {"rankme": ("features",), "std": ("features",)}

    def __init__(self, collapse_from: int = 4):
        super().__init__()
        self.weight = nn.Parameter(torch.eye(16))
        self.collapse_from = collapse_from

    def collapse_features(self, batch):
        return {"features": batch @ self.weight, "ignored": torch.zeros(len(batch), 16)}

    def training_step(self, batch, batch_idx):
        return (batch @ self.weight).pow(2).mean() * 0.0 + self.weight.sum() * 0.0

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.global_step >= self.collapse_from:
            with torch.no_grad():  # squash every column onto the first one
                self.weight.mul_(0.3).add_(0.7 * self.weight[:, :1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return DataLoader(torch.randn(64, 16, generator=torch.Generator().manual_seed(0)), batch_size=32)


def fit(module, tmp_path, monitor, steps=20):
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[monitor])
    trainer.fit(module)
    return trainer


def test_monitor_warns_once_saves_and_stops(tmp_path):
    monitor = CollapseMonitor(every_n_steps=2, rank_fraction=0.5, std_floor=0.05, stop_on_alarm=True)
    with pytest.warns(UserWarning, match="representation collapse suspected") as record:
        trainer = fit(Shrinking(collapse_from=4), tmp_path, monitor)
    assert sum("collapse suspected" in str(w.message) for w in record) == 1
    alarm = monitor.alarm
    assert alarm is not None and 4 < alarm["step"] <= 10, monitor.history
    assert any("features RankMe" in r for r in alarm["reasons"])
    assert not any("ignored" in r for r in alarm["reasons"]), "names outside collapse_watch must not alarm"
    assert trainer.global_step <= alarm["step"] + 1, "the run must stop right after the alarm"
    ckpt = Path(alarm["checkpoint"])
    assert ckpt.name == f"collapse-step{alarm['step']:06d}.ckpt" and ckpt.is_file()
    saved = torch.load(ckpt, weights_only=False)
    assert saved["global_step"] == alarm["step"]
    # Measured before step 0 and every 2 steps; the early value is the step-0 RankMe (16 orthogonal
    # directions of whitened-ish noise).
    assert [h["step"] for h in monitor.history][:3] == [0, 2, 4]
    assert monitor.early_rankme["features"] > 12
    assert set(monitor.history[0]) >= {"collapse/features_rankme", "collapse/features_std", "collapse/ignored_std"}


def test_monitor_stays_quiet_on_a_healthy_model_and_keeps_its_state(tmp_path):
    monitor = CollapseMonitor(every_n_steps=2, rank_fraction=0.5)
    fit(Shrinking(collapse_from=10**9), tmp_path, monitor, steps=10)
    assert monitor.alarm is None and len(monitor.history) == 5
    restored = CollapseMonitor()
    restored.load_state_dict(monitor.state_dict())
    assert restored.early_rankme == monitor.early_rankme and restored.alarm is None


def test_monitor_logs_within_clip_share_and_reverse_playback_of_a_jepa(tmp_path):
    from data_modules import MovingShapesDataModule

    data = MovingShapesDataModule(train_clips=8, val_clips=4, test_clips=4, frames_per_clip=4, crop_size=32,
                                  batch_size=4, num_workers=0)
    monitor = CollapseMonitor(every_n_steps=1)
    L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, default_root_dir=tmp_path, callbacks=[monitor],
              limit_val_batches=0).fit(tiny_jepa(), datamodule=data)
    first = monitor.history[0]
    assert 0 < first["collapse/target_within_clip"] < 1 and 0 < first["collapse/context_within_clip"] < 1
    assert -1 <= first["collapse/target_reverse_sim"] <= 1
    assert "collapse/context_reverse_sim" not in first  # by default only the teacher's full-clip features
    with pytest.raises(ValueError, match=r"reverse_playback names \['teacher'\]"):
        L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0,
                  callbacks=[CollapseMonitor(reverse_playback=["teacher"])]).fit(tiny_jepa(), datamodule=data)


def test_alarm_rules_per_statistic():
    # The JEPA defaults, on values measured on the demo data: a healthy run's context RankMe falls
    # to ~0.2x its start while its spread stays high; a student collapsing under a lagging EMA
    # teacher shows in its spread first.
    monitor = CollapseMonitor(rank_fraction=0.2, std_floor=0.1, watch_rankme=["target"], watch_std=["target", "context"])
    monitor.early_rankme = {"target": 20.4, "context": 14.5, "predicted": 7.8}
    healthy = {"collapse/target_rankme": 16.8, "collapse/target_std": 0.73, "collapse/context_rankme": 2.83,
               "collapse/context_std": 0.81, "collapse/predicted_rankme": 2.2, "collapse/predicted_std": 0.059}
    assert monitor.check(healthy) == []
    assert monitor.check({**healthy, "collapse/context_std": 0.07}) == ["context normalised std 0.0700 < floor 0.1"]
    assert monitor.check({**healthy, "collapse/target_rankme": 2.5}) == ["target RankMe 2.50 < 0.2 x its early value 20.40"]
    everything = CollapseMonitor(rank_fraction=0.2, std_floor=0.1)  # no watch lists, no module: all names
    everything.early_rankme = dict(monitor.early_rankme)
    assert len(everything.check(healthy)) == 2  # context RankMe and predicted std


def test_monitor_refuses_a_module_without_the_protocol(tmp_path):
    class NoFeatures(Shrinking):
        collapse_features = None

    with pytest.raises(TypeError, match="collapse_features"):
        fit(NoFeatures(), tmp_path, CollapseMonitor())


def test_monitor_argument_errors():
    for kwargs, match in [(dict(every_n_steps=0), "every_n_steps"), (dict(rank_fraction=1.5), "rank_fraction"),
                          (dict(std_floor=-1), "std_floor"), (dict(max_rows=1), "max_rows")]:
        with pytest.raises(ValueError, match=match):
            CollapseMonitor(**kwargs)


# ---------------------------------------------------------------------------------------------
# real runs on a small moving-shapes benchmark (the quick-start config's data)


def monitored_fit(tmp_path, overrides):
    cli = ArJepaCLI(args=["fit", "--config", str(REPO / "configs/vjepa.yaml"), "--trainer.default_root_dir", str(tmp_path),
                          "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                          "--trainer.limit_val_batches", "0", "--data.train_clips", "32", "--data.val_clips", "16",
                          "--data.test_clips", "16", "--data.crop_size", "32", "--data.frames_per_clip", "4",
                          "--data.batch_size", "4", "--data.num_workers", "1", *overrides])
    (monitor,) = [c for c in cli.trainer.callbacks if isinstance(c, CollapseMonitor)]
    return cli, monitor


TINY = ["--model.init_args.encoder.init_args.embed_dim", "64", "--model.init_args.encoder.init_args.depth", "2",
        "--model.init_args.encoder.init_args.num_heads", "2", "--model.init_args.predictor_embed_dim", "32",
        "--model.init_args.predictor_depth", "1", "--model.init_args.predictor_num_heads", "2"]


@pytest.mark.slow
def test_a_deliberately_collapsing_run_raises_the_alarm(tmp_path):
    # No EMA (the teacher is the student), no regulariser (the config's VICReg terms off), a learning
    # rate 50x the config's: the target RankMe falls far below 0.2x its early value within a few steps.
    with pytest.warns(UserWarning, match="representation collapse suspected"):
        cli, monitor = monitored_fit(tmp_path, [
            *TINY, "--trainer.max_steps", "40", "--model.init_args.teacher", "stop_grad",
            "--model.init_args.vicreg_var_coeff", "0", "--model.init_args.vicreg_cov_coeff", "0",
            "--model.init_args.lr", "0.1", "--model.init_args.start_lr", "0.1", "--model.init_args.warmup_steps", "0",
            "--trainer.callbacks.every_n_steps", "5", "--trainer.callbacks.stop_on_alarm", "true"])
    assert monitor.alarm is not None, monitor.history
    assert any(r.startswith("target RankMe") for r in monitor.alarm["reasons"])
    assert cli.trainer.global_step < 40, "stop_on_alarm must end the run early"
    assert Path(monitor.alarm["checkpoint"]).is_file()


# The other half, configs/vjepa.yaml (shortened) staying quiet, rides on the 40-step fit that
# tests/test_cli.py::test_short_fit_lowers_the_loss_and_checkpoints runs anyway.
