"""Callbacks that work with every objective: metrics beyond the loss, throughput, media, collapse,
online probes, run summaries, a guard against non-finite losses, and the prediction writers of the
AR objectives."""

from arjepa_pl.callbacks.collapse import CollapseMonitor, ExposesCollapseFeatures
from arjepa_pl.callbacks.defaults import FinalValidation
from arjepa_pl.callbacks.grad_norm import GradNormMonitor
from arjepa_pl.callbacks.media import MediaLogger
from arjepa_pl.callbacks.nonfinite import NonFiniteGuard
from arjepa_pl.callbacks.online_probe import OnlineProbe
from arjepa_pl.callbacks.performance import PerformanceMonitor
from arjepa_pl.callbacks.progress import RunProgressBar
from arjepa_pl.callbacks.rollout_writers import RolloutWriter, TextSampleWriter
from arjepa_pl.callbacks.run_summary import RunSummary

__all__ = ["CollapseMonitor", "ExposesCollapseFeatures", "FinalValidation", "GradNormMonitor", "MediaLogger",
           "NonFiniteGuard", "OnlineProbe", "PerformanceMonitor", "RolloutWriter", "RunProgressBar", "RunSummary",
           "TextSampleWriter"]
