"""What a comparison runs, as data: objectives, data conditions and probe stages, and the commands
they become (arjepa_pl.evaluation.compare executes them). The check of a comparison's arguments and
the `fit` command of a pretraining serve the planning benchmark too (arjepa_pl.planning.benchmark).

A *run* is one pretraining (objective x condition x seed) in OUT/<objective>/<condition>/seed<S>/
(no condition level when the comparison has none), or the random-init baseline of a condition and
seed. A *stage* is what is done with a run's checkpoints: `probe` fits a frozen-encoder config
(classification probe, decoder probe) on a checkpoint; `predict` runs the objective's own config in
`predict` mode on it (rollouts). A stage probes the last checkpoint, every checkpoint the pretraining
saved ("all": accuracy against training FLOPs), or chosen steps, each in <run>/<stage>/step<N>/.
"""

import json
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch
import yaml

from arjepa_pl.checkpoints import is_complete_checkpoint

RANDOM_INIT = "random_init"
SUMMARY = "summary.json"
ROLLOUT_METRICS = "rollouts/rollout_metrics.json"
RUN_SUMMARY = "--trainer.callbacks+=arjepa_pl.callbacks.RunSummary"
FEATURE_DATA = "arjepa_pl.evaluation.FrozenFeatureData"
STEP_IN_NAME = re.compile(r"step[=_-]?(\d+)")
# The optimiser settings a comparison gives every objective alike (and its fairness check compares).
OPTIMIZER_KEYS = ("lr", "start_lr", "final_lr", "warmup_steps", "weight_decay", "final_weight_decay", "betas", "eps")


@dataclass
class Pretraining:
    """One objective of the comparison.

    Args:
        name: its name in the results.
        config: its pretraining config (python -m arjepa_pl fit --config CONFIG).
        args: extra command-line overrides for it alone; "{seed}" is replaced by the seed.
        conditions: the conditions it is trained in (default: all), e.g. an ablation on clean data only.
        steps: its own optimizer steps (default: the comparison's), for a side experiment that shows what it
            tests sooner — a JEPA without collapse prevention collapses within ~50 steps. Only there does
            the comparison let steps differ; the report gives every objective's.
    """

    name: str
    config: str
    args: list[str] = field(default_factory=list)
    conditions: Optional[list[str]] = None
    steps: Optional[int] = None

    def steps_or(self, default: int) -> int:
        """Its optimizer steps: its own, else the comparison's `default`."""
        return self.steps or default


@dataclass
class Condition:
    """A variant of the data every objective is pretrained and probed on, e.g. with or without nuisance.

    Args:
        name: its name in the results and directories.
        data: data module options ({"nuisance": "dynamic"}), given to pretraining and probes alike
            (to the wrapped module when a probe config wraps its data in the feature cache).
    """

    name: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProbeStage:
    """What is done with pretrained checkpoints.

    Args:
        name: its name in the results and directories.
        kind: "probe" (fit `config` on the frozen encoder of a checkpoint: classification or decoder
            probe) or "predict" (the objective's own config in predict mode: rollouts and their metrics).
        config: the probe's config (kind probe only).
        args: command-line overrides for this stage; "{seed}" is replaced by the seed.
        checkpoints: "last", "all" (every checkpoint the pretraining saved; with the comparison's
            checkpoint_every, those at its multiples and the last) or a list of steps.
        objectives: the objectives it applies to ("random_init" for the baseline); default: all (and
            the baseline for kind probe).
        conditions: the conditions it applies to (default: all).
        along_conditions: where `checkpoints` is "all" or a list, the conditions whose runs are read
            along training (default: all); runs of the others only at their last checkpoint (e.g. the
            accuracy-against-FLOPs curves on clean data, the nuisance condition's end point alone).
    """

    name: str
    kind: Literal["probe", "predict"] = "probe"
    config: Optional[str] = None
    args: list[str] = field(default_factory=list)
    checkpoints: Union[Literal["all", "last"], list[int]] = "last"
    objectives: Optional[list[str]] = None
    conditions: Optional[list[str]] = None
    along_conditions: Optional[list[str]] = None

    def for_condition(self, condition: str) -> "ProbeStage":
        """This stage as it reads the checkpoints of a run in `condition` (see along_conditions)."""
        if self.along_conditions is None or condition in self.along_conditions:
            return self
        return replace(self, checkpoints="last")


@dataclass
class Run:
    """One pretraining (or a baseline) and where it lives; `condition` is empty where there are none."""

    objective: str
    seed: int
    directory: Path
    condition: str = ""

    @property
    def name(self) -> str:
        return "/".join(p for p in (self.objective, self.condition, f"seed{self.seed}") if p)


@dataclass
class Job:
    """One command of the plan: a pretraining, a stage on one checkpoint of a run, or (the planning
    benchmark) a planning evaluation."""

    kind: Literal["pretrain", "probe", "predict", "plan"]
    run: Run
    directory: Path
    stage: Optional[ProbeStage] = None
    step: int = 0
    checkpoint: Optional[Path] = None

    @property
    def name(self) -> str:
        return self.run.name if self.stage is None else f"{self.run.name}/{self.stage.name}/step{self.step}"


def check_names(kind: str, names: Sequence[str], reserved: Sequence[str]) -> None:
    """Names of objectives, conditions or stages: distinct, without '/' (the separator of a run's name and
    directories), and none of the `reserved` names a baseline has."""
    if len(set(names)) != len(names) or set(names) & set(reserved) or any("/" in n for n in names):
        raise ValueError(f"{kind} names must be distinct, without '/', and not {list(reserved)}: {list(names)}")


def check_run_arguments(command: str, objectives: Sequence[Pretraining], reserved: Sequence[str],
                        seeds: Sequence[int], steps: int, optimizer: Optional[dict],
                        evaluation_configs: Sequence[str], own_steps: bool = False) -> None:
    """What compare and plan_benchmark refuse before running anything: no objective, objective names that
    clash (check_names), seeds not distinct, no steps (or an objective's own steps where `own_steps` is
    False), an optimiser key the fairness check does not cover,
    a config (the objectives' or the evaluation's: probes, planning) that is not there."""
    if not objectives:
        raise ValueError(f"{command} needs at least one objective")
    check_names("objective", [o.name for o in objectives], reserved)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {list(seeds)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    for o in objectives:
        if o.steps is not None and o.steps < 1:
            raise ValueError(f"objective {o.name}: steps must be >= 1 (or null: the comparison's), got {o.steps}")
        if o.steps is not None and not own_steps:
            raise ValueError(f"objective {o.name}: {command} trains every objective for the same steps; "
                             f"remove its steps ({o.steps})")
    unknown = set(optimizer or {}) - set(OPTIMIZER_KEYS)
    if unknown:
        raise ValueError(f"unknown optimizer keys {sorted(unknown)}; use {', '.join(OPTIMIZER_KEYS)}")
    for path in [*evaluation_configs, *(o.config for o in objectives)]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"config not found: {path} (paths are relative to {os.getcwd()})")


def with_seed(args: Sequence[Any], seed: int) -> list[str]:
    """Command-line arguments with every `{seed}` replaced by the run's seed (YAML numbers as strings)."""
    return [str(a).replace("{seed}", str(seed)) for a in args]


def objective_args(objective: Pretraining, seed: int, shared_args: Sequence[str], optimizer_args: Sequence[str],
                   data: Sequence[str] = ()) -> list[str]:
    """An objective's config and overrides, the more specific later (they win): the arguments every
    objective gets, the data options (a condition's), the equal optimiser, the objective's own; the seed."""
    return ["--config", objective.config, *with_seed(shared_args, seed), *data, *optimizer_args,
            *with_seed(objective.args, seed), f"--seed_everything={seed}"]


def fit_command(python: list[str], objective: Pretraining, run: Run, steps: int, pretrain_args: Sequence[str],
                optimizer_args: Sequence[str], data: Sequence[str] = (), callbacks: Sequence[str] = ()) -> list[str]:
    """One objective's run as `fit` (`python`: launcher and interpreter up to `-m arjepa_pl`): its
    objective_args, then the run's steps (the objective's own, else `steps`) and directory and any extra
    callbacks, resuming from its checkpoint when it has one."""
    return [*python, "fit", *objective_args(objective, run.seed, pretrain_args, optimizer_args, data),
            f"--trainer.max_steps={objective.steps_or(steps)}", f"--trainer.default_root_dir={run.directory}",
            *callbacks, RUN_SUMMARY, "--ckpt_path=last"]


def data_args(prefix: str, options: dict[str, Any], seed: int) -> list[str]:
    """--<prefix><key>=<value> for data module options; strings as they are ("{seed}" replaced), the
    rest as JSON."""
    return [f"--{prefix}{key}=" + (value.replace("{seed}", str(seed)) if isinstance(value, str) else json.dumps(value))
            for key, value in options.items()]


def data_prefix(config: str) -> str:
    """Where data options go in a probe config's command line: under the wrapped module when its data is
    the feature cache (read from the YAML; the command is then checked in full)."""
    data = (yaml.safe_load(Path(config).read_text()) or {}).get("data") or {}
    return "data.init_args.data.init_args." if data.get("class_path") == FEATURE_DATA else "data.init_args."


def checkpoint_step(path: Path) -> Optional[int]:
    """The optimizer step a checkpoint was saved at: from its name (step000300.ckpt) or its contents."""
    match = STEP_IN_NAME.search(path.name)
    if match:
        return int(match.group(1))
    if path.is_file():
        return int(torch.load(path, map_location="cpu", mmap=True, weights_only=True).get("global_step", -1))
    return None


def saved_checkpoints(directory: Path) -> dict[int, Path]:
    """{step: checkpoint} of a run's checkpoint folder; a step saved twice (last.ckpt) keeps its named file."""
    found: dict[int, Path] = {}
    if not directory.is_dir():
        return found
    complete = (p for p in directory.iterdir() if is_complete_checkpoint(p))
    for path in sorted(complete, key=lambda p: p.name.startswith("last")):
        step = checkpoint_step(path)
        if step is not None and step >= 0:
            found.setdefault(step, path)
    return found


def choose_checkpoints(stage: ProbeStage, saved: dict[int, Path], final_step: int) -> dict[int, Path]:
    """The checkpoints a stage reads, by step; an error names a requested step that was not saved."""
    if not saved:
        return {}
    if stage.checkpoints == "last":
        last = max(saved)
        return {last: saved[last]}
    if stage.checkpoints == "all":
        return dict(sorted(saved.items()))
    missing = [s for s in stage.checkpoints if s not in saved]
    if missing:
        raise FileNotFoundError(f"stage {stage.name}: no checkpoint at steps {missing} (saved: {sorted(saved)}); "
                                "save them in the pretraining config (ModelCheckpoint every_n_train_steps)")
    return {s: saved[s] for s in sorted(stage.checkpoints)}


def planned_steps(stage: ProbeStage, every_n_steps: Optional[int], steps: int) -> list[int]:
    """The steps a stage will read, before the checkpoints exist (for the dry run's plan)."""
    if stage.checkpoints == "last":
        return [steps]
    if stage.checkpoints == "all":
        every = [s for s in range(every_n_steps, steps + 1, every_n_steps)] if every_n_steps else []
        return sorted(set(every) | {steps})
    return sorted(stage.checkpoints)


def config_checkpoint_every(resolved) -> Optional[int]:
    """every_n_train_steps of the resolved config's ModelCheckpoint, if any."""
    for callback in resolved.get("trainer.callbacks") or []:
        callback = callback.as_dict() if hasattr(callback, "as_dict") else dict(callback)
        if callback.get("class_path", "").endswith("ModelCheckpoint"):
            return (callback.get("init_args") or {}).get("every_n_train_steps")
    return None


def extra_checkpoints(every: int, dirpath: Path) -> str:
    """A ModelCheckpoint appended to a pretraining's callbacks: a checkpoint every `every` steps, for
    the stages that probe along training (named probe-stepNNNNNN so it never collides with the config's)."""
    init = {"dirpath": str(dirpath), "filename": "probe-step{step:06d}", "auto_insert_metric_name": False,
            "every_n_train_steps": every, "save_top_k": -1, "save_last": False}
    return "--trainer.callbacks+=" + json.dumps({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                                 "init_args": init})


def is_complete(directory: Path, stage: str, min_step: int = 0) -> bool:
    """Whether the run summary in `directory` says its `stage` finished, at `min_step` or later."""
    try:
        summary = json.loads((directory / SUMMARY).read_text())
    except (OSError, ValueError):
        return False
    return summary.get("stage") == stage and summary.get("global_step", 0) >= min_step


def job_done(job: Job, steps: int) -> bool:
    if job.kind == "pretrain":
        return is_complete(job.directory, "fit", steps)
    if job.kind == "predict":
        return (job.directory / ROLLOUT_METRICS).is_file()
    return is_complete(job.directory, "fit")


def unfinished(directory: Path) -> RuntimeError:
    """The error of a job that exited without finishing (pre-empted: its SLURM job is being requeued);
    starting the comparison again resumes it."""
    return RuntimeError(f"{directory} exited before finishing (pre-empted?); start the comparison (or benchmark) "
                        "again to resume it from its last checkpoint")


def command_line(command: list[str]) -> str:
    return shlex.join(command)


def plain(value):
    """Namespaces -> dicts, recursively, for comparison and printing."""
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
