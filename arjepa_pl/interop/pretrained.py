"""Start a JEPA's networks from pretrained weights (`JEPA(init_from=...)`): continued pretraining.

`init_jepa(source, modules, parts)` loads the requested parts — "encoder" (the context encoder),
"target_encoder" (the EMA teacher), "predictor" (with its mask tokens) — into a JEPA's existing
modules, whose architecture the run's configuration fixes; every tensor is shape-checked and every
weight of a requested part must be used (a missing, unexpected or misshapen key is an error naming it).

Sources:
- an official V-JEPA / V-JEPA 2 training checkpoint (a dict with `encoder`, `target_encoder`,
  `predictor`, `opt`, ...; names mapped by arjepa_pl.interop.official; the optimiser state is not read);
- an arjepa_pl JEPA checkpoint (`.ckpt`): its `encoder.` / `target_encoder.` / `predictor.` weights;
- an arjepa_pl export (python -m arjepa_pl export): one encoder, for "encoder" and "target_encoder";
- a transformers V-JEPA 2 model: a directory with its config.json, or `hf:<hub id>` (downloads):
  its one encoder (the official checkpoint's context encoder) for both encoders, and its predictor.

A source without a separate teacher gives its encoder to "target_encoder" (logged). The optimiser,
schedules and step count start fresh: this is a new run that starts from these weights, not a resume.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

from torch import nn

from arjepa_pl.interop.native import FORMAT, load_safetensors, torch_load
from arjepa_pl.interop.official import load_official_encoder, load_official_predictor
from arjepa_pl.interop.weights import InteropError, load_weights
from arjepa_pl.models import JepaPredictor, VisionTransformer

log = logging.getLogger("arjepa_pl.interop")

PARTS = ("encoder", "target_encoder", "predictor")
HF_PREFIX = "hf:"


def _is_huggingface(source: str) -> bool:
    return source.startswith(HF_PREFIX) or (Path(source) / "config.json").is_file()


def _from_huggingface(source: str, modules: dict[str, nn.Module], parts: Sequence[str]) -> dict[str, str]:
    from arjepa_pl.interop.huggingface import ENCODER_RULES, PREDICTOR_RULES, import_state, read_huggingface_state

    state, _ = read_huggingface_state(source[len(HF_PREFIX):] if source.startswith(HF_PREFIX) else source)
    base = "vjepa2." if any(k.startswith("vjepa2.") for k in state) else ""
    loaded = {}
    for part in parts:
        if part == "predictor":
            import_state(modules[part], state, PREDICTOR_RULES, base + "predictor.", source)
        else:
            import_state(modules[part], state, ENCODER_RULES, base + "encoder.", source)
        loaded[part] = "predictor" if part == "predictor" else "encoder"
    return loaded


def _entries(checkpoint: dict, source: str) -> tuple[str, dict[str, dict]]:
    """(kind, {part: state dict under that part's own names}) of a checkpoint file's contents."""
    if checkpoint.get("format") == FORMAT:  # an export: one encoder
        weights = checkpoint["state_dict"]
        return "export", {"encoder": {k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")}}
    if "state_dict" in checkpoint and "pytorch-lightning_version" in checkpoint:
        state = checkpoint["state_dict"]
        found = {part: {k[len(part) + 1:]: v for k, v in state.items() if k.startswith(part + ".")} for part in PARTS}
        return "arjepa_pl", {part: weights for part, weights in found.items() if weights}
    entries = {part: checkpoint[part] for part in PARTS if isinstance(checkpoint.get(part), dict)}
    if not entries:
        raise InteropError(f"{source} is neither a V-JEPA / V-JEPA 2 training checkpoint (no encoder / "
                           "target_encoder / predictor entries), an arjepa_pl checkpoint or export, nor a "
                           f"transformers model; its top-level keys: {', '.join(map(str, list(checkpoint)[:12]))}")
    return "official", entries


def init_jepa(source: str, modules: Mapping[str, Optional[nn.Module]], parts: Sequence[str] = PARTS,
              weights_only: bool = True) -> dict[str, str]:
    """Load `parts` of `source` into `modules` ({"encoder": ..., "target_encoder": ..., "predictor": ...});
    returns {part: the source's entry it came from}."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise InteropError(f"init parts must be a non-empty selection of {PARTS}, got {list(parts)}")
    present = {part: module for part, module in modules.items() if module is not None}
    absent = [p for p in parts if p not in present]
    if absent:
        raise InteropError(f"cannot initialise {absent}: this JEPA has none "
                           "(teacher='stop_grad' keeps no target encoder)")
    if _is_huggingface(source):
        return _from_huggingface(source, present, parts)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"init_from: no checkpoint at {source} "
                                f"(a transformers hub id needs the {HF_PREFIX} prefix)")
    if path.suffix == ".safetensors":
        extractor, _ = load_safetensors(path, "auto")
        kind, entries = "export", {"encoder": {k[len("encoder."):]: v for k, v in extractor.state_dict().items()
                                               if k.startswith("encoder.")}}
    else:
        checkpoint = torch_load(path, weights_only)
        if not isinstance(checkpoint, dict):
            raise InteropError(f"{source} holds a {type(checkpoint).__name__}, not a checkpoint dict")
        kind, entries = _entries(checkpoint, source)
    loaded = {}
    for part in parts:
        # A teacher comes from the source's teacher if it has one, else from its (only) encoder.
        name = part if part in entries else ("encoder" if part == "target_encoder" and "encoder" in entries else None)
        if part == "encoder" and name is None and "target_encoder" in entries:
            name = "target_encoder"
        if name is None:
            raise InteropError(f"{source} ({kind}) holds no {part} (it has: {', '.join(entries) or 'nothing'}); "
                               f"choose init parts among those")
        where = f"{source}[{name!r}]"
        if kind == "official":
            load = load_official_predictor if part == "predictor" else load_official_encoder
            load(present[part], entries[name], where)  # type: ignore[arg-type]
        else:
            load_weights(present[part], entries[name], where, "predictor" if part == "predictor" else "encoder")
        if name != part:
            log.info(f"init_from: {source} has no {part}; it starts from the source's {name}")
        loaded[part] = name
    return loaded


def predictor_from_weights(weights: dict, encoder_dim: int, num_heads: int, positions: str,
                           uniform_power: bool = True) -> JepaPredictor:
    """A JepaPredictor shaped like `weights` (our names); heads are not in any shape, so they are given."""
    blocks = {int(m.group(1)) for k in weights if (m := re.match(r"predictor_blocks\.(\d+)\.", k))}
    width, hidden = weights["predictor_embed.weight"].shape[0], weights["predictor_blocks.0.mlp.fc1.weight"].shape[0]
    return JepaPredictor(encoder_dim, width, len(blocks), num_heads, hidden / width, weights["mask_tokens"].size(0),
                         uniform_power, positions=positions)  # type: ignore[arg-type]


def jepa_from_checkpoint(path: Union[str, Path], which: str = "encoder",
                         weights_only: bool = True) -> tuple[VisionTransformer, JepaPredictor, dict]:
    """(encoder `which`, predictor, the checkpoint's hyper-parameters) of an arjepa_pl JEPA checkpoint file."""
    checkpoint = torch_load(Path(path), weights_only)
    if not isinstance(checkpoint, dict) or "feature_extractor" not in checkpoint:
        raise InteropError(f"{path} is not an arjepa_pl checkpoint with an encoder (no feature_extractor entry)")
    kind, entries = _entries(checkpoint, str(path))
    if kind != "arjepa_pl" or "predictor" not in entries or which not in entries:
        raise InteropError(f"{path} holds no JEPA {which} + predictor (it has: {', '.join(entries)})")
    encoder = VisionTransformer(**checkpoint["feature_extractor"]["spec"]["encoder"])
    load_weights(encoder, entries[which], f"{path}[{which!r}]")
    hparams = checkpoint.get("hyper_parameters") or {}
    predictor = predictor_from_weights(entries["predictor"], encoder.embed_dim,
                                       hparams.get("predictor_num_heads") or encoder.num_heads, encoder.positions,
                                       encoder.config["uniform_power"])
    load_weights(predictor, entries["predictor"], f"{path}['predictor']", "predictor")
    return encoder.eval(), predictor.eval(), hparams
