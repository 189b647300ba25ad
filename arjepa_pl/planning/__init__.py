"""Planning with world models: sampling-based trajectory optimisers (CEM, MPPI), one small world-model
interface (learned models and the true simulator as an oracle), model-predictive control on the
two-rooms task, and `python -m arjepa_pl plan` (docs/planning.md)."""

from arjepa_pl.planning.mpc import MPC, EpisodeResults, Episodes
from arjepa_pl.planning.optimizers import CEM, MPPI, PlanResult, SamplingPlanner, colored_noise
from arjepa_pl.planning.world_models import ObjectiveWorldModel, SimulatorWorldModel, WorldModel

__all__ = ["CEM", "MPC", "MPPI", "EpisodeResults", "Episodes", "ObjectiveWorldModel", "PlanResult", "SamplingPlanner",
           "SimulatorWorldModel", "WorldModel", "colored_noise"]
