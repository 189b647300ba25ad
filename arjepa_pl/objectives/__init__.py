"""LightningModules: each holds one training objective over plain nn.Module networks."""

from arjepa_pl.objectives.ac_ar_video import ACARVideo
from arjepa_pl.objectives.ac_jepa import ACJEPA
from arjepa_pl.objectives.vjepa import JEPA, VJEPA
from arjepa_pl.optim import ScheduledModule

# The base's name before it was also the probes' base; kept for code that imports it.
PretrainObjective = ScheduledModule

__all__ = ["ACARVideo", "ACJEPA", "JEPA", "VJEPA", "PretrainObjective", "ScheduledModule"]
