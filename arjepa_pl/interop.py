"""Encoders in and out of arjepa_pl: official V-JEPA / I-JEPA checkpoints, our checkpoints, exports.

`load_feature_extractor(path)` returns a frozen FeatureExtractor (eval mode, no gradients) from any of:

- an arjepa_pl Lightning checkpoint (`.ckpt`): its `feature_extractor` entry (written by
  PretrainObjective.on_save_checkpoint) gives the architecture and where the weights sit in its
  state dict; a checkpoint without one (ARText: no vision encoder) is an error;
- a sharded checkpoint directory (FSDP2, torch.distributed.checkpoint): the same entry from its
  `meta.pt`, and only the encoder's tensors are read from the shards;
- a file written by `export_feature_extractor` (`.pt` or `.safetensors`);
- an official V-JEPA / I-JEPA checkpoint (a dict with `encoder` / `target_encoder` / `predictor` /
  `opt` / `scaler` / `epoch` ..., see REFERENCE §7), or a bare official encoder state dict.

`which` picks the encoder: "auto" = what the objective's probes read (JEPA: the EMA target encoder; AR
models: their only, block-causal encoder) or, in official checkpoints, `target_encoder` (what the
official probes read); "target_encoder" / "encoder" name one explicitly (in our JEPA checkpoints
"encoder" is the context encoder, same architecture).

Official key mapping (after stripping any number of leading `module.` / `backbone.` prefixes, in any
order — the DDP and multi-mask wrappers they were saved from):

    official                              ours (VisionTransformer)
    patch_embed.proj.{weight,bias}        patch_embed.proj.{weight,bias}   Conv3d (D,C,t,p,p) / Conv2d (D,C,p,p)
    blocks.i.norm1 / norm2                blocks.i.norm1 / norm2           LayerNorm, eps 1e-6
    blocks.i.attn.qkv / attn.proj         blocks.i.attn.qkv / attn.proj    fused q,k,v (3D, D)
    blocks.i.mlp.fc1 / mlp.fc2            blocks.i.mlp.fc1 / mlp.fc2
    norm                                  norm
    pos_embed (1, N, D)                   - dropped: our sin-cos table is computed per input grid; the
                                            stored one is checked first (width D; and its values
                                            against our table for every grid with N tokens)
    predictor, opt, scaler, epoch, ...    - dropped (only one encoder is read)

The architecture is inferred from shapes unless `encoder_config` is given: width and input channels
from patch_embed.proj.weight, video (5-D kernel) or image (4-D), tubelet and patch size from its
kernel, depth from the block indices, qkv_bias from the presence of attn.qkv.bias, mlp_ratio from
fc1; uniform_power from which sin-cos table pos_embed equals; heads are not in any shape: `num_heads`,
or the standard ViT for that width (VIT_PRESETS: 192->3, 384->6, 768->12, 1024->16, 1280->16).

Position tables: V-JEPA's 3-D table is ours (channels t, h, w). I-JEPA's 2-D table (MAE's code) puts
the *column* channels first where ours puts the rows first. Such a checkpoint is converted exactly
by swapping the two halves of every residual-stream channel (patch embedding outputs, every
LayerNorm, the input columns of qkv and fc1, the outputs of attn.proj and fc2): the loaded encoder
then computes the official features with their two channel halves swapped — the same information
in another channel order, which no probe can tell apart (a warning says so). A table that matches
no sin-cos grid (learned positions), or no `pos_embed` at all (V-JEPA 2's RoPE), is an error.

Exported files (`export_feature_extractor`) are plain dicts that torch alone loads, no arjepa_pl needed:

    d = torch.load("enc.pt", weights_only=True)
    d["format"] == "arjepa_pl.feature_extractor"; d["version"] == 1
    d["spec"]         # JSON-able: {"encoder": ViT kwargs, "tokenizer": None | {num_codes, dim},
                      #             "block_causal": bool, "prefix_steps": int}
    d["state_dict"]   # tensors: "encoder.<official ViT name>" (no pos_embed: sin-cos of the
                      #   input's token grid, see arjepa_pl.models.pos_embed) and, for token models,
                      #   "tokenizer.codebook" [num_codes, dim], "tokenizer.fitted"
    d["source"]       # JSON-able: checkpoint path, kind, objective class, global_step, which

The `.safetensors` twin holds the same tensors; its metadata holds "format", "version" and "spec",
"source" as JSON strings (`safetensors.safe_open(path, "pt").metadata()`).
"""

import json
import logging
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch

from arjepa_pl.checkpoints import SHARDED_COMPLETE_MARKER, atomic_save
from arjepa_pl.models import VIT_PRESETS, FeatureExtractor, VisionTransformer, sincos_pos_embed

log = logging.getLogger("arjepa_pl.interop")

FORMAT, VERSION = "arjepa_pl.feature_extractor", 1
WHICH = ("auto", "target_encoder", "encoder")
OFFICIAL_PREFIXES = ("module.", "backbone.")


class InteropError(ValueError):
    """A checkpoint that cannot become a FeatureExtractor; the message says why and what to do."""


# -- state dicts ----------------------------------------------------------------------------------

def strip_prefixes(state_dict: dict, prefixes: tuple[str, ...] = OFFICIAL_PREFIXES) -> dict:
    """Keys without any leading run of `prefixes` (`module.backbone.blocks.0...` -> `blocks.0...`)."""
    out = {}
    for key, value in state_dict.items():
        stripped = key
        while stripped.startswith(prefixes):
            stripped = stripped[len(next(p for p in prefixes if stripped.startswith(p))):]
        if stripped in out:
            raise InteropError(f"keys {key!r} and another one both become {stripped!r} once prefixes are stripped")
        out[stripped] = value
    return out


def check_shapes(expected: dict[str, tuple], got: dict[str, tuple], source: str) -> None:
    """Raise one InteropError naming every missing, unexpected and wrongly shaped key."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = [f"  {k}: expected {tuple(expected[k])}, got {tuple(got[k])}"
             for k in sorted(set(expected) & set(got)) if tuple(expected[k]) != tuple(got[k])]
    if not (missing or unexpected or wrong):
        return
    lines = [f"the weights in {source} do not fit the encoder"]
    if wrong:
        lines += [f"{len(wrong)} key(s) with the wrong shape:"] + wrong
    if missing:
        lines += [f"{len(missing)} missing key(s): {', '.join(missing)}"]
    if unexpected:
        lines += [f"{len(unexpected)} unexpected key(s): {', '.join(unexpected)}"]
    lines.append("(is the architecture right? an official checkpoint's is inferred from its shapes; "
                 "pass num_heads / encoder_config if the inference is wrong)")
    raise InteropError("\n".join(lines))


def load_weights(module: torch.nn.Module, state_dict: dict, source: str) -> None:
    """`module.load_state_dict(state_dict)` after a check that reports every problem at once."""
    check_shapes({k: v.shape for k, v in module.state_dict().items()},
                 {k: tuple(v.shape) for k, v in state_dict.items()}, source)
    module.load_state_dict(state_dict)


def frozen(extractor: FeatureExtractor) -> FeatureExtractor:
    return extractor.eval().requires_grad_(False)


# -- official checkpoints -------------------------------------------------------------------------

def infer_encoder_config(state_dict: dict, num_heads: Optional[int] = None) -> dict:
    """VisionTransformer kwargs from the shapes of an (official-named) encoder state dict."""
    proj = state_dict.get("patch_embed.proj.weight")
    if proj is None:
        raise InteropError("no patch_embed.proj.weight among the encoder's keys: not a ViT encoder state dict "
                           f"(first keys: {', '.join(list(state_dict)[:8])})")
    if proj.ndim not in (4, 5) or proj.shape[-1] != proj.shape[-2]:
        raise InteropError(f"patch_embed.proj.weight has shape {tuple(proj.shape)}: expected (D, C, p, p) "
                           "for images or (D, C, t, p, p) for video")
    width, video = proj.shape[0], proj.ndim == 5
    blocks = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))})
    if blocks != list(range(len(blocks))) or not blocks:
        raise InteropError(f"the encoder's blocks are not numbered 0..depth-1: found {blocks}")
    fc1 = state_dict.get("blocks.0.mlp.fc1.weight")
    if fc1 is None:
        raise InteropError("no blocks.0.mlp.fc1.weight among the encoder's keys")
    if num_heads is None:
        standard = {p["embed_dim"]: p["num_heads"] for p in VIT_PRESETS.values()}
        if width not in standard:
            raise InteropError(f"cannot tell the number of attention heads of a width-{width} ViT (no standard "
                               f"size has that width: {sorted(standard)}): pass num_heads")
        num_heads = standard[width]
    hidden = fc1.shape[0]
    # The MLP is int(width * mlp_ratio) wide: hidden / width can land a hair below hidden when multiplied back.
    mlp_ratio = hidden / width if int(width * (hidden / width)) == hidden else (hidden + 0.5) / width
    return dict(embed_dim=width, depth=len(blocks), num_heads=num_heads, mlp_ratio=mlp_ratio,
                patch_size=proj.shape[-1], tubelet_size=proj.shape[2] if video else 1, in_chans=proj.shape[1],
                video=video, qkv_bias="blocks.0.attn.qkv.bias" in state_dict, uniform_power=True, norm_eps=1e-6)


def _grids(n: int, video: bool) -> list[tuple[int, ...]]:
    """Token grids with n tokens and square frames: (s, s) or (t, s, s)."""
    if not video:
        s = math.isqrt(n)
        return [(s, s)] if s * s == n else []
    return [(n // (s * s), s, s) for s in range(1, math.isqrt(n) + 1) if n % (s * s) == 0]


def halves_swapped(dim: int) -> torch.Tensor:
    """Channel order with the two halves exchanged (its own inverse)."""
    return torch.cat([torch.arange(dim // 2, dim), torch.arange(dim // 2)])


def match_pos_embed(pos_embed: torch.Tensor, config: dict) -> tuple[bool, Optional[torch.Tensor]]:
    """(uniform_power, channel permutation or None) under which our sin-cos table equals the stored one.

    Raises InteropError when its width differs from the encoder's or no grid of its length gives it."""
    width = config["embed_dim"]
    table = pos_embed.detach().float().reshape(-1, pos_embed.shape[-1])
    if pos_embed.ndim not in (2, 3) or table.shape[1] != width:
        raise InteropError(f"pos_embed has shape {tuple(pos_embed.shape)}: expected (1, N, {width}) for this encoder")
    grids = _grids(len(table), config["video"])
    # Stored in half precision, a table is only that close to ours (other grids differ by O(1)).
    atol = 1e-4 if pos_embed.dtype in (torch.float32, torch.float64) else 1e-2
    for grid in grids:
        for uniform_power in (True, False) if config["video"] else (True,):
            ours = sincos_pos_embed(grid, width, uniform_power)
            if torch.allclose(table, ours, atol=atol):
                return uniform_power, None
            if not config["video"] and torch.allclose(table, ours[:, halves_swapped(width)], atol=atol):
                return uniform_power, halves_swapped(width)  # I-JEPA / MAE: columns first
    raise InteropError(
        f"pos_embed {tuple(pos_embed.shape)} is not a sin-cos table this ViT computes for any square-frame grid "
        f"of {len(table)} tokens (tried {grids or 'none'}): the checkpoint uses another position scheme "
        "(learned positions, or non-square frames), which this encoder does not implement")


def permute_residual_channels(state_dict: dict, perm: torch.Tensor) -> dict:
    """The same network with its residual-stream channels reordered by `perm`: every tensor that writes
    the stream is indexed by perm on its output side, every one that reads it on its input side.
    LayerNorm statistics do not depend on channel order, so the result computes the original's
    activations in the new channel order, exactly."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("patch_embed.proj.") or key.startswith("norm.") or re.search(
                r"\.(norm1|norm2)\.|\.(attn\.proj|mlp\.fc2)\.(weight|bias)$", key):
            value = value[perm]
        elif re.search(r"\.(attn\.qkv|mlp\.fc1)\.weight$", key):
            value = value[:, perm]
        out[key] = value
    return out


def encoder_from_official(state_dict: dict, source: str, num_heads: Optional[int] = None,
                          encoder_config: Optional[dict] = None) -> VisionTransformer:
    """A VisionTransformer holding an official encoder's weights (keys with or without prefixes)."""
    weights = strip_prefixes(state_dict)
    pos_embed = weights.pop("pos_embed", None)
    if pos_embed is None:
        raise InteropError(f"{source} stores no pos_embed: the encoder uses another position scheme "
                           "(e.g. V-JEPA 2's rotary embeddings), which this ViT does not implement")
    if encoder_config is None:
        config = infer_encoder_config(weights, num_heads)
    else:  # given: only checked against the table
        config = dict(encoder_config)
        config.setdefault("embed_dim", VIT_PRESETS.get(config.get("preset"), {}).get("embed_dim"))
        config.setdefault("video", True)
        config.setdefault("uniform_power", True)
    uniform_power, perm = match_pos_embed(pos_embed, config)
    if encoder_config is None:
        config["uniform_power"] = uniform_power
    elif config["video"] and uniform_power != config["uniform_power"]:
        raise InteropError(f"encoder_config has uniform_power={config['uniform_power']} but {source}'s "
                           f"pos_embed is the uniform_power={uniform_power} table")
    encoder = VisionTransformer(**config)
    if perm is not None:
        log.warning(f"{source}: its 2-D position table lists column channels first (I-JEPA / MAE); the encoder's "
                    "residual channels are reordered to our table, so its features are the official ones with "
                    "their two channel halves swapped (same information, other order)")
        weights = permute_residual_channels(weights, perm)
    load_weights(encoder, weights, source)
    return encoder


def _official_encoder_entry(checkpoint: dict, which: str, source: str) -> tuple[str, dict]:
    """(name, state dict) of the encoder `which` picks in an official checkpoint dict."""
    present = [k for k in ("target_encoder", "encoder") if isinstance(checkpoint.get(k), dict)]
    name = present[0] if which == "auto" and present else which
    if name not in present:
        raise InteropError(f"{source} has no {name!r} entry (it has: {', '.join(map(str, checkpoint))})")
    return name, checkpoint[name]


# -- reading files --------------------------------------------------------------------------------

def _torch_load(path: Path, weights_only: bool) -> Any:
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
        raise InteropError(f"{source}: its feature-extractor spec does not build a model ({type(e).__name__}: {e})") from e


def _from_spec(spec: dict, state_dict: dict, source: str) -> FeatureExtractor:
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


def _load_lightning(checkpoint: dict, which: str, source: str) -> tuple[FeatureExtractor, dict]:
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


def _load_sharded(path: Path, which: str) -> tuple[FeatureExtractor, dict]:
    """A torch.distributed.checkpoint directory as Lightning's ModelParallelStrategy / our FSDP2Strategy
    write it: `meta.pt` (everything but tensors) and the shards of {"state_dict", "optimizer_0", ...};
    only the encoder's tensors are read, into full (unsharded) tensors, in this one process."""
    import torch.distributed.checkpoint as dcp

    source = str(path)
    meta = path / SHARDED_COMPLETE_MARKER
    if not meta.is_file():
        raise InteropError(f"{path} is a directory but not a complete sharded checkpoint (no {SHARDED_COMPLETE_MARKER})")
    checkpoint = _torch_load(meta, weights_only=True)
    entry = _lightning_entry(checkpoint, source)
    stored = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    state_keys = [k[len("state_dict."):] for k in stored if k.startswith("state_dict.")]
    prefixes = _prefixes(entry, which, state_keys, source)
    extractor = _build(entry["spec"], source)
    keys = _part_keys(extractor.state_dict(), prefixes)
    got = {ours: tuple(stored["state_dict." + theirs].size) for ours, theirs in keys.items()
           if "state_dict." + theirs in stored and hasattr(stored["state_dict." + theirs], "size")}
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


def _check_export_which(source_info: dict, which: str, source: str) -> None:
    if which != "auto" and source_info.get("which") not in (which, None):
        raise InteropError(f"{source} holds only the {source_info['which']!r} encoder (exported with it); "
                           f"which={which!r} cannot be read from it: use which='auto'")


def _load_safetensors(path: Path, which: str) -> tuple[FeatureExtractor, dict]:
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
        raise InteropError(f"{path} is not an arjepa_pl feature-extractor export (metadata format={meta.get('format')!r})")
    info = json.loads(meta.get("source", "{}"))
    _check_export_which(info, which, str(path))
    return _from_spec(json.loads(meta["spec"]), state, str(path)), {**info, "kind": "export"}


def _is_tensor_dict(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def read_feature_extractor(path: Union[str, os.PathLike], which: str = "auto", num_heads: Optional[int] = None,
          weights_only: bool = True, encoder_config: Optional[dict] = None) -> tuple[FeatureExtractor, dict]:
    """(frozen extractor, where it came from: a JSON-able dict with checkpoint, kind, objective,
    global_step, which) — see load_feature_extractor for the arguments."""
    if which not in WHICH:
        raise InteropError(f"which must be one of {WHICH}, got {which!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    source = str(path)
    if path.is_dir():
        extractor, info = _load_sharded(path, which)
    elif path.suffix == ".safetensors":
        extractor, info = _load_safetensors(path, which)
    else:
        checkpoint = _torch_load(path, weights_only)
        if not isinstance(checkpoint, dict):
            raise InteropError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
        if checkpoint.get("format") == FORMAT:
            if checkpoint.get("version") != VERSION:
                raise InteropError(f"{path} is export format version {checkpoint.get('version')}; this arjepa_pl reads {VERSION}")
            info = dict(checkpoint.get("source") or {})
            _check_export_which(info, which, source)
            extractor, info = _from_spec(checkpoint["spec"], checkpoint["state_dict"], source), {**info, "kind": "export"}
        elif "state_dict" in checkpoint and ("pytorch-lightning_version" in checkpoint or "feature_extractor" in checkpoint):
            extractor, info = _load_lightning(checkpoint, which, source)
        elif any(isinstance(checkpoint.get(k), dict) for k in ("target_encoder", "encoder")):
            name, weights = _official_encoder_entry(checkpoint, which, source)
            encoder = encoder_from_official(weights, f"{source}[{name!r}]", num_heads, encoder_config)
            extractor = FeatureExtractor(encoder)
            info = {"kind": "official", "objective": None, "global_step": None, "which": name,
                    "epoch": checkpoint.get("epoch") if isinstance(checkpoint.get("epoch"), int) else None}
        elif _is_tensor_dict(checkpoint) and "patch_embed.proj.weight" in strip_prefixes(checkpoint):
            if which != "auto":
                raise InteropError(f"{path} is a single encoder's state dict: which={which!r} cannot choose; use 'auto'")
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


# -- export ---------------------------------------------------------------------------------------

def _write_safetensors(path: Path, state_dict: dict, spec: dict, source: dict) -> None:
    from safetensors.torch import save

    metadata = {"format": FORMAT, "version": str(VERSION), "spec": json.dumps(spec), "source": json.dumps(source)}
    atomic_save(save(state_dict, metadata), path, write=lambda data, f: f.write(data))


def _safetensors_wanted(safetensors: Union[bool, str]) -> bool:
    """"auto" -> whether the package is installed; True without it is an error."""
    if safetensors not in (True, False, "auto"):
        raise InteropError(f"safetensors must be True, False or 'auto', got {safetensors!r}")
    if safetensors is False:
        return False
    try:
        import safetensors as _  # noqa: F401
    except ImportError as e:
        if safetensors == "auto":
            return False
        raise InteropError("safetensors output was asked for but the package is not installed: "
                           "`pip install safetensors`") from e
    return True


def _check_out(out: Path) -> None:
    if out.suffix == ".safetensors":
        raise InteropError(f"--out {out}: give the torch file's name (e.g. {out.with_suffix('.pt')}); "
                           "the .safetensors file is written beside it")


def save_feature_extractor(extractor: FeatureExtractor, out: Union[str, os.PathLike], source: Optional[dict] = None,
                           safetensors: Union[bool, str] = "auto") -> list[Path]:
    """Write `extractor` to `out` (the torch dict of the module docstring) and, with safetensors True
    (or "auto" and the package installed), to `out` with suffix `.safetensors`; both atomically.
    `source`: JSON-able provenance stored with it. Returns the paths written."""
    out = Path(out)
    _check_out(out)
    with_safetensors = _safetensors_wanted(safetensors)
    spec, source = extractor.spec(), dict(source or {})
    # Clones: no tensor shares storage with another (safetensors refuses that) or with a memory map.
    state_dict = {k: v.detach().cpu().contiguous().clone() for k, v in extractor.state_dict().items()}
    atomic_save({"format": FORMAT, "version": VERSION, "spec": spec, "state_dict": state_dict, "source": source}, out)
    written = [out]
    if with_safetensors:
        _write_safetensors(out.with_suffix(".safetensors"), state_dict, spec, source)
        written.append(out.with_suffix(".safetensors"))
    return written


def export_feature_extractor(ckpt_path: Union[str, os.PathLike], out: Union[str, os.PathLike], which: str = "auto",
                             safetensors: Union[bool, str] = "auto", num_heads: Optional[int] = None,
                             weights_only: bool = True, encoder_config: Optional[dict] = None) -> list[Path]:
    """The feature extractor of `ckpt_path` (any kind load_feature_extractor reads, with the same
    arguments) written by save_feature_extractor, with its provenance. Returns the paths written."""
    _check_out(Path(out))
    _safetensors_wanted(safetensors)  # fail before a long load, not after
    extractor, source = read_feature_extractor(ckpt_path, which, num_heads, weights_only, encoder_config)
    source["checkpoint"] = str(Path(ckpt_path).resolve())
    return save_feature_extractor(extractor, out, source, safetensors)
