"""Collapse monitor: watch the spread of a model's features during training and raise the alarm early.

Collapse (every input mapped to nearly the same vector) makes a JEPA loss look *good*, so the loss
cannot reveal it. What does reveal it is the geometry of the features: their effective rank (RankMe)
and their per-dimension spread. Every `every_n_steps` optimizer steps this callback runs the model on
one batch it holds from the start of training (so successive measurements are comparable), logs
both statistics for each feature set, and when one falls past its threshold it warns once, with what
to change, and can save a checkpoint and stop the run.

Any LightningModule works that implements the protocol below (the JEPA objective does; others can).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Protocol, cast, runtime_checkable

import lightning.pytorch as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning_utilities.core.apply_func import apply_to_collection

from arjepa_pl.feature_stats import as_rows, normalized_std, rankme

COLLAPSE_DOCS = "docs/collapse.md"


@runtime_checkable
class ExposesCollapseFeatures(Protocol):
    """What the monitor needs from a LightningModule."""

    def collapse_features(self, batch: Any) -> Mapping[str, torch.Tensor]:
        """Named feature tensors [..., D] (e.g. {"target": [B, N, D], "context": ..., "predicted": ...})
        computed from `batch`, a training batch as the DataLoader delivers it. Called under no_grad.

        Optionally the module also has `collapse_watch = {"rankme": names, "std": names}`: which
        statistic of which feature set may raise the alarm (the monitor's defaults for `watch_rankme`
        and `watch_std`). The rest is only logged, e.g. a JEPA predictor's outputs, which are
        near-constant early in every healthy run.
        """
        ...


class CollapseMonitor(L.Callback):
    """Logs `collapse/{name}_rankme` and `collapse/{name}_std` for every feature set the module exposes.

    Args:
        every_n_steps: measure before optimizer step 0 and then every this many steps.
        rank_fraction: alarm when a watched RankMe falls below this fraction of its early value
            (the highest RankMe measured within the first `early_steps` steps).
        std_floor: alarm when a watched normalised std (~1 for isotropic features, 0 when collapsed)
            falls below this.
        early_steps: the window, in optimizer steps from the start, that defines the early RankMe.
        watch_rankme / watch_std: feature names whose RankMe / std the alarm looks at (None: the
            module's `collapse_watch`, or else every name it returns); the rest is only logged.
        max_rows: feature vectors used per measurement, a fixed subset (RankMe costs an SVD of max_rows x D).
        stop_on_alarm: on alarm, save a checkpoint and stop the run.
        checkpoint_dir: where that checkpoint goes (None: the ModelCheckpoint's folder, else
            default_root_dir/checkpoints), as collapse-step{STEP}.ckpt.
    """

    def __init__(
        self,
        every_n_steps: int = 25,
        rank_fraction: float = 0.2,
        std_floor: float = 0.1,
        early_steps: int = 0,
        watch_rankme: Optional[Sequence[str]] = None,
        watch_std: Optional[Sequence[str]] = None,
        max_rows: int = 4096,
        stop_on_alarm: bool = False,
        checkpoint_dir: Optional[str] = None,
    ):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if not 0.0 <= rank_fraction < 1.0:
            raise ValueError(f"rank_fraction must lie in [0, 1), got {rank_fraction}")
        if std_floor < 0:
            raise ValueError(f"std_floor must be >= 0, got {std_floor}")
        if early_steps < 0:
            raise ValueError(f"early_steps must be >= 0, got {early_steps}")
        if max_rows < 2:
            raise ValueError(f"max_rows must be >= 2, got {max_rows}")
        self.every_n_steps, self.rank_fraction, self.std_floor = every_n_steps, rank_fraction, std_floor
        self.early_steps, self.max_rows = early_steps, max_rows
        self.watch = {"rankme": None if watch_rankme is None else tuple(watch_rankme),
                      "std": None if watch_std is None else tuple(watch_std)}
        self._watch = dict(self.watch)  # what the alarm looks at: `watch_*`, or the module's choice (setup)
        self.stop_on_alarm, self.checkpoint_dir = stop_on_alarm, checkpoint_dir
        # Saved in checkpoints, so a resumed run keeps its baseline and does not warn twice.
        self.early_rankme: dict[str, float] = {}
        self.alarm: Optional[dict] = None  # {"step": int, "reasons": [str], "checkpoint": str | None}
        # Per process only.
        self.history: list[dict] = []  # {"step": int, metric name: value} per measurement
        self.seconds = 0.0  # wall time spent measuring: the monitor's cost
        self._held = None
        self._last_step: Optional[int] = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and not callable(getattr(pl_module, "collapse_features", None)):
            raise TypeError(
                f"CollapseMonitor needs {type(pl_module).__name__} to implement "
                "collapse_features(batch) -> {name: features [..., D]} "
                "(see arjepa_pl.callbacks.collapse.ExposesCollapseFeatures); remove the callback for this objective"
            )
        module_watch = getattr(pl_module, "collapse_watch", None) or {}
        self._watch = {stat: names if names is not None else module_watch.get(stat)
                       for stat, names in self.watch.items()}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._held is None:
            # The first batch, kept on the device: every measurement sees the same inputs (and masks).
            self._held = apply_to_collection(batch, torch.Tensor, lambda t: t.detach())
        step = trainer.global_step
        # One measurement per optimizer step, even with gradient accumulation (several micro-batches).
        if step % self.every_n_steps or step == self._last_step:
            return
        self._last_step = step
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # so the timer does not bill the queued training step
        start = time.perf_counter()
        metrics = self.measure(trainer, pl_module)
        if step <= self.early_steps:
            for key, value in metrics.items():
                if key.endswith("_rankme"):
                    name = key[len("collapse/"):-len("_rankme")]
                    self.early_rankme[name] = max(value, self.early_rankme.get(name, 0.0))
        self.history.append({"step": step, **metrics})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        if self.alarm is None:
            reasons = self.check(metrics)
            # Ranks measure their own batches: rank 0 decides, so all ranks save and stop together.
            reasons = trainer.strategy.broadcast(reasons, src=0)
            if reasons:
                self.raise_alarm(trainer, step, reasons)
        self.seconds += time.perf_counter() - start

    # -- measurement -------------------------------------------------------------------------------
    @torch.no_grad()
    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        was_training = pl_module.training
        pl_module.eval()
        try:
            with trainer.precision_plugin.forward_context():
                # setup() checked that the module has collapse_features.
                features = cast(ExposesCollapseFeatures, pl_module).collapse_features(self._held)
        finally:
            pl_module.train(was_training)
        metrics = {}
        for name, value in features.items():
            rows = self._subset(as_rows(value))
            metrics[f"collapse/{name}_rankme"] = rankme(rows)
            metrics[f"collapse/{name}_std"] = normalized_std(rows)
        return metrics

    def _subset(self, rows: torch.Tensor) -> torch.Tensor:
        if rows.shape[0] <= self.max_rows:
            return rows
        # A fixed subset (same seed every time), so measurements differ only because the model did.
        g = torch.Generator().manual_seed(0)
        keep = torch.randperm(rows.shape[0], generator=g)[: self.max_rows].to(rows.device)
        return rows[keep]

    def check(self, metrics: Mapping[str, float]) -> list[str]:
        """Why the alarm should fire (empty: it should not)."""
        reasons = []
        for key, value in metrics.items():
            name, _, stat = key[len("collapse/"):].rpartition("_")
            watched = self._watch.get(stat)
            if watched is not None and name not in watched:
                continue
            early = self.early_rankme.get(name)
            if stat == "rankme" and early is not None and value < self.rank_fraction * early:
                reasons.append(f"{name} RankMe {value:.2f} < {self.rank_fraction:g} x its early value {early:.2f}")
            if stat == "std" and value < self.std_floor:
                reasons.append(f"{name} normalised std {value:.4f} < floor {self.std_floor:g}")
        return reasons

    def raise_alarm(self, trainer: L.Trainer, step: int, reasons: list[str]) -> None:
        self.alarm = {"step": step, "reasons": reasons, "checkpoint": None}
        action = ""
        if self.stop_on_alarm:
            path = self._checkpoint_path(trainer, step)
            trainer.save_checkpoint(path)  # on every rank: it is a collective under DDP / FSDP
            self.alarm["checkpoint"] = str(path)
            trainer.should_stop = True
            action = f" Saved {path} and stopping the run (stop_on_alarm)."
        rank_zero_warn(
            f"CollapseMonitor: representation collapse suspected at step {step}: {'; '.join(reasons)}. "
            "The features are losing their spread, so a falling loss no longer means learning. "
            "Try, one at a time: a lower learning rate or a longer warm-up; a slower EMA teacher "
            "(ema_momentum closer to 1, e.g. [0.998, 1.0]); the VICReg terms (vicreg_var_coeff: 1.0, "
            f"vicreg_cov_coeff: 0.04). See {COLLAPSE_DOCS}.{action}",
            category=UserWarning,
        )

    def _checkpoint_path(self, trainer: L.Trainer, step: int) -> Path:
        dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)  # a ModelCheckpoint's folder
        if self.checkpoint_dir is not None:
            folder = Path(self.checkpoint_dir)
        elif dirpath:
            folder = Path(dirpath)
        else:
            folder = Path(trainer.default_root_dir) / "checkpoints"
        return folder / f"collapse-step{step:06d}.ckpt"

    # -- checkpointed state ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"early_rankme": dict(self.early_rankme), "alarm": self.alarm}

    def load_state_dict(self, state_dict: dict) -> None:
        self.early_rankme = dict(state_dict.get("early_rankme", {}))
        self.alarm = state_dict.get("alarm")
