"""Statistics of a batch of feature vectors, to prevent and to detect representation collapse.

Every function takes features shaped [..., D] (e.g. tokens [B, N, D]) and treats each of the
leading positions as one sample of a D-dimensional vector. All of them compute in float32 whatever
the input dtype (bf16 variances and singular values are too coarse to be useful).

- `vicreg_variance`, `vicreg_covariance`: the VICReg regularisers (Bardes et al., 2022). Differentiable;
  the JEPA objective can add them to its loss.
- `rankme`, `normalized_std`: read-only measurements for the collapse monitor.
- `within_clip_share`, `reverse_playback_similarity`: how much of a video encoder's token features
  varies inside a clip, and whether playing the clip backwards changes them: the signature of the
  clip-code shortcut (every token of a clip carries one code of the clip's appearance), which
  RankMe and the spread across clips do not show.
"""

from __future__ import annotations

import math

import torch


def as_rows(features: torch.Tensor) -> torch.Tensor:
    """[..., D] -> float32 [M, D], one row per feature vector."""
    if features.ndim < 2:
        raise ValueError(f"features must be [..., D] with at least one sample axis, got shape {tuple(features.shape)}")
    return features.reshape(-1, features.shape[-1]).float()


def _summed_over_ranks(x: torch.Tensor, across_ranks: bool) -> torch.Tensor:
    """`x` summed over the processes of the default group (differentiable: each rank's gradient is the
    sum of every rank's), or `x` itself in one process or without `across_ranks`."""
    if across_ranks and torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        import torch.distributed.nn.functional as dist_autograd

        return dist_autograd.all_reduce(x)
    return x


def _centred(features: torch.Tensor, across_ranks: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows minus the mean of every rank's rows, the number of rows on all ranks)."""
    z = as_rows(features)
    count = _summed_over_ranks(torch.tensor(float(z.shape[0]), device=z.device), across_ranks)
    return z - _summed_over_ranks(z.sum(dim=0), across_ranks) / count, count


def vicreg_variance(features: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4,
                    across_ranks: bool = False) -> torch.Tensor:
    """mean over dimensions of relu(gamma - sqrt(Var + eps)): pushes every dimension's std up to gamma.

    A constant batch gets the largest penalty, gamma - sqrt(eps); one whose dimensions all have std
    >= gamma gets none. (V-JEPA's optional regulariser is this term on the predicted tokens.)
    With `across_ranks` under torch.distributed, the variance is that of every process's rows together
    (as VICReg gathers its batch across GPUs): the same value as one process holding the global batch.
    Every rank must then call it. Its gradients come out multiplied by the number of processes, which
    DDP's (and FSDP's) averaging of the parameters' gradients divides back out.
    """
    z, count = _centred(features, across_ranks)
    var = _summed_over_ranks(z.pow(2).sum(dim=0), across_ranks) / (count - 1).clamp(min=1)  # unbiased, as VICReg
    return torch.relu(gamma - torch.sqrt(var + eps)).mean()


def vicreg_covariance(features: torch.Tensor, across_ranks: bool = False) -> torch.Tensor:
    """Sum of squared off-diagonal covariances / D: decorrelates the dimensions, so the variance term
    cannot be met by D copies of one informative direction. Zero for a whitened batch. `across_ranks`:
    as for vicreg_variance."""
    z, count = _centred(features, across_ranks)
    D = z.shape[1]
    cov = _summed_over_ranks(z.T @ z, across_ranks) / (count - 1).clamp(min=1)
    off_diagonal = cov.pow(2).sum() - cov.diagonal().pow(2).sum()
    return off_diagonal / D


@torch.no_grad()
def rankme(features: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe effective rank (Garrido et al., 2023): exp of the entropy of the normalised singular values.

    In [1, min(M, D)]: ~1 when every vector points the same way (collapse), ~D for isotropic
    features (given M >= D samples). Uncentred, as in the paper.
    """
    z = as_rows(features)
    s = torch.linalg.svdvals(z)
    p = s / (s.sum() + eps) + eps
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def normalized_std(features: torch.Tensor) -> float:
    """Mean per-dimension std of the L2-normalised vectors, times sqrt(D).

    For isotropic features this is ~1 whatever D; when all vectors collapse to one direction it goes
    to 0 (SimSiam's collapse indicator, rescaled so one floor fits every width).
    """
    z = torch.nn.functional.normalize(as_rows(features), dim=1)
    return float(z.std(dim=0).mean() * math.sqrt(z.shape[1]))


def _as_clips(features: torch.Tensor, name: str) -> torch.Tensor:
    if features.ndim != 3 or features.shape[0] < 2:
        raise ValueError(f"{name} needs token features [B, N, D] of B >= 2 clips, got shape {tuple(features.shape)}")
    return features.float()


@torch.no_grad()
def within_clip_share(features: torch.Tensor) -> float:
    """Share of the token features' variance that lies within clips: tokens [B, N, D] -> in [0, 1].

    Total variance (around the batch mean) = variance within clips (around each clip's mean) + variance
    of the clip means; this returns the first over the total. Near 1 when clips differ little and their
    tokens much; near 0 when every token of a clip carries the same code.
    """
    z = _as_clips(features, "within_clip_share")
    within = (z - z.mean(1, keepdim=True)).pow(2).sum(-1).mean()
    total = (z - z.mean((0, 1))).pow(2).sum(-1).mean()
    return float(within / total) if total > 0 else 0.0


@torch.no_grad()
def reverse_playback_similarity(features: torch.Tensor, reversed_features: torch.Tensor) -> float:
    """Mean cosine similarity between each clip's and its time-reversed copy's mean token feature,
    both centred on the batch mean of the forward clips: tokens [B, N, D] twice -> in [-1, 1].

    A mean over tokens is blind to their order, so an encoder that sees only what is in the frames
    (not which way things move) gives 1; two unrelated clips give about 0.
    """
    if features.shape != reversed_features.shape:
        raise ValueError(f"features of the clips {tuple(features.shape)} and of their reversals "
                         f"{tuple(reversed_features.shape)} differ in shape")
    forward = _as_clips(features, "reverse_playback_similarity").mean(1)
    backward = _as_clips(reversed_features, "reverse_playback_similarity").mean(1)
    centre = forward.mean(0)
    return float(torch.nn.functional.cosine_similarity(forward - centre, backward - centre, dim=-1).mean())
