"""A non-finite loss or gradient stops the run before it reaches the weights or a checkpoint.

Without this a NaN loss trains on silently to max_steps, exits 0 and saves last.ckpt full of NaN.
The check runs after backward and before the optimizer step (Lightning's on_before_optimizer_step,
after fp16 gradients are unscaled and before clipping): the loss of every micro-batch of the step and
the total gradient norm. All ranks decide together, so they stop at the same step. At the first
non-finite value the run stops with NonFiniteLoss, which names the step and the loss terms the
objective logged that are non-finite (train/loss_mask0, ...); nothing is saved, so the newest
checkpoint is the last finite one and `--ckpt_path last` resumes from it. Every checkpoint is also
checked to hold finite weights before it is written.

With `max_skipped_batches: N` the first N such steps are skipped instead (their gradients dropped,
so the optimizer leaves every weight as it was; train/skipped_nonfinite counts them, a warning names
each) and the run stops at the next one.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Optional

import lightning.pytorch as L
import torch

from arjepa_pl.callbacks.grad_norm import total_grad_norm
from arjepa_pl.errors import RunFailed

log = logging.getLogger("arjepa_pl.nonfinite")


class NonFiniteLoss(RunFailed):
    """A non-finite loss or gradient norm stopped the run (nothing was saved after it)."""


def nonfinite_terms(metrics: dict[str, Any], prefix: str = "train/") -> list[str]:
    """The logged values under `prefix` that are NaN or infinite, by name."""
    bad = []
    for name, value in metrics.items():
        if name.startswith(prefix):
            number = float(value.detach().float().mean()) if isinstance(value, torch.Tensor) else float(value)
            if not math.isfinite(number):
                bad.append(name)
    return sorted(bad)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor  # an FSDP2 shard


class NonFiniteGuard(L.Callback):
    """Stops (or skips a bounded number of) steps whose loss or gradient norm is not finite.

    The CLI adds one to every fit that does not configure its own.

    Args:
        max_skipped_batches: how many such steps to skip (counted, logged) before stopping; 0 stops at the first.
        check_grad_norm: also check the total gradient norm (one pass over the gradients per step; left
            out under fp16's GradScaler, which skips steps with overflowing gradients itself).
    """

    def __init__(self, max_skipped_batches: int = 0, check_grad_norm: bool = True):
        if max_skipped_batches < 0:
            raise ValueError(f"max_skipped_batches must be >= 0, got {max_skipped_batches}")
        self.max_skipped_batches, self.check_grad_norm = max_skipped_batches, check_grad_norm
        self.skipped = 0
        self._bad: Optional[torch.Tensor] = None  # any micro-batch loss of this step non-finite

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}  # the bound holds across resumes

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = int(state_dict.get("skipped", 0))

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        bad = ~torch.isfinite(loss.detach()).all()
        self._bad = bad if self._bad is None else self._bad | bad  # no sync: decided once per step

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        bad = self._bad if self._bad is not None else torch.zeros((), dtype=torch.bool)
        self._bad = None
        grad_norm = None
        if self.check_grad_norm and getattr(trainer.precision_plugin, "scaler", None) is None:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            grad_norm = _local(total_grad_norm(params))  # under FSDP2: this rank's shards; the ranks decide together
            bad = bad.to(grad_norm.device) | ~torch.isfinite(grad_norm)
        if not trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            return
        terms = nonfinite_terms(trainer.callback_metrics) or ["train/loss"]
        what = f"non-finite {', '.join(terms)}" + ("" if grad_norm is None or math.isfinite(float(grad_norm))
                                                   else f" (gradient norm {float(grad_norm)})")
        where = f"at step {trainer.global_step} (epoch {trainer.current_epoch})"
        if self.skipped < self.max_skipped_batches:
            self.skipped += 1
            optimizer.zero_grad(set_to_none=True)  # no gradient: AdamW leaves every weight as it was
            pl_module.log("train/skipped_nonfinite", float(self.skipped), on_step=True, on_epoch=False, batch_size=1)
            if trainer.is_global_zero:
                log.warning(f"{what} {where}: step skipped ({self.skipped} of at most {self.max_skipped_batches})")
            return
        raise NonFiniteLoss(f"{what} {where}; the run is stopped before this step changed the weights, and no "
                            "checkpoint was written after it: `--ckpt_path last` resumes from the last finite "
                            "one (lower the learning rate, or see model.init_args for the loss settings)")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        flags = [torch.isfinite(_local(p.detach())).all() for p in pl_module.parameters()]
        finite = bool(torch.stack(flags).all()) if flags else True  # one device sync, not one per tensor
        if not trainer.strategy.reduce_boolean_decision(finite, all=True):
            raise NonFiniteLoss(f"refusing to write a checkpoint at step {trainer.global_step}: the weights are "
                                "not finite")


def ensure_nonfinite_guard(trainer: L.Trainer) -> None:
    """Give the trainer a NonFiniteGuard with the defaults unless one is configured (to set its options:
    `--trainer.callbacks+=arjepa_pl.callbacks.NonFiniteGuard --trainer.callbacks.max_skipped_batches 3`)."""
    callbacks = trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning, not declared on the class
    if not any(isinstance(c, NonFiniteGuard) for c in callbacks):
        callbacks.insert(0, NonFiniteGuard())
