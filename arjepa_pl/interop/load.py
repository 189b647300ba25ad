"""`load_feature_extractor(path)`: a frozen FeatureExtractor from any checkpoint kind this package reads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import torch

from arjepa_pl.interop.native import (
    FORMAT,
    VERSION,
    check_export_which,
    from_spec,
    load_lightning,
    load_safetensors,
    load_sharded,
    torch_load,
)
from arjepa_pl.interop.official import encoder_from_official, official_encoder_entry
from arjepa_pl.interop.pretrained import HF_PREFIX
from arjepa_pl.interop.weights import WHICH, InteropError, frozen, strip_prefixes
from arjepa_pl.models import FeatureExtractor


def _is_tensor_dict(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _read_huggingface(source: str, which: str) -> tuple[FeatureExtractor, dict]:
    """A transformers V-JEPA 2 directory or `hf:<hub id>`: its one encoder (arjepa_pl.interop.huggingface)."""
    from arjepa_pl.interop.huggingface import load_huggingface

    if which == "target_encoder":
        raise InteropError(f"{source} is a transformers V-JEPA 2 model: it holds one encoder, the official "
                           "checkpoint's context encoder (no target encoder); use which='auto' or 'encoder', or "
                           "the training-layout checkpoint's target_encoder")
    model = load_huggingface(source[len(HF_PREFIX):] if source.startswith(HF_PREFIX) else source)
    info = {"kind": "huggingface", "objective": None, "global_step": None, "which": "encoder"}
    return frozen(FeatureExtractor(model.encoder)), {"checkpoint": source, **info}


def read_feature_extractor(path: Union[str, os.PathLike], which: str = "auto", num_heads: Optional[int] = None,
          weights_only: bool = True, encoder_config: Optional[dict] = None) -> tuple[FeatureExtractor, dict]:
    """(frozen extractor, where it came from: a JSON-able dict with checkpoint, kind, objective,
    global_step, which) — see load_feature_extractor for the arguments."""
    if which not in WHICH:
        raise InteropError(f"which must be one of {WHICH}, got {which!r}")
    if str(path).startswith(HF_PREFIX) or (Path(path) / "config.json").is_file():
        return _read_huggingface(str(path), which)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    source = str(path)
    if path.is_dir():
        extractor, info = load_sharded(path, which)
    elif path.suffix == ".safetensors":
        extractor, info = load_safetensors(path, which)
    else:
        checkpoint = torch_load(path, weights_only)
        if not isinstance(checkpoint, dict):
            raise InteropError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
        if checkpoint.get("format") == FORMAT:
            if checkpoint.get("version") != VERSION:
                raise InteropError(f"{path} is export format version {checkpoint.get('version')}; "
                                   f"this arjepa_pl reads {VERSION}")
            info = dict(checkpoint.get("source") or {})
            check_export_which(info, which, source)
            extractor = from_spec(checkpoint["spec"], checkpoint["state_dict"], source)
            info = {**info, "kind": "export"}
        elif "state_dict" in checkpoint and ("pytorch-lightning_version" in checkpoint
                                             or "feature_extractor" in checkpoint):
            extractor, info = load_lightning(checkpoint, which, source)
        elif any(isinstance(checkpoint.get(k), dict) for k in ("target_encoder", "encoder")):
            name, weights = official_encoder_entry(checkpoint, which, source)
            encoder = encoder_from_official(weights, f"{source}[{name!r}]", num_heads, encoder_config)
            extractor = FeatureExtractor(encoder)
            info = {"kind": "official", "objective": None, "global_step": None, "which": name,
                    "epoch": checkpoint.get("epoch") if isinstance(checkpoint.get("epoch"), int) else None}
        elif _is_tensor_dict(checkpoint) and "patch_embed.proj.weight" in strip_prefixes(checkpoint):
            if which != "auto":
                raise InteropError(f"{path} is a single encoder's state dict: which={which!r} cannot choose; "
                                   "use 'auto'")
            extractor = FeatureExtractor(encoder_from_official(checkpoint, source, num_heads, encoder_config))
            info = {"kind": "official", "objective": None, "global_step": None, "which": None}
        else:
            raise InteropError(f"{path} is not a checkpoint this loader knows: no 'state_dict' with a feature "
                               "extractor (arjepa_pl), no 'format' (export), no 'encoder' / 'target_encoder' "
                               f"(official); its top-level keys: {', '.join(map(str, list(checkpoint)[:12]))}")
    return frozen(extractor), {"checkpoint": source, **info}


def load_feature_extractor(path: Union[str, os.PathLike], which: str = "auto", num_heads: Optional[int] = None,
                           weights_only: bool = True, encoder_config: Optional[dict] = None) -> FeatureExtractor:
    """A frozen FeatureExtractor (eval mode, requires_grad False) from any checkpoint kind this module
    reads (see the module docstring).

    Args:
        path: a Lightning `.ckpt`, a sharded checkpoint directory, an export (`.pt` / `.safetensors`),
            or an official V-JEPA / I-JEPA checkpoint.
        which: "auto" (what probes should read), "target_encoder" or "encoder".
        num_heads: attention heads of an official encoder (default: the standard ViT for its width).
        weights_only: torch.load's; False only for trusted files holding other pickled objects.
        encoder_config: VisionTransformer kwargs of an official encoder instead of inferring them.
    """
    return read_feature_extractor(path, which, num_heads, weights_only, encoder_config)[0]
