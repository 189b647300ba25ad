"""Frozen evaluation: probe tasks, probes, and the comparison of objectives."""

from arjepa_pl.evaluation.tasks import DEMO_TASKS, ProbeTask, as_task

__all__ = ["DEMO_TASKS", "ProbeTask", "as_task"]
