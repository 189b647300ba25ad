"""The optimisation every trained LightningModule here shares, objectives and probes alike: AdamW with
V-JEPA's parameter groups, per-step learning-rate and weight-decay schedules that resume exactly,
parallelism as configuration, and checkpoints free of pickled modules."""

import inspect
import math
import warnings
from dataclasses import asdict, is_dataclass
from typing import Any, Literal, Optional

import lightning.pytorch as L
import torch
from torch import nn

from arjepa_pl import parallel, schedules
from arjepa_pl.errors import ConfigError
from arjepa_pl.models import FeatureExtractor


def check_optimiser(**values) -> None:
    """AdamW's settings as the schedules use them: a peak lr > 0, start / final lr and weight decays
    >= 0, betas in [0, 1), eps > 0, all finite. Raises ConfigError naming the first one that is not."""
    for name, value in values.items():
        numbers = value if name == "betas" else (value,)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers):
            raise ConfigError(name, value, "must be finite numbers" if name == "betas" else "must be a finite number")
    if values["lr"] <= 0:
        raise ConfigError("lr", values["lr"], "the peak learning rate must be > 0")
    for name in ("start_lr", "final_lr", "weight_decay", "final_weight_decay"):
        if values[name] < 0:
            raise ConfigError(name, values[name], "must be >= 0")
    betas = values["betas"]
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ConfigError("betas", list(betas), "AdamW's betas are two values in [0, 1)")
    if values["eps"] <= 0:
        raise ConfigError("eps", values["eps"], "must be > 0")


def decay_groups(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(with decay, without decay): biases and 1-D parameters (norms) are not decayed."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith(".bias") else decay).append(p)
    return decay, no_decay


def adamw_kernel(params: list[nn.Parameter]) -> dict[str, bool]:
    """AdamW's implementation for these parameters: the fused kernel (one pass over each tensor's
    memory) where every parameter is a float tensor on a device it supports, else torch's default.

    Measured on the bench model (3.1 M parameters, one CPU thread): fused 5.5 ms per step, the
    per-tensor loop 13.9 ms, foreach 16.2 ms (on the CPU foreach is a loop of whole-tensor passes).
    On CUDA fused is also the fastest and never reads the step count back to the host."""
    fused_devices = ("cpu", "cuda")
    if params and all(p.is_floating_point() and p.device.type in fused_devices for p in params) \
            and len({p.device.type for p in params}) == 1:
        return {"fused": True}
    return {}


class ScheduledModule(L.LightningModule):
    """The base of every objective and probe: AdamW on per-step schedules, parallelism, hyper-parameters.

    Subclasses call `self.save_init_args()` first in their __init__, build their networks as direct
    children (attributes) of the module, and implement training_step / validation_step.

    Parallelism is configuration, applied to those networks in `configure_model` (see
    arjepa_pl.parallel): `activation_checkpointing` and `compile` per transformer block, and FSDP2
    when the strategy provides a device mesh (arjepa_pl.strategies.FSDP2Strategy or Lightning's
    ModelParallelStrategy).

    These arguments are the `**optim_args` every subclass takes and passes on (jsonargparse reads them
    from this signature, so they are typed CLI keys, e.g. `--model.init_args.lr 1e-3`, and a mistyped
    one is an error). This is their only documentation.

    Args:
        lr / start_lr / final_lr / warmup_steps: linear warm-up start_lr -> lr, then cosine to final_lr
            (lr_schedule "warmup_cosine"), or lr held and a linear cooldown to final_lr over the last
            cooldown_steps of total_steps (lr_schedule "warmup_constant_cooldown", V-JEPA 2).
        weight_decay / final_weight_decay: cosine weight-decay schedule (biases and norms: none).
        betas / eps: AdamW's.
        total_steps: length of the schedules; default: what the trainer will run.
        activation_checkpointing: recompute each trainable transformer block's activations in backward.
        compile: torch.compile each transformer block.
    """

    def __init__(
        self,
        lr: float = 6.25e-4,
        start_lr: float = 2e-4,
        final_lr: float = 1e-6,
        warmup_steps: int = 0,
        weight_decay: float = 0.04,
        final_weight_decay: float = 0.4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        total_steps: Optional[int] = None,
        activation_checkpointing: bool = False,
        compile: bool = False,
        lr_schedule: Literal["warmup_cosine", "warmup_constant_cooldown"] = "warmup_cosine",
        cooldown_steps: int = 0,
    ):
        super().__init__()
        check_optimiser(lr=lr, start_lr=start_lr, final_lr=final_lr, weight_decay=weight_decay,
                        final_weight_decay=final_weight_decay, betas=betas, eps=eps)
        if warmup_steps < 0:
            raise ConfigError("warmup_steps", warmup_steps, "must be >= 0")
        if lr_schedule not in ("warmup_cosine", "warmup_constant_cooldown"):
            raise ConfigError("lr_schedule", lr_schedule, "must be 'warmup_cosine' or 'warmup_constant_cooldown'")
        if cooldown_steps < 0 or (cooldown_steps and lr_schedule != "warmup_constant_cooldown"):
            raise ConfigError("cooldown_steps", cooldown_steps,
                              "must be >= 0, and is used only by lr_schedule 'warmup_constant_cooldown'")
        if total_steps is not None and total_steps < 1:
            raise ConfigError("total_steps", total_steps, "must be >= 1 (or null: what the trainer will run)")
        self.lr, self.start_lr, self.final_lr, self.warmup_steps = lr, start_lr, final_lr, warmup_steps
        self.weight_decay, self.final_weight_decay = weight_decay, final_weight_decay
        beta1, beta2 = betas  # YAML gives a list; AdamW takes the pair
        self.betas, self.eps = (beta1, beta2), eps
        self._total_steps = total_steps
        self.activation_checkpointing, self.compile_blocks = activation_checkpointing, compile
        self.lr_schedule, self.cooldown_steps = lr_schedule, cooldown_steps
        self._parallelized = False
        if total_steps is not None:
            self.check_schedule_length(total_steps, "total_steps")

    def check_schedule_length(self, total_steps: int, source: str) -> None:
        """The warm-up must fit in the schedules' length (`source` names where that length comes from:
        total_steps here, trainer.max_steps in the CLI's pre-flight checks)."""
        if self.warmup_steps + self.cooldown_steps > total_steps:
            cooldown = f" plus the {self.cooldown_steps} cooldown steps" if self.cooldown_steps else ""
            raise ConfigError("warmup_steps", self.warmup_steps,
                              f"the warm-up{cooldown} is longer than the run ({source} = {total_steps}): "
                              f"use at most {total_steps - self.cooldown_steps} warm-up steps")

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        """Lightning's, with a Python number logged as a host tensor. Lightning would make it a tensor
        on the module's device: on a GPU a copy from pageable host memory, which waits for the device,
        for each of the numbers logged every step (lr, token counts, perf/*). A host tensor is stored
        as it is and read back for free. Values synced across ranks stay Lightning's (NCCL needs them
        on the device)."""
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not kwargs.get("sync_dist"):
            value = torch.tensor(float(value))
        super().log(name, value, *args, **kwargs)

    def save_init_args(self) -> None:
        """save_hyperparameters() for the calling __init__, made checkpoint-safe.

        Under LightningCLI the hparams are the parsed config. Built directly, they would hold the
        live objects passed in: modules become their rebuild config and dataclasses dicts, so
        checkpoints load with weights_only=True (hence Lightning's nn.Module warning is moot).
        """
        frame = inspect.currentframe()
        assert frame is not None  # CPython has frames
        caller = frame.f_back
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters(frame=caller)
        for key, value in list(self.hparams.items()):
            if isinstance(value, nn.Module):
                cls = type(value)
                self.hparams[key] = {"class_path": f"{cls.__module__}.{cls.__qualname__}",
                                     "init_args": dict(getattr(value, "config", {}))}
            elif isinstance(value, (list, tuple)) and any(is_dataclass(v) for v in value):
                self.hparams[key] = [asdict(v) if is_dataclass(v) and not isinstance(v, type) else v for v in value]

    def configure_model(self) -> None:
        """Activation checkpointing, compile, then FSDP2 on the strategy's mesh (arjepa_pl.parallel.parallelize).
        Lightning calls this hook for every fit/validate/test, in the strategy's environment; the work is
        done once."""
        if self._parallelized:
            return
        self._parallelized = True
        mesh = self._device_mesh
        if mesh is not None:
            if "tensor_parallel" in (mesh.mesh_dim_names or ()) and mesh["tensor_parallel"].size() > 1:
                raise ValueError("tensor parallelism is not implemented: use tensor_parallel_size=1 "
                                 "(arjepa_pl.strategies.FSDP2Strategy does)")
            if "data_parallel" in (mesh.mesh_dim_names or ()):
                mesh = mesh["data_parallel"]
        precision = self._trainer.precision if self._trainer is not None else None
        parallel.parallelize(self, self.activation_checkpointing, self.compile_blocks, mesh,
                             parallel.fsdp_mixed_precision(precision) if mesh is not None else None)

    def feature_extractor(self) -> Optional[FeatureExtractor]:
        """The representation this objective learns, fed as in training (what probes, the online monitor
        and export read); None for objectives without a vision encoder."""
        return None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Enough to rebuild the feature extractor without this class or its config (probes, export):
        # its architecture, and where its weights sit in the state dict.
        extractor = self.feature_extractor()
        if extractor is None:
            return
        names = {id(module): name for name, module in self.named_modules()}
        prefixes = {part: names[id(getattr(extractor, part))] + "."
                    for part in ("encoder", "tokenizer") if getattr(extractor, part) is not None}
        cls = type(self)
        checkpoint["feature_extractor"] = {"spec": extractor.spec(), "prefixes": prefixes,
                                           "objective": f"{cls.__module__}.{cls.__qualname__}"}

    @property
    def total_steps(self) -> int:
        """Optimizer steps the schedules span: given, or what the trainer will run."""
        if self._total_steps is not None:
            return self._total_steps
        steps = self.trainer.estimated_stepping_batches
        if steps == float("inf"):
            raise ValueError("set trainer.max_steps (or max_epochs), or the objective's total_steps: "
                             "the LR / weight-decay / EMA schedules need a finite length")
        return int(steps)

    def lr_at(self, step: int) -> float:
        if self.lr_schedule == "warmup_constant_cooldown":
            return schedules.warmup_constant_cooldown(step, self.warmup_steps, self.cooldown_steps, self.total_steps,
                                                      self.start_lr, self.lr, self.final_lr)
        return schedules.warmup_cosine(step, self.warmup_steps, self.total_steps, self.start_lr, self.lr, self.final_lr)

    def weight_decay_at(self, step: int) -> float:
        return schedules.cosine(step, self.total_steps, self.weight_decay, self.final_weight_decay)

    def configure_optimizers(self):
        decay, no_decay = decay_groups(self)
        groups = [
            {"params": decay, "weight_decay": self.weight_decay, "decayed": True},
            {"params": no_decay, "weight_decay": 0.0, "decayed": False},
        ]
        return torch.optim.AdamW(groups, lr=self.start_lr, betas=self.betas, eps=self.eps,
                                 **adamw_kernel(decay + no_decay))

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # Set every micro-batch; the values depend only on the optimizer step, so gradient
        # accumulation sees the same LR for all micro-batches of one step.
        step = self.trainer.global_step
        lr, wd = self.lr_at(step), self.weight_decay_at(step)
        for optimizer in self.trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr
                if group.get("decayed", True):
                    group["weight_decay"] = wd
        self.log_dict({"train/lr": lr, "train/weight_decay": wd}, on_step=True, on_epoch=False)
