"""Encoders in and out of arjepa_pl: official V-JEPA / I-JEPA checkpoints, our checkpoints, exports.

Encoders in and out of arjepa_pl: official V-JEPA / I-JEPA checkpoints, our checkpoints, exports.

`load_feature_extractor(path)` returns a frozen FeatureExtractor (eval mode, no gradients) from any of:

- an arjepa_pl Lightning checkpoint (`.ckpt`): its `feature_extractor` entry (written by
  ScheduledModule.on_save_checkpoint) gives the architecture and where the weights sit in its
  state dict; a checkpoint without one (ARText: no vision encoder) is an error;
- a sharded checkpoint directory (FSDP2, torch.distributed.checkpoint): the same entry from its
  `meta.pt`, and only the encoder's tensors are read from the shards;
- a file written by `export_feature_extractor` (`.pt` or `.safetensors`);
- an official V-JEPA / I-JEPA / V-JEPA 2 checkpoint (a dict with `encoder` / `target_encoder` /
  `predictor` / `opt` / `scaler` / `epoch` ..., as the official repositories save them), or a bare
  official encoder state dict;
- a Hugging Face transformers V-JEPA 2 model: a directory with its config.json, or `hf:<hub id>`.

`which` picks the encoder: "auto" = what the objective's probes read (JEPA: the EMA target encoder; AR
models: their only, block-causal encoder) or, in official checkpoints, `target_encoder` (what the
official probes read); "target_encoder" / "encoder" name one explicitly (in our JEPA checkpoints
"encoder" is the context encoder, same architecture).

Modules: weights.py (state-dict checks), official.py (official checkpoints and their key mapping,
predictors included), native.py (our checkpoints and exports), load.py (any file -> FeatureExtractor),
export.py (write an export; `python -m arjepa_pl export`), huggingface.py (transformers' V-JEPA 2, both
ways), pretrained.py (a JEPA's encoder / teacher / predictor from any of these: `JEPA(init_from=...)`).
"""

from arjepa_pl.interop.export import export_feature_extractor, save_feature_extractor
from arjepa_pl.interop.load import load_feature_extractor, read_feature_extractor
from arjepa_pl.interop.official import (
           encoder_from_official,
           halves_swapped,
           infer_encoder_config,
           permute_residual_channels,
)
from arjepa_pl.interop.weights import WHICH, InteropError, strip_prefixes

__all__ = ["WHICH", "InteropError", "encoder_from_official", "export_feature_extractor", "halves_swapped",
           "infer_encoder_config", "load_feature_extractor", "permute_residual_channels", "read_feature_extractor",
           "save_feature_extractor", "strip_prefixes"]
