"""Frozen evaluation: probe tasks, probes, and the comparison of objectives."""

from arjepa_pl.evaluation.multiview import average_view_probabilities, flatten_views
from arjepa_pl.evaluation.probe import Probe
from arjepa_pl.evaluation.tasks import DEMO_TASKS, ProbeTask, as_task, as_tasks

__all__ = ["DEMO_TASKS", "Probe", "ProbeTask", "as_task", "as_tasks", "average_view_probabilities", "flatten_views"]
