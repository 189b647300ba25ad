"""Old home of the rollout and text-sample writers, which are callbacks: they live in
arjepa_pl.callbacks.rollout_writers. Kept so configs that name `arjepa_pl.objectives.ar_writers.*` load."""

from arjepa_pl.callbacks.rollout_writers import RolloutWriter, TextSampleWriter

__all__ = ["RolloutWriter", "TextSampleWriter"]
