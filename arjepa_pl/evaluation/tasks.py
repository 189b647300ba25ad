"""What a probe predicts from a clip's integer label.

A data set often encodes several factors in one label; the demo set's is shape * 4 + direction
(appearance and dynamics). A ProbeTask reads one factor: `label // divisor`, then `% modulo` when
given, so probes of appearance and of dynamics run on the same clips, the same manifest and one
encoder pass. A class outside [0, num_classes) is an error, never wrapped around silently.
"""

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch


@dataclass(frozen=True)
class ProbeTask:
    """One classification target.

    Args:
        name: metric name (val/<name>/top1, ...).
        num_classes: classes of this task.
        divisor, modulo: the task's class is label // divisor, then % modulo when modulo is set
            (defaults: the label itself).
    """

    name: str
    num_classes: int
    divisor: int = 1
    modulo: Optional[int] = None

    def __post_init__(self):
        if not self.name or "/" in self.name:
            raise ValueError(f"task name must be non-empty without '/', got {self.name!r}")
        if self.num_classes < 2:
            raise ValueError(f"task {self.name!r}: num_classes must be >= 2, got {self.num_classes}")
        if self.divisor < 1 or (self.modulo is not None and self.modulo < 1):
            raise ValueError(f"task {self.name!r}: divisor and modulo must be >= 1, got {self.divisor}, {self.modulo}")

    def targets(self, labels: torch.Tensor, check: bool = True) -> torch.Tensor:
        """This task's class of every label. The range checks read the labels back to the host (on a
        GPU, a wait for the device): `check=False` skips them for labels known to be in range."""
        if check and labels.numel() and int(labels.min()) < 0:
            raise ValueError(f"task {self.name!r}: labels must be >= 0, got {int(labels.min())}")
        classes = labels // self.divisor
        if self.modulo is not None:
            classes = classes % self.modulo
        if check and classes.numel() and int(classes.max()) >= self.num_classes:
            i = int((classes >= self.num_classes).nonzero()[0])
            raise ValueError(f"task {self.name!r}: label {int(labels[i])} gives class {int(classes[i])}, outside its "
                             f"{self.num_classes} classes (check num_classes / divisor / modulo)")
        return classes


# The demo set (data_modules.demo_videos): label = shape_index * 4 + direction_index.
DEMO_TASKS = (ProbeTask("shape", 3, divisor=4), ProbeTask("direction", 4, modulo=4), ProbeTask("class", 12))


def as_task(task) -> ProbeTask:
    """A ProbeTask from itself or a config dict."""
    if isinstance(task, ProbeTask):
        return task
    if isinstance(task, dict):
        unknown = set(task) - {"name", "num_classes", "divisor", "modulo"}
        if unknown:
            raise ValueError(f"unknown probe task keys {sorted(unknown)}: use name, num_classes, divisor, modulo")
        return ProbeTask(**task)
    raise TypeError(f"a probe task is a ProbeTask or a dict, got {task!r}")


def as_tasks(tasks, owner: str) -> tuple[ProbeTask, ...]:
    """At least one task, with distinct names (each names its metrics); `owner` names the caller in errors."""
    tasks = tuple(as_task(task) for task in tasks)
    if not tasks:
        raise ValueError(f"{owner} needs at least one task")
    names = [task.name for task in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"{owner} task names must be distinct, got {names}")
    return tasks


def check_listed_labels(trainer: Any, check: Callable[[torch.Tensor], Any]) -> bool:
    """Run `check` on every training label the fit's data module lists (its `label_values()`: the video
    and moving-shapes modules list them) and say whether it could. A probe that checked them once need
    not check each training batch's labels, which reads them back to the host: on a GPU a wait every
    step. False when the training data does not come from a data module that lists its labels, or it
    cannot read them (its own check reports that)."""
    # What serves this fit's training batches (a data module, the model or loaders), not
    # trainer.datamodule: a trainer keeps the data module of an earlier fit.
    serving = getattr(getattr(getattr(trainer, "fit_loop", None), "_data_source", None), "instance", None)
    labels_of = getattr(serving, "label_values", None)
    if not callable(labels_of):
        return False
    try:
        labels = torch.tensor(labels_of(), dtype=torch.long)
    except (OSError, ValueError):
        return False
    check(labels)  # a label outside a task raises here, before training, as its batch would have
    return True
