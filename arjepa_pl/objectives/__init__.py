"""LightningModules: each holds one training objective over plain nn.Module networks."""

from arjepa_pl.objectives.pretrain import PretrainObjective
from arjepa_pl.objectives.vjepa import JEPA, VJEPA

__all__ = ["PretrainObjective", "JEPA", "VJEPA"]
