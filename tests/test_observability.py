"""The callbacks that watch a run: mask pictures, the media protocol, throughput and data wait, FLOPs,
MFU's peak table and the gradient norm."""

import time
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from arjepa_pl.callbacks import GradNormMonitor, MediaLogger, PerformanceMonitor
from arjepa_pl.callbacks.grad_norm import total_grad_norm
from arjepa_pl.pictures import STRIPE_RGB, mask_pictures
from arjepa_pl.callbacks.performance import CPU_ATTENTION_FLOPS, compute_dtype, peak_tflops
from arjepa_pl.cli import ArJepaCLI

REPO = Path(__file__).resolve().parents[1]


def test_mask_pictures_show_context_target_and_dropped_tokens():
    # One clip, 4 frames of 8x8 in tubelets of 2 and patches of 4: a (2, 2, 2) grid. Mid-grey pixels
    # (0 after normalising with mean 0.5, std 0.5 -> 127.5).
    video = torch.zeros(1, 3, 4, 8, 8)
    # token (t, h, w) -> t*4 + h*2 + w: context = top-left of both tubelets, target = bottom-right of the first.
    masks = [{"context": torch.tensor([[0, 4]]), "target": torch.tensor([[3]])}]
    (name, picture), = mask_pictures(video, masks, tubelet_size=2, patch_size=4, mean=(0.5,) * 3, std=(0.5,) * 3,
                                     num_frames=2, min_size=8).items()
    assert name == "masks0"
    assert picture.shape == (8, 8 * 2 + 2, 3)  # one row, frames 0 and 3 side by side, a 2-pixel gap
    first, second = picture[:, :8], picture[:, 10:]
    assert (first[:4, :4] == 128).all()  # context: as the encoder sees it
    target = first[4:, 4:].reshape(-1, 3)
    assert (target == STRIPE_RGB.astype(np.uint8)).all(-1).any()  # stripes...
    assert (target == round(0.7 * 128)).all(-1).any()  # ... over the greyed pixels
    assert (first[:4, 4:] == 32).all()  # neither context nor target: dark
    assert (second[:4, :4] == 128).all() and (second[4:, 4:] == 32).all()  # frame 3 is in the second tubelet


class SlowClips(Dataset):
    """Clips that take `delay` seconds to load: a data-bound run."""

    def __init__(self, delay: float):
        self.delay = delay

    def __len__(self):
        return 64

    def __getitem__(self, i):
        time.sleep(self.delay)
        return {"video": torch.randn(3, 4, 8, 8)}


class TinyObjective(L.LightningModule):
    """A linear model on clips, with an encoder-like grid and a `media` method."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(3 * 4 * 8 * 8, 1)
        self.encoder = torch.nn.Module()
        self.encoder.token_grid = lambda shape: (shape[2] // 2, shape[3] // 4, shape[4] // 4)  # 8 tokens
        self.media_modes = []

    def training_step(self, batch, batch_idx):
        return self.net(batch["video"].flatten(1)).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def media(self, batch):
        self.media_modes.append((self.training, torch.is_grad_enabled()))
        frames = batch["video"][0].permute(1, 2, 3, 0).sigmoid()  # [T, H, W, 3] in [0, 1]
        return {"rollout": frames, "picture": (frames[0] * 255).to(torch.uint8)}


@pytest.mark.slow
def test_data_wait_throughput_flops_media_and_grad_norm_on_a_data_bound_fit(tmp_path):
    model, media = TinyObjective(), MediaLogger(every_n_steps=3, max_clips=1)
    trainer = L.Trainer(accelerator="cpu", max_steps=7, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[PerformanceMonitor(window=4), GradNormMonitor(), media])
    trainer.fit(model, DataLoader(SlowClips(0.05), batch_size=2))
    m = {key: float(value) for key, value in trainer.callback_metrics.items()}
    assert m["perf/data_wait"] > 0.6  # 0.1 s loading per step against a linear layer
    assert m["perf/clips_per_sec"] == pytest.approx(2 / m["perf/step_time"], rel=1e-4)
    assert m["perf/clips_per_sec"] < 2 / 0.1  # cannot beat the loader
    assert m["perf/tokens_per_sec"] == pytest.approx(8 * m["perf/clips_per_sec"], rel=1e-4)
    # The linear layer per clip: 2 x 768 x 1 forward, as much for the weight gradient (the input needs none).
    assert model.net.in_features == 768
    assert trainer.callbacks[0].flops_per_clip == pytest.approx(2 * 768 + 2 * 768)
    assert "perf/mfu" not in m  # no peak known on a CPU
    assert m["perf/peak_rss_gib"] > 0.05
    assert 0 < m["train/grad_norm"] < float("inf")
    # Media at the first step, every 3 steps and at the end; made in eval mode without gradients.
    assert sorted(p.name for p in (tmp_path / "media").iterdir()) == ["step000001", "step000003", "step000006",
                                                                       "step000007"]
    assert (tmp_path / "media/step000007/rollout.mp4").stat().st_size > 0
    assert np.asarray(Image.open(tmp_path / "media/step000003/picture.png")).shape == (8, 8, 3)
    assert set(model.media_modes) == {(False, False)} and model.training


def test_grad_norm_is_the_norm_clip_grad_norm_sees():
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 2))
    net(torch.randn(3, 5)).square().sum().backward()
    expected = torch.nn.utils.clip_grad_norm_(net.parameters(), float("inf"))
    assert total_grad_norm(net.parameters()) == pytest.approx(expected.item(), rel=1e-6)


def test_attention_flops_are_counted_on_cpu():
    q, k, v = (torch.randn(2, 3, 16, 8, requires_grad=True) for _ in range(3))
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        F.scaled_dot_product_attention(q, k, v).sum().backward()
    forward = 2 * (2 * 2 * 3 * 16 * 16 * 8)  # QK^T and PV, 2 FLOPs per multiply-add
    # Backward as torch counts the CUDA kernels: the scores recomputed, then four products.
    assert counter.get_total_flops() == forward + 5 * forward // 2


@pytest.mark.parametrize("name,precision,expected", [
    ("NVIDIA H100 80GB HBM3", "bf16-mixed", 989.5),
    ("NVIDIA H100 PCIe", "bf16-mixed", 756.5),
    ("NVIDIA H200", "16-mixed", 989.5),
    ("NVIDIA A100-SXM4-80GB", "32-true", 19.5),  # fp32 matmul precision "highest": no TF32
    ("NVIDIA L40S", "bf16-true", 362.0),
    ("NVIDIA L4", "bf16-mixed", 121.0),
    ("Tesla V100-SXM2-16GB", "bf16-mixed", None),  # no bf16 tensor cores
    ("Tesla T4", "16-mixed", 65.0),
    ("Some Future GPU", "bf16-mixed", None),
])
def test_peak_flops_table(name, precision, expected):
    assert peak_tflops(name, compute_dtype(precision)) == expected


def test_tf32_peak_when_matmuls_may_use_it():
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert peak_tflops("NVIDIA A100-SXM4-80GB", compute_dtype("32-true")) == 156.0
        assert peak_tflops("Tesla V100-SXM2-16GB", compute_dtype("32-true")) == 15.7  # no TF32 cores: fp32
    finally:
        torch.set_float32_matmul_precision(previous)


def test_loggers_can_be_switched_off_or_to_csv(tmp_path):
    base = ["--config", str(REPO / "configs/vjepa.yaml"), "--trainer.default_root_dir", str(tmp_path)]
    assert ArJepaCLI(args=[*base, "--trainer.logger", "false"], run=False).trainer.logger is None
    # The configs' pair is CSV (first: its directory is the run's log_dir) and W&B (last: the target of
    # --trainer.logger.KEY overrides); a logger named on the command line replaces both.
    both = ArJepaCLI(args=base, run=False).trainer
    assert [type(logger).__name__ for logger in both.loggers] == ["CSVLogger", "WandbLogger"]
    assert Path(both.log_dir) == tmp_path and all(Path(logger.save_dir) == tmp_path for logger in both.loggers)
    csv = ArJepaCLI(args=[*base, "--trainer.logger", "arjepa_pl.loggers.CSVLogger", "--trainer.logger.save_dir",
                          str(tmp_path)], run=False).trainer.logger
    assert type(csv).__name__ == "CSVLogger" and Path(csv.save_dir) == tmp_path
