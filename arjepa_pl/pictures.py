"""Pictures that explain a run: where the JEPA masks fall on the clips, and AR rollouts beside the
truth, each with a title, row and column labels and a legend (`annotate`), so a PNG read on its own
says what it shows. Pure functions from tensors to uint8 arrays; the callbacks and writers save and
log them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch

from arjepa_pl.normalization import IMAGENET_MEAN, IMAGENET_STD, unnormalise
from arjepa_pl.video_io import to_uint8

STRIPE_RGB = np.array([40.0, 110.0, 255.0], dtype=np.float32)
DROPPED_SHADE = 0.25  # tokens in neither list keep this fraction of their brightness
MASK_CAPTION = ("context tokens as the encoder sees them; target tokens grey with blue stripes; dark: dropped, "
                "each clip's lists being cut to the batch's shortest (the last frames lose theirs first)")
# Why tokens can be in neither list: the collator's truncation (arjepa_pl.masks.multiblock3d.masks_to_indices).
DROPPED_MEANING = ("dropped: neither context nor target. Every clip's context and target are cut to the batch's "
                   "shortest, keeping the earliest tokens (as V-JEPA's collator does), so the last frames lose "
                   "theirs first: a frame can go dark but for its target")


def tile(frames: np.ndarray, gap: int = 2) -> np.ndarray:
    """[rows, cols, H, W, 3] -> one [rows*(H+gap)-gap, cols*(W+gap)-gap, 3] picture on white."""
    rows, cols, h, w, c = frames.shape
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, c), 255, dtype=np.uint8)
    for r in range(rows):
        for k in range(cols):
            out[r * (h + gap):r * (h + gap) + h, k * (w + gap):k * (w + gap) + w] = frames[r, k]
    return out


def mask_pictures(
    video: torch.Tensor,
    masks: Sequence[dict],
    tubelet_size: int,
    patch_size: int,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    num_frames: int = 4,
    min_size: int = 128,
    titles: Optional[Sequence[str]] = None,
) -> dict[str, np.ndarray]:
    """One picture per mask configuration, `masks<i>`: a row per clip, `num_frames` frames spread over
    the clip: context tokens as they are, target tokens grey with blue stripes (visible on any colour),
    tokens in neither (dropped to give every clip of the batch the same count) dark. Labelled with
    `titles[i]` (e.g. the step and the mask configuration), the frames shown and a legend with the
    token counts; `titles=None` gives the bare tiles.

    Args:
        video: normalised clips [B, C, T, H, W], or images [B, C, H, W] (one frame, tubelet 1).
        masks: per configuration {"context": [B, Kc], "target": [B, Kt] or [B, blocks, Kt]} flat
            indices into the (T / tubelet_size, H / patch_size, W / patch_size) token grid.
        mean, std: the data's normalisation (default ImageNet's).
        min_size: frames are enlarged (nearest neighbour) to at least this many pixels high.
    """
    if video.ndim == 4:  # images: one frame, one tubelet
        video, tubelet_size = video.unsqueeze(2), 1
    rgb = unnormalise(video, mean or IMAGENET_MEAN, std or IMAGENET_STD)  # [B, T, H, W, 3]
    B, T, H, W, _ = rgb.shape
    grid = (T // tubelet_size, H // patch_size, W // patch_size)
    times = np.unique(np.linspace(0, T - 1, min(num_frames, T)).round().astype(int))
    scale = max(1, math.ceil(min_size / H))
    stripes = (np.arange(H)[:, None] + np.arange(W)[None, :]) % 6 < 2  # [H, W] diagonal hatching
    pictures = {}
    for i, mask in enumerate(masks):
        frames = rgb[:, times].astype(np.float32)  # [B, F, H, W, 3]
        dropped = set()
        for b in range(B):
            labels = np.zeros(math.prod(grid), dtype=np.uint8)  # 0 neither, 1 context, 2 target
            labels[mask["context"][b].cpu().numpy()] = 1
            labels[mask["target"][b].cpu().numpy().ravel()] = 2
            dropped.add(int((labels == 0).sum()))
            labels = labels.reshape(grid)[times // tubelet_size]  # [F, H', W'] tokens of the shown frames
            pixels = labels.repeat(patch_size, axis=1).repeat(patch_size, axis=2)[:, :H, :W]
            f = frames[b]  # a view: edited in place
            target = pixels == 2
            f[target] = 0.7 * f[target].mean(-1, keepdims=True)
            f[target & stripes] = STRIPE_RGB
            f[pixels == 0] *= DROPPED_SHADE
        frames = frames.round().astype(np.uint8).repeat(scale, axis=2).repeat(scale, axis=3)
        picture = tile(frames)
        if titles is not None:
            h, w = H * scale, W * scale
            # The same lengths for every clip: the truncation makes them so (I-JEPA's target blocks may overlap).
            kc, kt = mask["context"].shape[-1], mask["target"][0].numel()
            n = math.prod(grid)
            counts = f"{min(dropped)}" if len(dropped) == 1 else f"{min(dropped)}-{max(dropped)}"
            shown = ", ".join(str(t) for t in times)
            picture = annotate(
                picture,
                title=[titles[i], f"frames {shown} of {T}" + (f" (tokens: tubelets of {tubelet_size} frames, "
                                                               f"{patch_size}x{patch_size}-pixel patches)" if T > 1 else
                                                               f" (tokens: {patch_size}x{patch_size}-pixel patches)")],
                top=[(k * (w + 2) + w // 2, f"frame {t}") for k, t in enumerate(times)] if T > 1 else [],
                left=[(r * (h + 2) + h // 2, f"clip {r}") for r in range(B)],
                legend=[(swatch("context"), f"context: what the encoder sees ({kc} of {n} tokens a clip)"),
                        (swatch("target"), f"target: what the predictor predicts ({kt} tokens a clip)"),
                        (swatch("dropped"), f"{DROPPED_MEANING} ({counts} tokens a clip)")])
        pictures[f"masks{i}"] = picture
    return pictures


def swatch(kind: str, size: int = 14) -> np.ndarray:
    """A legend square drawn as the mask pictures draw `kind`: context (a clip's colours as they are),
    target (grey, blue stripes) or dropped (darkened)."""
    colours = np.array([[230, 150, 40], [60, 160, 90]], np.float32)  # two clip-like colours
    square = colours[(np.arange(size)[:, None] >= size // 2).astype(int)].repeat(size, axis=1)  # [size, size, 3]
    if kind == "target":
        stripes = (np.arange(size)[:, None] + np.arange(size)[None, :]) % 6 < 2
        square = np.repeat(0.7 * square.mean(-1, keepdims=True), 3, axis=-1)
        square[stripes] = STRIPE_RGB
    elif kind == "dropped":
        square = square * DROPPED_SHADE
    return square.round().astype(np.uint8)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()


def _wrap(text: str, font, width: float) -> list[str]:
    """`text` in lines no wider than `width` pixels (words kept whole)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and font.getlength(candidate) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def annotate(picture: np.ndarray, title: Sequence[str] = (), top: Sequence[tuple[int, str]] = (),
             left: Sequence[tuple[int, str]] = (), legend: Sequence[tuple[np.ndarray, str]] = (),
             font_size: int = 12, min_width: int = 480) -> np.ndarray:
    """`picture` [H, W, 3] on a white page with text: `title` lines above it, `top` labels centred on
    x positions just above it, `left` labels (may hold newlines) centred on y positions at its left,
    and `legend` rows (a swatch, then its text) below it. Long lines are wrapped."""
    from PIL import Image, ImageDraw

    font, line = _font(font_size), font_size + 4
    pad = 6
    left_width = int(max((font.getlength(part) for _, text in left for part in text.split("\n")), default=0))
    left_width += 2 * pad if left else pad
    width = max(left_width + picture.shape[1] + pad, min_width)
    title_lines = [wrapped for text in title for wrapped in _wrap(text, font, width - 2 * pad)]
    legend_lines = [_wrap(text, font, width - 3 * pad - sq.shape[1]) for sq, text in legend]
    y0 = pad + line * len(title_lines) + (line if top else 0)
    height = y0 + picture.shape[0] + pad + sum(max(len(ls), 1) * line + 2 for ls in legend_lines) + pad
    page = Image.new("RGB", (width, height), "white")
    page.paste(Image.fromarray(picture), (left_width, y0))
    draw = ImageDraw.Draw(page)
    for k, text in enumerate(title_lines):
        draw.text((pad, pad + k * line), text, fill="black", font=font)
    for x, text in top:
        draw.text((left_width + x, y0 - 2), text, fill="black", font=font, anchor="md")
    for y, text in left:
        draw.multiline_text((pad, y0 + y), text, fill="black", font=font, anchor="lm", spacing=2)
    y = y0 + picture.shape[0] + pad
    for (square, _), lines in zip(legend, legend_lines):
        page.paste(Image.fromarray(square), (pad, y + 2))
        for k, text in enumerate(lines):
            draw.text((2 * pad + square.shape[1], y + k * line), text, fill="black", font=font)
        y += max(len(lines), 1) * line + 2
    return np.asarray(page)


CONTEXT_COLOUR, PREDICTION_COLOUR, GAP_COLOUR = (40, 170, 60), (210, 40, 40), (255, 255, 255)


def rollout_strip(context: torch.Tensor, prediction: torch.Tensor, truth: torch.Tensor, gap: int = 2) -> np.ndarray:
    """One clip's picture: two rows of frames, context | truth above context | prediction, with white
    gaps between the context and future columns and between the rows. Inputs [C, T, H, W] in [0, 1]."""
    ctx, pred, true = to_uint8(context), to_uint8(prediction), to_uint8(truth)
    _, H, W, C = ctx.shape

    def row(future: np.ndarray) -> np.ndarray:
        blank = np.full((H, gap, C), GAP_COLOUR, np.uint8)
        return np.concatenate([*ctx, blank, *future], axis=1)

    top, bottom = row(true), row(pred)
    return np.concatenate([top, np.full((gap, top.shape[1], C), GAP_COLOUR, np.uint8), bottom], axis=0)


def rollout_picture(clips: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], title: str = "",
                    names: Optional[Sequence[str]] = None, gap: int = 2) -> np.ndarray:
    """Rollout strips of several clips (each (context, prediction, truth) as for `rollout_strip`),
    stacked and labelled: rows `truth` / `model` per clip, columns `context` and the horizon of each
    predicted frame (+1 = the frame after the context)."""
    strips = [rollout_strip(*clip, gap=gap) for clip in clips]
    band = np.full((3 * gap, strips[0].shape[1], 3), GAP_COLOUR, np.uint8)
    picture = np.concatenate([part for strip in strips for part in (strip, band)][:-1], axis=0)
    context, truth = clips[0][0], clips[0][2]
    c, h, H, W = context.size(1), truth.size(1), context.size(2), context.size(3)
    top = [(c * W // 2, "context")] + [(c * W + gap + k * W + W // 2, f"+{k + 1}") for k in range(h)]
    names = names or [f"clip {i}" for i in range(len(clips))]
    left = []
    for i, name in enumerate(names):
        y = i * (2 * H + gap + 3 * gap)
        left += [(y + H // 2, f"{name}\ntruth"), (y + H + gap + H // 2, "model")]
    how = (f"the model sees the {c} context frames and predicts the next {h}, one step at a time, each "
           f"conditioned on its own earlier predictions; +k: the k-th frame after the context")
    return annotate(picture, title=[title, how] if title else [how], top=top, left=left, min_width=320)


def rollout_frames(context: torch.Tensor, prediction: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """One clip's video: truth beside the model's view (context, then its prediction), each in a 2-px
    border (green on context frames, red on predicted ones for the model). uint8 [T, H + 4, 2W + 12, C]."""
    true = to_uint8(torch.cat([context, truth], 1))
    model = to_uint8(torch.cat([context, prediction], 1))
    T, H, W, C = true.shape
    out = np.full((T, H + 4, 2 * W + 12, C), GAP_COLOUR, np.uint8)
    for t in range(T):
        out[t, :, W + 8:] = PREDICTION_COLOUR if t >= context.size(1) else CONTEXT_COLOUR
        out[t, 2:H + 2, 2:W + 2] = true[t]
        out[t, 2:H + 2, W + 10:2 * W + 10] = model[t]
    return out
