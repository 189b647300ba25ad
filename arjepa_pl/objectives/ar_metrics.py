"""Likelihood and rollout metrics of the autoregressive objectives, as torchmetrics (summed over
batches and synchronised over ranks by torchmetrics itself).

As language and video models report them: perplexity = exp(mean NLL); bits/token = NLL / ln 2;
text bits/byte = total NLL / (ln 2 * bytes); video tokens bits/dim = total NLL / (ln 2 * T*H*W*C)
— the pixel values the tokens stand for, so it is comparable only across models that share a tokenizer.
"""

import math
from typing import cast

import torch
from torchmetrics import Metric
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


class BitsPerUnit(Metric):
    """Total negative log-likelihood in bits divided by a count of units (bytes, pixel values, tokens).

    update(nll_nats_sum, units): the summed NLL in nats of a batch and how many units it covers.
    """

    full_state_update = False
    nll: torch.Tensor  # states (add_state)
    units: torch.Tensor

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("nll", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("units", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, nll_nats_sum: torch.Tensor, units: float) -> None:
        self.nll += nll_nats_sum.detach().to(torch.float64)
        self.units += float(units)

    def compute(self) -> torch.Tensor:
        return (self.nll / (math.log(2.0) * self.units)).float()


class CodeUsage(Metric):
    """How a tokenizer's codes are used: the fraction of codes that occur, and the perplexity of the
    code histogram (num_codes when every code is equally frequent, 1 when a single code is used)."""

    full_state_update = False
    counts: torch.Tensor  # state (add_state)

    def __init__(self, num_codes: int, **kwargs):
        super().__init__(**kwargs)
        self.num_codes = num_codes
        self.add_state("counts", torch.zeros(num_codes, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, codes: torch.Tensor) -> None:
        self.counts += torch.bincount(codes.flatten(), minlength=self.num_codes).to(torch.float64)

    def compute(self) -> dict[str, torch.Tensor]:
        p = self.counts / self.counts.sum().clamp_min(1)
        entropy = -(p * p.clamp_min(1e-30).log()).sum()
        return {"fraction_used": (self.counts > 0).float().mean(), "perplexity": entropy.exp().float()}


class HorizonMetrics(Metric):
    """Per-horizon MSE, PSNR and SSIM of predicted frames, averaged over clips.

    update(pred, truth): [B, C, H_frames, H, W] in [0, 1]; horizon h is the h-th predicted frame. PSNR
    and SSIM are computed per frame (data range 1) and averaged, the usual video-prediction convention;
    PSNR is capped at 100 dB so a perfect frame does not make the mean infinite.
    """

    full_state_update = False
    mse: torch.Tensor  # states (add_state)
    psnr: torch.Tensor
    ssim: torch.Tensor
    clips: torch.Tensor

    def __init__(self, horizon: int, **kwargs):
        super().__init__(**kwargs)
        self.horizon = horizon
        for name in ("mse", "psnr", "ssim"):
            self.add_state(name, torch.zeros(horizon, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("clips", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, truth: torch.Tensor) -> None:
        if pred.shape != truth.shape or pred.size(2) != self.horizon:
            raise ValueError(f"pred {tuple(pred.shape)} and truth {tuple(truth.shape)} must match, "
                             f"with {self.horizon} frames")
        B, C, T, H, W = pred.shape
        p = pred.float().permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W)
        t = truth.float().permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W)
        mse = (p - t).pow(2).mean((1, 2, 3))
        psnr = peak_signal_noise_ratio(p, t, data_range=1.0, reduction="none", dim=(1, 2, 3)).clamp(max=100.0)
        # A tensor: the tuple return is only for return_full_image / return_contrast_sensitivity.
        ssim = cast(torch.Tensor, structural_similarity_index_measure(p, t, data_range=1.0, reduction="none"))
        for name, value in (("mse", mse), ("psnr", psnr), ("ssim", ssim)):
            state = getattr(self, name)
            state += value.view(B, T).sum(0).to(torch.float64)
        self.clips += B

    def compute(self) -> dict[str, torch.Tensor]:
        return {name: (getattr(self, name) / self.clips).float() for name in ("mse", "psnr", "ssim")}
