"""Moving shapes: a procedural video benchmark with independent, labelled factors and nuisance knobs.

Every clip shows one object — a shape of a colour, 2-3 patches of 8 px wide at 64 px — moving in a
straight line across a background. Five factors, each drawn independently of the others, are labelled
for probes:

    shape      circle, square, triangle, plus            appearance
    colour     red, green, blue, yellow                  appearance
    direction  right, left, down, up                     motion
    speed      slow, fast (0.2 or 0.4 of the frame per clip)   motion
    location   quadrant of the path's midpoint           position (top-left, top-right, bottom-left, bottom-right)

Everything else is drawn per clip from its own seed and is not a label: the object's exact size, its
colour's small jitter, where in its quadrant the path lies, and the nuisance:

    none       a plain grey background, the same in every clip
    texture    a static random texture per clip (predictable: it never changes)
    dynamic    unpredictable detail: fresh pixel noise and a brightness flicker in every frame, and small
               distractor squares on random walks

`strength` (0-1) scales the nuisance (texture contrast; noise, flicker and the number of distractors).

The label packs the factors in mixed radix, label = (((shape * 4 + colour) * 4 + direction) * 2 + speed)
* 4 + location, so a probe reads factor k as (label // divisor_k) % num_classes_k (FACTOR_TASKS), the
rule of arjepa_pl.evaluation.ProbeTask.

Which factor values a clip gets is a design, not a draw (`clip_factors`): in every run of 4 consecutive
indices each factor takes each value equally often, and every 512 indices hold each of the 512
combinations once, so in a split of a multiple of 512 clips the factors are exactly balanced and
exactly independent (no factor predicts another: a probe cannot read shape through colour). Splits
differ by the seed words of their clips, so no clip (nor its nuisance) is shared between splits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FACTORS = {
    "shape": ("circle", "square", "triangle", "plus"),
    "colour": ("red", "green", "blue", "yellow"),
    "direction": ("right", "left", "down", "up"),
    "speed": ("slow", "fast"),
    "location": ("top_left", "top_right", "bottom_left", "bottom_right"),
}
FACTOR_NAMES = tuple(FACTORS)
RADICES = tuple(len(values) for values in FACTORS.values())
NUM_COMBINATIONS = int(np.prod(RADICES))  # 512: the design repeats every this many clips
NUISANCES = ("none", "texture", "dynamic")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}

# Divisor of each factor in the mixed-radix label: the product of the radices after it.
DIVISORS = {name: int(np.prod(RADICES[i + 1:])) for i, name in enumerate(FACTOR_NAMES)}
# Probe tasks reading each factor from the label (the fields of arjepa_pl.evaluation.ProbeTask).
FACTOR_TASKS = tuple({"name": name, "num_classes": len(values), "divisor": DIVISORS[name], "modulo": len(values)}
                     for name, values in FACTORS.items())

RGB = {"red": (0.9, 0.15, 0.15), "green": (0.15, 0.8, 0.2), "blue": (0.2, 0.35, 0.95), "yellow": (0.95, 0.85, 0.1)}
DIRECTION_VECTORS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}  # (dx, dy), y down
# Distance the centre moves over the clip, as a fraction of the side. At 0.12 / 0.3 a slow object moved
# about one 8-px patch in a 64-px clip and no encoder we trained (V-JEPA, nor a random one) let a probe
# read direction; at 0.2 / 0.4 (1.6-3.2 patches) motion is visible at the scale of the tokens.
TRAVEL = {"slow": 0.2, "fast": 0.4}
BACKGROUND = 0.5  # grey level of the plain background
RADIUS = (0.12, 0.15)  # object size: its 'radius' as a fraction of the side (2-3 patches of 8 px wide at 64 px)
REACH = 5 / 3  # how far any shape extends from its centre, in radii (the triangle's apex)
CENTRE_GAP = 0.03  # a path's midpoint keeps this fraction of the side away from the quadrant borders
# The smallest frame whose quadrants leave room for the largest object's fastest path (at 16 px they do not).
MIN_SIZE = 32
COLOUR_JITTER = 0.05  # per-channel jitter of an object's colour: no exact value identifies a colour class


@dataclass(frozen=True)
class Nuisance:
    """What the clip shows besides the object. kind: none, texture or dynamic; strength in [0, 1]."""

    kind: str = "none"
    strength: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in NUISANCES:
            raise ValueError(f"nuisance must be one of {NUISANCES}, got {self.kind!r}")
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"nuisance_strength must lie in [0, 1], got {self.strength!r}")


def clip_factors(index: int) -> dict[str, int]:
    """Factor values of clip `index` of a split (a Latin-square design, see the module docstring).

    The index's mixed-radix digits d (d_0 fastest) give factor 0 = d_0 and factor k = (d_0 + d_k) mod
    radix_k: a bijection on every block of 512 indices, in which each factor cycles through its values
    every 4 indices.
    """
    if index < 0:
        raise ValueError(f"clip index must be >= 0, got {index}")
    digits, rest = [], index % NUM_COMBINATIONS
    for radix in RADICES:
        digits.append(rest % radix)
        rest //= radix
    values = [digits[0]] + [(digits[0] + d) % radix for d, radix in zip(digits[1:], RADICES[1:])]
    return dict(zip(FACTOR_NAMES, values))


def factors_to_label(factors: dict[str, int]) -> int:
    label = 0
    for name, radix in zip(FACTOR_NAMES, RADICES):
        value = int(factors[name])
        if not 0 <= value < radix:
            raise ValueError(f"factor {name} must lie in [0, {radix}), got {value}")
        label = label * radix + value
    return label


def label_to_factors(label: int) -> dict[str, int]:
    return {name: (int(label) // DIVISORS[name]) % radix for name, radix in zip(FACTOR_NAMES, RADICES)}


def shape_mask(shape: str, xs: np.ndarray, ys: np.ndarray, cx: np.ndarray, cy: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of `shape` of 'radius' r centred at (cx, cy); cx, cy broadcast against xs, ys.

    The shapes have about the same area (that of the circle), so size does not tell them apart, and
    (cx, cy) is each one's centroid, so the centre of its pixels is where the path puts it.
    """
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        half = 0.886 * r
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "triangle":  # upright isosceles of height and base 2a; its centroid is a/3 below mid-height
        a = 1.25 * r
        dy = dy + a / 3
        return (dy >= -a) & (dy <= a) & (np.abs(dx) <= (dy + a) / 2)
    if shape == "plus":  # two bars of length 2.4r and width 0.75r
        long, half_width = 1.2 * r, 0.375 * r
        bar_x = (np.abs(dx) <= long) & (np.abs(dy) <= half_width)
        bar_y = (np.abs(dy) <= long) & (np.abs(dx) <= half_width)
        return bar_x | bar_y
    raise ValueError(f"unknown shape {shape!r}")


def _midpoint(rng: np.random.Generator, upper: bool, lo: float, hi: float, size: int) -> float:
    """A coordinate in [lo, hi] on the chosen side of the frame's centre line, CENTRE_GAP away from it."""
    gap = CENTRE_GAP * size
    a, b = (size / 2 + gap, hi) if upper else (lo, size / 2 - gap)
    if a > b:
        raise ValueError(f"a frame of {size} px leaves no room for the object's path in its quadrant")
    return float(rng.uniform(a, b))


def _texture(rng: np.random.Generator, size: int, strength: float) -> np.ndarray:
    """A static random texture [S, S, 3]: three sine gratings of random orientation, frequency and phase,
    tinted, around the plain grey."""
    ys, xs = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
    pattern = np.zeros((size, size), np.float32)
    for _ in range(3):
        angle, cycles, phase = rng.uniform(0, np.pi), rng.uniform(2, 7), rng.uniform(0, 2 * np.pi)
        pattern += np.sin(2 * np.pi * cycles * (xs * np.cos(angle) + ys * np.sin(angle)) + phase)
    tint = rng.uniform(0.3, 1.0, size=3).astype(np.float32)
    return BACKGROUND + 0.35 * strength * (pattern / 3)[..., None] * tint


def render_clip(factors: dict[str, int], rng: np.random.Generator, num_frames: int, size: int,
                nuisance: Nuisance | None = None) -> np.ndarray:
    """float32 frames [T, S, S, 3] in [0, 1] of one clip with these factor values.

    All randomness (size, jitter, path, nuisance) comes from `rng`, in a fixed order.
    """
    nuisance = nuisance or Nuisance()
    if num_frames < 2:
        raise ValueError(f"a clip needs >= 2 frames to show motion, got {num_frames}")
    if size < MIN_SIZE:
        raise ValueError(f"frame size must be >= {MIN_SIZE} px, got {size}")
    shape = FACTORS["shape"][factors["shape"]]
    colour = np.asarray(RGB[FACTORS["colour"][factors["colour"]]], np.float32)
    dx, dy = DIRECTION_VECTORS[FACTORS["direction"][factors["direction"]]]
    travel = TRAVEL[FACTORS["speed"][factors["speed"]]] * size
    right, bottom = factors["location"] % 2 == 1, factors["location"] >= 2

    r = float(rng.uniform(*RADIUS)) * size
    colour = np.clip(colour + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, 3), 0, 1).astype(np.float32)
    reach = REACH * r + 0.5  # the largest extent of any shape from its centre, plus half a pixel
    # The midpoint of the path, in its quadrant, such that the whole path stays inside the frame.
    half_x, half_y = abs(dx) * travel / 2, abs(dy) * travel / 2
    mx = _midpoint(rng, right, reach + half_x, size - reach - half_x, size)
    my = _midpoint(rng, bottom, reach + half_y, size - reach - half_y, size)
    offsets = (np.arange(num_frames, dtype=np.float32) / (num_frames - 1) - 0.5) * travel  # [T], centred
    cx, cy = mx + dx * offsets, my + dy * offsets

    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    frames = np.empty((num_frames, size, size, 3), np.float32)
    if nuisance.kind == "texture":
        frames[:] = _texture(rng, size, nuisance.strength)
    else:
        frames[:] = BACKGROUND
    if nuisance.kind == "dynamic" and nuisance.strength > 0:
        _draw_distractors(frames, rng, xs, ys, count=int(np.ceil(3 * nuisance.strength)))
    inside = shape_mask(shape, xs, ys, cx[:, None, None], cy[:, None, None], r)  # [T, S, S]
    frames[inside] = colour
    if nuisance.kind == "dynamic" and nuisance.strength > 0:
        s = nuisance.strength
        frames += rng.uniform(-0.2 * s, 0.2 * s, size=(num_frames, 1, 1, 1)).astype(np.float32)  # flicker
        frames += rng.normal(0.0, 0.2 * s, size=frames.shape).astype(np.float32)  # fresh noise every frame
    return np.clip(frames, 0.0, 1.0, out=frames)


def _draw_distractors(frames: np.ndarray, rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray,
                      count: int) -> None:
    """Small squares of random colours on random walks (reflected at the borders): motion that no past
    frame predicts. Drawn under the object, so the object stays whole."""
    T, size = frames.shape[0], frames.shape[1]
    half = 0.04 * size
    for _ in range(count):
        steps = rng.normal(0.0, 0.06 * size, size=(T, 2))
        path = rng.uniform(half, size - half, size=2) + np.cumsum(steps, axis=0)
        span = size - 2 * half  # reflect into [half, size - half]
        path = half + span - np.abs(np.mod(path - half, 2 * span) - span)
        colour = rng.uniform(0, 1, size=3).astype(np.float32)
        inside = ((np.abs(xs - path[:, 0, None, None]) <= half) & (np.abs(ys - path[:, 1, None, None]) <= half))
        frames[inside] = colour
