"""Official V-JEPA / I-JEPA encoders (facebookresearch/jepa, facebookresearch/ijepa) as our VisionTransformer.

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
no sin-cos grid (learned positions) is an error.

V-JEPA 2 (facebookresearch/vjepa2) keeps these names but uses rotary positions: its encoders load with
`encoder_config={"positions": "rope_vjepa2"}` (`export --positions rope_vjepa2`), which drops any stored
table: nothing in a file tells a rotary model's leftover table from a sin-cos model's, so it is never
guessed (a file without `pos_embed` and without that setting is an error saying so).

Predictors (`load_official_predictor`, for continuing pretraining): the same prefixes; `predictor_embed`,
`predictor_blocks.i.*`, `predictor_norm`, `predictor_proj` keep their names; the official mask tokens
`mask_tokens.0`, `mask_tokens.1`, ... ([1, 1, D] each) are stacked into our `mask_tokens` [n, 1, 1, D];
`predictor_pos_embed` is checked against our table (sin-cos) or dropped (rotary).
"""

from __future__ import annotations

import logging
import math
import re
from typing import Optional

import torch

from arjepa_pl.interop.weights import InteropError, load_weights, strip_prefixes
from arjepa_pl.models import VIT_PRESETS, JepaPredictor, VisionTransformer, sincos_pos_embed

log = logging.getLogger("arjepa_pl.interop")


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
        num_heads = int(standard[width])
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
    positions = (encoder_config or {}).get("positions", "sincos")
    if positions == "sincos" and pos_embed is None:
        raise InteropError(f"{source} stores no pos_embed: the encoder uses another position scheme, e.g. "
                           "V-JEPA 2's rotary embeddings: load it with positions 'rope_vjepa2' "
                           "(export --positions rope_vjepa2, or encoder_config={'positions': 'rope_vjepa2'})")
    if positions != "sincos":  # V-JEPA 2: rotary positions, nothing to check a table against
        config = {**infer_encoder_config(weights, num_heads), **(encoder_config or {}), "positions": positions}
        if pos_embed is not None:
            log.info(f"{source}: dropped its pos_embed table: the encoder has rotary positions ({positions})")
        encoder = VisionTransformer(**config)
        load_weights(encoder, weights, source)
        return encoder
    if encoder_config is None:
        config = infer_encoder_config(weights, num_heads)
    else:  # given: only checked against the table
        config = dict(encoder_config)
        preset = config.get("preset")
        config.setdefault("embed_dim", VIT_PRESETS.get(preset, {}).get("embed_dim") if preset is not None else None)
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


def official_encoder_entry(checkpoint: dict, which: str, source: str) -> tuple[str, dict]:
    """(name, state dict) of the encoder `which` picks in an official checkpoint dict."""
    present = [k for k in ("target_encoder", "encoder") if isinstance(checkpoint.get(k), dict)]
    name = present[0] if which == "auto" and present else which
    if name not in present:
        raise InteropError(f"{source} has no {name!r} entry (it has: {', '.join(map(str, checkpoint))})")
    return name, checkpoint[name]


def _table_checked(table: torch.Tensor, width: int, uniform_power: bool, source: str, name: str) -> None:
    """A stored sin-cos table must be the one our model computes (same layout, same uniform_power)."""
    found, perm = match_pos_embed(table, {"embed_dim": width, "video": True})
    if perm is not None or found != uniform_power:
        raise InteropError(f"{source}: its {name} is the uniform_power={found} table; the model computes "
                           f"uniform_power={uniform_power}")


def load_official_encoder(encoder: VisionTransformer, state_dict: dict, source: str) -> None:
    """An official encoder state dict (V-JEPA / V-JEPA 2 names, any prefixes) into an existing encoder,
    every tensor checked. A stored pos_embed must equal a sin-cos encoder's table; a rotary encoder
    ignores it (V-JEPA 2 checkpoints may carry one)."""
    weights = strip_prefixes(state_dict)
    table = weights.pop("pos_embed", None)
    if table is not None and encoder.positions == "sincos":
        if not encoder.video:
            raise InteropError(f"{source}: continuing from an image (I-JEPA) checkpoint is not supported, "
                               "only video encoders (V-JEPA, V-JEPA 2)")
        _table_checked(table, encoder.embed_dim, encoder.config["uniform_power"], source, "pos_embed")
    elif table is None and encoder.positions == "sincos":
        raise InteropError(f"{source} stores no pos_embed: it is a rotary (V-JEPA 2) encoder; configure the "
                           "encoder with positions: rope_vjepa2")
    load_weights(encoder, weights, source)


def load_official_predictor(predictor: JepaPredictor, state_dict: dict, source: str) -> None:
    """An official predictor state dict into an existing JepaPredictor (see the module docstring)."""
    weights = strip_prefixes(state_dict)
    table = weights.pop("predictor_pos_embed", None)
    if predictor.pos_embed is not None:
        if table is None:
            raise InteropError(f"{source}: the predictor stores no predictor_pos_embed (a rotary, V-JEPA 2 "
                               "predictor); configure the encoder with positions: rope_vjepa2")
        _table_checked(table, predictor.pos_embed.dim, predictor.pos_embed.uniform_power, source,
                       "predictor_pos_embed")
    tokens = {int(m.group(1)): weights.pop(k) for k in list(weights) if (m := re.fullmatch(r"mask_tokens\.(\d+)", k))}
    if tokens:
        if sorted(tokens) != list(range(len(tokens))):
            raise InteropError(f"{source}: mask tokens numbered {sorted(tokens)}, expected 0..{len(tokens) - 1}")
        weights["mask_tokens"] = torch.stack([tokens[i].reshape(1, 1, -1) for i in range(len(tokens))])
    load_weights(predictor, weights, source, "predictor")
