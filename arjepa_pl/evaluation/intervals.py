"""How sure a measured accuracy is: the Wilson score interval of a proportion, and a metric that counts
what it needs (correct and total predictions, summed over batches and ranks).

Wilson's interval (Wilson, 1927) rather than the normal approximation: it stays inside [0, 1] and
keeps its coverage near 0 % and 100 % and for a few hundred clips, where probe accuracies live. It
covers the sampling noise of the evaluation split only, not seed-to-seed variation of the training:
the comparison reports both.
"""

import math

import torch
from torchmetrics import Metric

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile: a two-sided 95 % interval


def wilson_interval(correct: float, total: float, z: float = Z95) -> tuple[float, float]:
    """(low, high) of the Wilson score interval of correct / total; (0, 1) when total is 0."""
    if total < 0 or not 0 <= correct <= total:
        raise ValueError(f"need 0 <= correct <= total, got correct={correct}, total={total}")
    if total == 0:
        return 0.0, 1.0
    p = correct / total
    z2 = z * z
    centre = (p + z2 / (2 * total)) / (1 + z2 / total)
    half = z / (1 + z2 / total) * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total))
    # At 0 % and 100 % the bound on that side is exact; rounding must not move it.
    return (0.0 if correct == 0 else max(0.0, centre - half)), (1.0 if correct == total else min(1.0, centre + half))


class TopKCounts(Metric):
    """Top-k accuracy over every sample seen (micro average), with its 95 % Wilson interval.

    `update(probs [B, C], target [B])`; `compute()` -> tensor (accuracy, low, high, samples).
    """

    full_state_update = False
    correct: torch.Tensor
    total: torch.Tensor

    def __init__(self, top_k: int = 1):
        super().__init__()
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.top_k = top_k
        self.add_state("correct", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        k = min(self.top_k, probs.size(-1))
        hits = (probs.topk(k, dim=-1).indices == target.unsqueeze(-1)).any(-1)
        self.correct += hits.sum()
        self.total += target.numel()

    def compute(self) -> torch.Tensor:
        correct, total = int(self.correct), int(self.total)
        low, high = wilson_interval(correct, total)
        accuracy = correct / total if total else float("nan")
        return torch.tensor([accuracy, low, high, float(total)], dtype=torch.float64)
