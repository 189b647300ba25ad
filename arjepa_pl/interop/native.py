"""Our own files as a FeatureExtractor: Lightning checkpoints (their `feature_extractor` entry, written by
ScheduledModule.on_save_checkpoint, gives the architecture and where the weights sit), sharded
checkpoint directories (only the encoder's tensors are read from the shards), and exports (the format
is described in arjepa_pl.interop.export)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from arjepa_pl.checkpoints import SHARDED_COMPLETE_MARKER
from arjepa_pl.interop.weights import InteropError, check_shapes, load_weights
from arjepa_pl.models import FeatureExtractor

FORMAT, VERSION = "arjepa_pl.feature_extractor", 1


def torch_load(path: Path, weights_only: bool) -> Any:
    """torch.load on the CPU, memory-mapped where the file format allows (an official checkpoint's
    optimizer state is then never read), with a clear message when weights_only refuses it."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=weights_only)  # legacy (non-zip) format
    except FileNotFoundError:
        raise
    except Exception as e:
        hint = ("\nIt holds pickled Python objects (official checkpoints may hold numpy scalars): if you trust "
                "the file, load it with weights_only=False (`--weights_only false`).") if weights_only else ""
        raise InteropError(f"could not read {path}: {type(e).__name__}: {str(e).splitlines()[0]}{hint}") from e


def _build(spec: dict, source: str) -> FeatureExtractor:
    try:
        return FeatureExtractor.from_spec(spec)
    except (KeyError, TypeError, ValueError) as e:
        raise InteropError(f"{source}: its feature-extractor spec does not build a model "
                           f"({type(e).__name__}: {e})") from e


def from_spec(spec: dict, state_dict: dict, source: str) -> FeatureExtractor:
    extractor = _build(spec, source)
    load_weights(extractor, state_dict, source)
    return extractor


def _prefixes(entry: dict, which: str, state_keys, source: str) -> dict:
    """Where the extractor's parts sit in the checkpoint's state dict; `which` overrides the encoder's."""
    prefixes = dict(entry["prefixes"])
    if which != "auto":
        prefixes["encoder"] = which + "."
    if not any(k.startswith(prefixes["encoder"]) for k in state_keys):
        tops = sorted({k.split(".", 1)[0] + "." for k in state_keys})
        raise InteropError(f"{source} has no weights under {prefixes['encoder']!r} (which={which!r}); "
                           f"its state dict holds {', '.join(tops)}")
    return prefixes


def _part_keys(extractor_keys, prefixes: dict) -> dict[str, str]:
    """Extractor state-dict key -> checkpoint state-dict key."""
    out = {}
    for key in extractor_keys:
        part, rest = key.split(".", 1)
        out[key] = prefixes[part] + rest
    return out


def _lightning_entry(checkpoint: dict, source: str) -> dict:
    entry = checkpoint.get("feature_extractor")
    if entry is None:
        raise InteropError(
            f"{source} holds no feature extractor: it was written by an objective without a vision encoder "
            "(e.g. ARText), or by a version of arjepa_pl older than the feature-extractor entry")
    return entry


def _objective_name(checkpoint: dict) -> Optional[str]:
    entry = checkpoint.get("feature_extractor") or {}
    return entry.get("objective") or (checkpoint.get("hyper_parameters") or {}).get("_class_path")


def load_lightning(checkpoint: dict, which: str, source: str) -> tuple[FeatureExtractor, dict]:
    entry = _lightning_entry(checkpoint, source)
    state = checkpoint["state_dict"]
    prefixes = _prefixes(entry, which, state, source)
    extractor = _build(entry["spec"], source)
    keys = _part_keys(extractor.state_dict(), prefixes)
    picked = {k: v for k, v in state.items() if k.startswith(tuple(prefixes.values()))}
    renamed = {ours: picked.pop(theirs) for ours, theirs in keys.items() if theirs in picked}
    renamed.update(picked)  # left over under the prefixes: reported as unexpected, by their checkpoint names
    load_weights(extractor, renamed, source)
    return extractor, {"kind": "lightning", "objective": _objective_name(checkpoint),
                       "global_step": checkpoint.get("global_step"), "which": prefixes["encoder"].rstrip(".")}


def load_sharded(path: Path, which: str) -> tuple[FeatureExtractor, dict]:
    """A torch.distributed.checkpoint directory as Lightning's ModelParallelStrategy / our FSDP2Strategy
    write it: `meta.pt` (everything but tensors) and the shards of {"state_dict", "optimizer_0", ...};
    only the encoder's tensors are read, into full (unsharded) tensors, in this one process."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    source = str(path)
    meta = path / SHARDED_COMPLETE_MARKER
    if not meta.is_file():
        raise InteropError(f"{path} is a directory but not a complete sharded checkpoint "
                           f"(no {SHARDED_COMPLETE_MARKER})")
    checkpoint = torch_load(meta, weights_only=True)
    entry = _lightning_entry(checkpoint, source)
    stored = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    state_keys = [k[len("state_dict."):] for k in stored if k.startswith("state_dict.")]
    prefixes = _prefixes(entry, which, state_keys, source)
    extractor = _build(entry["spec"], source)
    keys = _part_keys(extractor.state_dict(), prefixes)
    tensors = {k: m for k, m in stored.items() if isinstance(m, TensorStorageMetadata)}
    got = {ours: tuple(tensors["state_dict." + theirs].size) for ours, theirs in keys.items()
           if "state_dict." + theirs in tensors}
    check_shapes({k: v.shape for k, v in extractor.state_dict().items()}, got, source)
    buffers = {theirs: torch.empty_like(extractor.state_dict()[ours]) for ours, theirs in keys.items()}
    try:
        with warnings.catch_warnings():  # "assuming ... a single process": yes, that is the point
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load({"state_dict": buffers}, checkpoint_id=str(path), no_dist=True)
    except Exception as e:
        raise InteropError(f"could not read the encoder's shards from {path}: {type(e).__name__}: {e}\n"
                           "Alternatively convert the directory to one file first: python -m "
                           "torch.distributed.checkpoint.format_utils dcp_to_torch DIR FILE.pt") from e
    extractor.load_state_dict({ours: buffers[theirs] for ours, theirs in keys.items()})
    return extractor, {"kind": "sharded", "objective": _objective_name(checkpoint),
                       "global_step": checkpoint.get("global_step"), "which": prefixes["encoder"].rstrip(".")}


def check_export_which(source_info: dict, which: str, source: str) -> None:
    if which != "auto" and source_info.get("which") not in (which, None):
        raise InteropError(f"{source} holds only the {source_info['which']!r} encoder (exported with it); "
                           f"which={which!r} cannot be read from it: use which='auto'")


def load_safetensors(path: Path, which: str) -> tuple[FeatureExtractor, dict]:
    try:
        from safetensors import safe_open
        from safetensors.torch import load_file
    except ImportError as e:
        raise InteropError(f"{path} is a safetensors file: `pip install safetensors` to read it") from e
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except Exception as e:
        raise InteropError(f"could not read {path}: {type(e).__name__}: {e}") from e
    if meta.get("format") != FORMAT:
        raise InteropError(f"{path} is not an arjepa_pl feature-extractor export "
                           f"(metadata format={meta.get('format')!r})")
    info = json.loads(meta.get("source", "{}"))
    check_export_which(info, which, str(path))
    return from_spec(json.loads(meta["spec"]), state, str(path)), {**info, "kind": "export"}
