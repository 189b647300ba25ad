"""Callbacks that watch a run: metrics beyond the loss, throughput, and media."""

from arjepa_pl.callbacks.grad_norm import GradNormMonitor
from arjepa_pl.callbacks.media import MediaLogger
from arjepa_pl.callbacks.performance import PerformanceMonitor
