"""Frozen evaluation: probe tasks, probes (classification and pixel decoding) on a frozen encoder, the
feature cache they share, and the comparison of objectives."""

from arjepa_pl.evaluation.decoder_probe import DecoderProbe
from arjepa_pl.evaluation.feature_cache import FrozenFeatureData
from arjepa_pl.evaluation.intervals import TopKCounts, wilson_interval
from arjepa_pl.evaluation.multiview import average_view_probabilities, flatten_views
from arjepa_pl.evaluation.probe import Probe
from arjepa_pl.evaluation.tasks import DEMO_TASKS, ProbeTask, as_task, as_tasks

__all__ = ["DEMO_TASKS", "DecoderProbe", "FrozenFeatureData", "Probe", "ProbeTask", "TopKCounts", "as_task", "as_tasks",
           "average_view_probabilities", "flatten_views", "wilson_interval"]
