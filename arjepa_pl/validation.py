"""Pre-flight checks: what can be known wrong about a run is found after the CLI has built its objects
and before anything is written or started (logger, run directory, demo data, sanity check).

Each object checks its own arguments in its constructor (a refused value becomes a keyed message in
arjepa_pl.config_errors); data modules may also define `check_inputs()` for what a constructor should
not touch (their files). What no single object can see is checked here, one function per rule, each
reusing the code that applies the rule during training:

- the data's clip shape against the encoder's tubelet and patch (`token_grid`, the one place the grid is computed);
- the objective's warm-up against the run's length (`ScheduledModule.check_schedule_length`; against
  trainer.max_steps a warning, since shortening a run is how a config is tried);
- probe tasks against the data's labels (`ProbeTask.targets`);
- the accelerator and device count against the machine (Lightning's accelerators);
- `--ckpt_path` exists.
Every problem found is reported at once (ConfigErrors), each with its full key.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from fsspec.implementations.local import LocalFileSystem
from jsonargparse import Namespace
from lightning.fabric.utilities.cloud_io import get_filesystem

from arjepa_pl.errors import ConfigError, raise_all
from arjepa_pl.models.patches import token_grid

log = logging.getLogger("arjepa_pl.validation")

# --ckpt_path values that are not paths (Lightning's, and ours: `last`).
CKPT_PATH_WORDS = ("last", "best", "hpc", "registry")


def check_run(model: Any, data: Any, trainer: Any, config: Namespace, fit: bool) -> None:
    """Every pre-flight check of a fit (or validate / test / predict: `fit` False); `config` is the
    subcommand's (parsed). Raises ConfigError, or ConfigErrors for several."""
    errors = list(check_inputs(model, "model.init_args"))
    errors += check_inputs(data, "data.init_args")
    errors += check_clip_fits_encoder(model, data, config)
    if fit:
        warn_schedule_length(model, trainer)
    errors += check_probe_tasks(model, data, trainer, config)
    errors += check_ckpt_path(config.get("ckpt_path"))
    raise_all(errors)


def check_inputs(obj: Any, prefix: str) -> Iterator[ConfigError]:
    """The object's own check of its inputs (files it reads), when it has one."""
    check = getattr(obj, "check_inputs", None)
    if callable(check):
        try:
            check()
        except ConfigError as e:
            yield e.within(prefix)


# -- cross-component rules ------------------------------------------------------------------------

def _encoder_source(config: Namespace) -> str:
    """Which key gives the model's encoder, for messages."""
    init_args = config.get("model.init_args") or Namespace()
    if init_args.get("encoder_checkpoint"):
        return f"the encoder of model.init_args.encoder_checkpoint ({init_args.get('encoder_checkpoint')})"
    return "model.init_args.encoder"


def check_clip_fits_encoder(model: Any, data: Any, config: Namespace) -> Iterator[ConfigError]:
    """The data's clips (frames_per_clip x crop_size^2) or images (crop_size^2) tile into the encoder's
    tubelets and patches. Each size is tried alone so that the message names the key that is off."""
    extractor = model.feature_extractor() if callable(getattr(model, "feature_extractor", None)) else None
    encoder = getattr(extractor, "encoder", None)
    crop = getattr(data, "crop_size", None)
    if encoder is None or crop is None or not hasattr(encoder, "token_grid"):
        return
    tubelet, patch = encoder.tubelet_size, encoder.patch_size
    frames = getattr(data, "frames_per_clip", None) if encoder.video else None
    if encoder.video and frames is None:
        return
    crop, frames = int(crop), int(frames or 1)
    try:
        token_grid((1, 3, frames, crop, crop) if encoder.video else (1, 3, crop, crop), tubelet, patch, encoder.video)
        return
    except ValueError as e:
        why = f"{e} ({_encoder_source(config)}: tubelet_size {tubelet}, patch_size {patch})"
    alone: dict[str, tuple[int, tuple[int, ...]]] = {}
    if encoder.video:
        alone["frames_per_clip"] = (frames, (1, 3, frames, patch, patch))
    alone["crop_size"] = (crop, (1, 3, tubelet, crop, crop) if encoder.video else (1, 3, crop, crop))
    for name, (value, shape) in alone.items():
        try:
            token_grid(shape, tubelet, patch, encoder.video)
        except ValueError:
            yield ConfigError(f"data.init_args.{name}", value, why)


def warn_schedule_length(model: Any, trainer: Any) -> None:
    """A warm-up longer than trainer.max_steps, when the schedules run over the trainer's steps, is a
    warning: shortening a run with --trainer.max_steps to try a config is how configs are meant to be
    tried. (A warm-up longer than an explicit total_steps is an error, from the constructor.)"""
    check = getattr(model, "check_schedule_length", None)
    if not callable(check) or getattr(model, "_total_steps", None) is not None:
        return
    max_steps = getattr(trainer, "max_steps", -1)
    if max_steps is not None and max_steps > 0:
        try:
            check(max_steps, "trainer.max_steps")
        except ConfigError as e:
            lines = e.within("model.init_args").message().splitlines()
            log.warning(f"{lines[0]}: {' '.join(line.strip() for line in lines[1:])}; the learning rate never "
                        "reaches its peak")


def _probe_tasks(model: Any, trainer: Any, config: Namespace) -> Iterator[tuple[str, Any]]:
    """(key, tasks) of the model's and the callbacks' probe tasks."""
    if getattr(model, "tasks", None):
        yield "model.init_args.tasks", model.tasks
    configured = config.get("trainer.callbacks") or []
    for i, node in enumerate(configured if isinstance(configured, list) else [configured]):
        init_args = node.get("init_args") if isinstance(node, Namespace) else None
        if init_args is None or not init_args.get("tasks"):
            continue
        callback = next((c for c in trainer.callbacks if type(c).__name__ == node.class_path.rpartition(".")[2]
                         and getattr(c, "tasks", None)), None)
        if callback is not None:
            yield f"trainer.callbacks[{i}].init_args.tasks", callback.tasks


def check_probe_tasks(model: Any, data: Any, trainer: Any, config: Namespace) -> Iterator[ConfigError]:
    """Every label of the data gives each probe task a class in range (the test probes apply in training)."""
    owners = list(_probe_tasks(model, trainer, config))
    labels_of = getattr(data, "label_values", None)
    if not owners or not callable(labels_of):
        return
    try:
        labels = torch.tensor(labels_of(), dtype=torch.long)
    except (OSError, ValueError):
        return  # an unreadable manifest is reported by the data module's own check
    for key, tasks in owners:
        for j, task in enumerate(tasks):
            try:
                task.targets(labels)
            except ValueError as e:
                yield ConfigError(f"{key}[{j}].num_classes", task.num_classes, str(e))


def check_ckpt_path(ckpt_path: Optional[str]) -> Iterator[ConfigError]:
    """A --ckpt_path that is a local path must exist (`last` and Lightning's other words are not paths)."""
    if ckpt_path is None or str(ckpt_path) in CKPT_PATH_WORDS:
        return
    if isinstance(get_filesystem(ckpt_path), LocalFileSystem) and not Path(ckpt_path).exists():
        yield ConfigError("ckpt_path", str(ckpt_path), "no such file or directory (`--ckpt_path last` resumes "
                          "the newest checkpoint of the run directory, or starts fresh)")


# -- the machine ------------------------------------------------------------------------------------

def check_accelerator(trainer_config: Namespace) -> None:
    """The accelerator asked for exists here, with enough devices (before the Trainer is built: Lightning's
    own errors for this are long and do not name the key)."""
    from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator

    accelerator = trainer_config.get("accelerator")
    name = accelerator if isinstance(accelerator, str) else None
    kinds = {"gpu": CUDAAccelerator if not MPSAccelerator.is_available() else MPSAccelerator,
             "cuda": CUDAAccelerator, "mps": MPSAccelerator}
    if name not in kinds:
        return
    kind = kinds[name]
    if not kind.is_available():
        raise ConfigError("trainer.accelerator", name, f"no {'CUDA GPU' if kind is CUDAAccelerator else 'MPS device'} "
                          "is available on this machine: use auto (GPU when there is one) or cpu")
    devices = trainer_config.get("devices")
    count = kind.auto_device_count()
    wanted = devices if isinstance(devices, int) else len(devices) if isinstance(devices, (list, tuple)) else None
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        wanted = int(devices)
    if wanted is not None and wanted > count:
        raise ConfigError("trainer.devices", devices, f"this machine has {count} {name} device(s)")
