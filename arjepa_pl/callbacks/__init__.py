"""Lightning callbacks that work with every objective."""

from arjepa_pl.callbacks.collapse import CollapseMonitor, ExposesCollapseFeatures

__all__ = ["CollapseMonitor", "ExposesCollapseFeatures"]
