"""Per-step schedules as pure functions of the optimizer step.

The step count is Lightning's `global_step`, which is saved in every checkpoint, so a resumed run
continues every schedule exactly where it stopped: nothing is replayed and nothing drifts.
"""

import math


def _progress(step: int, start: int, end: int) -> float:
    """Fraction of [start, end) done at `step`, clamped to [0, 1]."""
    if end <= start:
        return 1.0
    return min(max((step - start) / (end - start), 0.0), 1.0)


def linear(step: int, total_steps: int, start: float, final: float) -> float:
    return start + (final - start) * _progress(step, 0, total_steps)


def cosine(step: int, total_steps: int, start: float, final: float, offset: int = 0) -> float:
    """Half-cosine from `start` at step `offset` to `final` at `total_steps`."""
    p = _progress(step, offset, total_steps)
    return final + (start - final) * 0.5 * (1.0 + math.cos(math.pi * p))


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, start: float, peak: float, final: float) -> float:
    """Linear warm-up start -> peak over warmup_steps, then cosine peak -> final at total_steps."""
    if step < warmup_steps:
        return linear(step, warmup_steps, start, peak)
    return cosine(step, total_steps, peak, final, offset=warmup_steps)


def warmup_constant_cooldown(step: int, warmup_steps: int, cooldown_steps: int, total_steps: int, start: float,
                             peak: float, final: float) -> float:
    """Linear warm-up start -> peak over warmup_steps, peak held, then linear peak -> final over the last
    cooldown_steps of total_steps (V-JEPA 2's warm-up / constant / cooldown; cooldown_steps 0: constant
    to the end)."""
    if step < warmup_steps:
        return linear(step, warmup_steps, start, peak)
    cooldown_start = total_steps - cooldown_steps
    if cooldown_steps <= 0 or step < cooldown_start:
        return peak
    return peak + (final - peak) * _progress(step, cooldown_start, total_steps)
