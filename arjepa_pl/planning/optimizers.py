"""Sampling-based trajectory optimisers over action sequences: the cross-entropy method (CEM) and model
predictive path integral control (MPPI), batched over independent problems (one per episode).

Both keep a Gaussian over action sequences [H, A] per problem, draw `num_samples` sequences from it,
score them with a cost function, and move the Gaussian towards the good ones: CEM to the mean and
spread of the `num_elites` cheapest, MPPI to a softmax(-cost / temperature)-weighted average. Actions
live in the unit ball of radius `action_bound` (the data sets store actions divided by the
environment's largest step, so 1.0 is the longest action) and samples are projected onto it.

Two choices from iCEM (Pinneri et al., 2020) that matter for reaching a door behind a wall: the
noise may be coloured over time (`noise_beta` > 0: power spectrum 1 / f^beta, so a sample keeps a
direction for a while and travels further than a random walk), and the current mean is always one of
the samples. The plan returned is the cheapest sequence scored in any iteration.

Every random draw comes from the `generator` passed to `plan`, on the device of the initial mean:
plans are reproducible and run where the world model runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

# actions [B, N, H, A] -> costs [B, N] (lower is better)
CostFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class PlanResult:
    """actions [B, H, A]: the plan, the cheapest sequence scored in any iteration (for CEM and MPPI alike);
    cost [B]: its cost; costs [iterations, B]: the cheapest cost so far after each iteration (for logs)."""

    actions: torch.Tensor
    cost: torch.Tensor
    costs: torch.Tensor


def colored_noise(shape: tuple[int, ...], beta: float, generator: Optional[torch.Generator] = None,
                  device: Optional[torch.device] = None) -> torch.Tensor:
    """Standard-normal noise [..., H, A] whose power spectrum over H (time) falls as 1 / f^beta
    (beta = 0: white; 1: pink; 2: brown, a random walk). Each entry has unit variance."""
    *lead, H, A = shape
    if beta == 0 or H < 2:
        return torch.randn(shape, generator=generator, device=device)
    freqs = torch.fft.rfftfreq(H, device=device)
    freqs[0] = freqs[1]  # the mean (zero frequency) weighs as the lowest real frequency
    scale = freqs.pow(-beta / 2)
    real = torch.randn(*lead, A, len(freqs), generator=generator, device=device) * scale
    imag = torch.randn(*lead, A, len(freqs), generator=generator, device=device) * scale
    imag[..., 0] = 0  # the zero and (for even H) the Nyquist frequency are real
    if H % 2 == 0:
        imag[..., -1] = 0
    x = torch.fft.irfft(torch.complex(real, imag), n=H)  # [..., A, H]
    # Each output is (1/H) (X_0 + sum_k 2 Re(X_k e^(2 pi i k t / H)) [+ X_(H/2) (-1)^t]), and 2 Re(.) has
    # variance 4 s_k^2: divide by the exact std so that every entry is standard normal.
    doubled = scale[1:-1] if H % 2 == 0 else scale[1:]
    variance = (scale[0] ** 2 + 4 * doubled.pow(2).sum() + (scale[-1] ** 2 if H % 2 == 0 else 0)) / H**2
    return (x / variance.sqrt()).transpose(-1, -2)


def project(actions: torch.Tensor, bound: float) -> torch.Tensor:
    """Actions longer than `bound` (in norm over the last dimension) scaled down to it."""
    norm = actions.norm(dim=-1, keepdim=True)
    return actions * (bound / norm.clamp_min(bound))


class SamplingPlanner:
    """What CEM and MPPI share (see the module docstring).

    Args:
        horizon: actions per plan.
        num_samples: action sequences scored per iteration per problem (one of them the current mean).
        iterations: refinements of the Gaussian per call to plan.
        init_std: starting std of every action coordinate (units of action_bound).
        min_std: floor of the std, so the search never freezes.
        momentum: new mean = momentum * old mean + (1 - momentum) * the update (0: no smoothing).
        action_bound: largest action norm; samples are projected onto this ball.
        noise_beta: colour of the sampling noise over time (0 white, 1 pink, 2 brown).
    """

    def __init__(self, horizon: int = 16, num_samples: int = 128, iterations: int = 5, init_std: float = 1.0,
                 min_std: float = 0.05, momentum: float = 0.0, action_bound: float = 1.0, noise_beta: float = 0.0):
        for name, value in (("horizon", horizon), ("num_samples", num_samples), ("iterations", iterations)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if num_samples < 2:
            raise ValueError(f"num_samples must be >= 2 (one of them is the current mean), got {num_samples}")
        if init_std <= 0 or min_std < 0 or action_bound <= 0:
            raise ValueError(f"init_std and action_bound must be > 0 and min_std >= 0, got {init_std}, {min_std}, "
                             f"{action_bound}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        if noise_beta < 0:
            raise ValueError(f"noise_beta must be >= 0, got {noise_beta}")
        self.horizon, self.num_samples, self.iterations = horizon, num_samples, iterations
        self.init_std, self.min_std, self.momentum = init_std, min_std, momentum
        self.action_bound, self.noise_beta = action_bound, noise_beta

    def update(self, samples: torch.Tensor, costs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) [B, H, A] of the next Gaussian from scored samples [B, N, H, A], costs [B, N]."""
        raise NotImplementedError

    @torch.no_grad()
    def plan(self, cost_fn: CostFn, init_mean: torch.Tensor, generator: Optional[torch.Generator] = None) -> PlanResult:
        """Minimise cost_fn over action sequences, starting from init_mean [B, H, A] (e.g. the previous
        plan shifted by the steps taken since, zeros at first)."""
        if init_mean.dim() != 3 or init_mean.shape[1] != self.horizon:
            raise ValueError(f"init_mean must be [batch, horizon={self.horizon}, action_dim], "
                             f"got {tuple(init_mean.shape)}")
        B, H, A = init_mean.shape
        mean = project(init_mean, self.action_bound)
        std = torch.full_like(mean, self.init_std * self.action_bound)
        best_costs: list[torch.Tensor] = []
        best_cost: Optional[torch.Tensor] = None
        best_actions = mean
        for _ in range(self.iterations):
            noise = colored_noise((B, self.num_samples - 1, H, A), self.noise_beta, generator, mean.device)
            samples = project(mean.unsqueeze(1) + std.unsqueeze(1) * noise, self.action_bound)
            samples = torch.cat([mean.unsqueeze(1), samples], dim=1)  # the current mean is always scored
            costs = cost_fn(samples)
            if costs.shape != (B, self.num_samples):
                raise ValueError(f"the cost function returned {tuple(costs.shape)}, expected ({B}, {self.num_samples})")
            cheapest, index = costs.min(dim=1)
            candidates = samples[torch.arange(B, device=samples.device), index]
            if best_cost is None:
                best_cost, best_actions = cheapest, candidates
            else:  # the cheapest sequence scored so far, in any iteration
                better = cheapest < best_cost
                best_cost = torch.where(better, cheapest, best_cost)
                best_actions = torch.where(better[:, None, None], candidates, best_actions)
            best_costs.append(best_cost)
            new_mean, new_std = self.update(samples, costs)
            mean = project(self.momentum * mean + (1 - self.momentum) * new_mean, self.action_bound)
            std = new_std.clamp_min(self.min_std * self.action_bound)
        # The cheapest sequence scored, not the final mean: with elites on both sides of an obstacle
        # their mean can run straight into it.
        assert best_cost is not None  # iterations >= 1
        return PlanResult(best_actions, best_cost, torch.stack(best_costs))


class CEM(SamplingPlanner):
    """Cross-entropy method: refit the Gaussian to the `num_elites` cheapest samples.

    Args:
        num_elites: samples the Gaussian is refitted to.
        sampler_args: horizon, num_samples, iterations, init_std, min_std, momentum, action_bound,
            noise_beta (see SamplingPlanner).
    """

    def __init__(self, num_elites: int = 16, **sampler_args):
        super().__init__(**sampler_args)
        if not 1 <= num_elites <= self.num_samples:
            raise ValueError(f"num_elites must lie in [1, num_samples={self.num_samples}], got {num_elites}")
        self.num_elites = num_elites

    def update(self, samples: torch.Tensor, costs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        elite = costs.topk(self.num_elites, dim=1, largest=False).indices
        elites = samples.gather(1, elite[:, :, None, None].expand(-1, -1, *samples.shape[2:]))
        return elites.mean(1), elites.std(1, unbiased=False)


class MPPI(SamplingPlanner):
    """Model predictive path integral control: the mean moves to the average of the samples weighted by
    softmax(-(cost - min cost) / (temperature * std of the costs)); the std to their weighted spread.

    Args:
        temperature: lower = greedier (close to the best sample); higher = closer to the plain average.
            Relative to the spread of each iteration's costs, so one value serves world models whose
            distances have different scales (pixels, latents, metres).
        sampler_args: horizon, num_samples, iterations, init_std, min_std, momentum, action_bound,
            noise_beta (see SamplingPlanner).
    """

    def __init__(self, temperature: float = 0.2, **sampler_args):
        super().__init__(**sampler_args)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def update(self, samples: torch.Tensor, costs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = costs.std(1, keepdim=True).clamp_min(1e-12) * self.temperature
        weights = torch.softmax(-(costs - costs.min(1, keepdim=True).values) / scale, dim=1)
        w = weights[:, :, None, None]
        mean = (w * samples).sum(1)
        std = (w * (samples - mean.unsqueeze(1)).pow(2)).sum(1).sqrt()
        return mean, std


def shift_plan(plan: torch.Tensor, steps: int) -> torch.Tensor:
    """A plan [B, H, A] advanced by `steps` executed actions: the rest, then zeros (the warm start of MPC)."""
    if steps >= plan.shape[1]:
        return torch.zeros_like(plan)
    return torch.cat([plan[:, steps:], torch.zeros_like(plan[:, :steps])], dim=1)

