"""arjepa_pl: autoregressive and JEPA world models on video, in PyTorch Lightning.

Importing the package loads nothing heavy: `python -m arjepa_pl` (arjepa_pl.cli) is the entry point,
and the leaf modules (video_io, normalization) are imported by the data code without the framework.
"""

from arjepa_pl import quiet  # noqa: F401  (dependencies' messages a user cannot act on: see quiet.py)
