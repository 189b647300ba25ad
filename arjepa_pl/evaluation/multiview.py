"""Several views of one sample (temporal segments x spatial crops): scored one by one, then the
class probabilities averaged — V-JEPA's multi-view evaluation (K400: 8 segments x 3 crops)."""

import torch


def flatten_views(x: torch.Tensor, sample_ndim: int) -> tuple[torch.Tensor, int]:
    """[B, V, *sample] -> ([B * V, *sample], V); a batch without a view axis is one view per sample.

    sample_ndim: dimensions of one sample (4 for a [C, T, H, W] clip, 3 for a [C, H, W] image)."""
    if x.ndim == sample_ndim + 1:
        return x, 1
    if x.ndim == sample_ndim + 2:
        return x.flatten(0, 1), x.size(1)
    raise ValueError(f"expected a batch of [{sample_ndim}-d] samples, with or without a view axis; "
                     f"got shape {tuple(x.shape)}")


def average_view_probabilities(logits: torch.Tensor, views: int) -> torch.Tensor:
    """Logits [B * V, C] of consecutive views of each sample -> mean softmax [B, C]."""
    if logits.size(0) % views:
        raise ValueError(f"{logits.size(0)} rows are not a whole number of samples of {views} views")
    return logits.float().softmax(-1).view(-1, views, logits.size(-1)).mean(1)


def concatenate_segments(features: torch.Tensor, views: int, segments: int) -> tuple[torch.Tensor, int]:
    """Token features [B * V, N, D] of V = segments x crops views per sample (segment-major, as the data
    modules stack them) -> ([B * crops, segments * N, D], crops): each crop's segments as one token
    sequence, in time order, so the probe classifies a whole video per crop (V-JEPA 2's protocol: K400
    8 segments, SSv2 2, x 3 crops at evaluation)."""
    if views % segments:
        raise ValueError(f"{views} views per sample are not a whole number of {segments} temporal segments: "
                         "set the data module's num_clips to the probe's segments")
    crops = views // segments
    rows, tokens, dim = features.shape
    grouped = features.view(rows // views, segments, crops, tokens, dim).transpose(1, 2)
    return grouped.reshape(rows // segments, segments * tokens, dim), crops
