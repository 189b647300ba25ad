"""A tiny synthetic video data set that ships inside the framework.

Every clip shows one coloured shape (circle, square, triangle) moving in one
direction (right, left, down, up) over a plain or noisy background. The label is
shape_index * 4 + direction_index, so a probe can test appearance (shape) and
motion (direction) separately. The set lets every config run end to end with no
download, and is small enough to generate in a few seconds on a laptop CPU.

Layout of the cache directory (`root`):

    root/
      train.csv, val.csv     V-JEPA manifests: "ABSOLUTE_PATH LABEL" per line
      classes.json           class names and the label rule
      index.json             generation parameters + size and sha256 of every file
      videos/{train,val}/*.mp4

The directory is generated atomically under a file lock and verified by its
index (data_modules.generated), so a crash or two concurrent processes (e.g.
several DDP ranks on one node) never leave a half-written set that is later
trusted; a directory holding anything else is refused, never overwritten.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from arjepa_pl.video_io import write_mp4

from .generated import ensure_generated

log = logging.getLogger("arjepa_pl.data")

SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("right", "left", "down", "up")
# (dx, dy) per frame in image coordinates: y grows downwards.
DIRECTION_VECTORS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}
# Label = shape_index * 4 + direction_index: this order of the two loops.
CLASS_NAMES = tuple(f"{s}_{d}" for s in SHAPES for d in DIRECTIONS)
NUM_CLASSES = len(CLASS_NAMES)
FPS = 8
# Bump when the generator's output changes, so old caches are regenerated.
FORMAT_VERSION = 1
SPLIT_IDS = {"train": 0, "val": 1}


@dataclass(frozen=True)
class DemoManifests:
    """Where a generated demo set lives: its two manifests and its directory."""

    train: Path
    val: Path
    root: Path


def default_demo_dir() -> Path:
    """$ARJEPA_DEMO_DIR if set, else ~/.cache/arjepa_pl/demo."""
    env = os.environ.get("ARJEPA_DEMO_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "arjepa_pl" / "demo"


# ----------------------------------------------------------------------------
# rendering


def _luma(rgb: np.ndarray) -> float:
    return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def _pick_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Background and shape colour far enough apart to survive H.264 + yuv420p.

    yuv420p halves chroma resolution, so contrast must be mostly in luma or a
    small shape smears into the background.
    """
    while True:
        background = rng.integers(0, 256, size=3)
        shape = rng.integers(0, 256, size=3)
        if np.linalg.norm(shape - background) >= 140 and abs(_luma(shape) - _luma(background)) >= 60:
            return background.astype(np.float32), shape.astype(np.float32)


def _shape_mask(shape: str, xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    """Boolean mask of a shape of 'radius' r centred at (cx, cy)."""
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        half = 0.85 * r  # about the same area as the circle
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "triangle":
        # Upright isosceles triangle: apex at (0, -r), base on y = +r, base width 2r.
        inside_height = (dy >= -r) & (dy <= r)
        half_width = (dy + r) / 2  # 0 at the apex, r at the base
        return inside_height & (np.abs(dx) <= half_width)
    raise ValueError(f"unknown shape {shape!r}")


def render_clip(rng: np.random.Generator, label: int, num_frames: int, size: int) -> np.ndarray:
    """uint8 frames [T, size, size, 3] of one shape moving along a straight line.

    Speed and start are chosen so the whole path stays inside the frame: no wrap
    and no bounce, so the direction of motion is the one the label says in every
    frame.
    """
    shape = SHAPES[label // len(DIRECTIONS)]
    dir_x, dir_y = DIRECTION_VECTORS[DIRECTIONS[label % len(DIRECTIONS)]]

    background_rgb, shape_rgb = _pick_colours(rng)
    background = np.broadcast_to(background_rgb, (size, size, 3)).copy()
    if rng.random() < 0.5:  # half the clips get a static noise texture
        background += rng.normal(0.0, 6.0, size=(size, size, 1))

    r = rng.uniform(0.10, 0.17) * size
    margin = r + 1
    room = size - 2 * margin  # how far the centre can travel along an axis
    steps = max(num_frames - 1, 1)
    speed = rng.uniform(0.4, 1.0) * room / steps  # pixels per frame
    travel = speed * steps
    along_start = margin + rng.uniform(0, room - travel)  # coordinate along the motion
    across = rng.uniform(margin, size - margin)  # coordinate across the motion
    if dir_x + dir_y < 0:  # left / up: start at the far end
        along_start = size - along_start

    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        along = along_start + (dir_x + dir_y) * speed * t
        cx, cy = (along, across) if dir_x else (across, along)
        frame = background.copy()
        frame[_shape_mask(shape, xs, ys, cx, cy, r)] = shape_rgb
        frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


# ----------------------------------------------------------------------------
# the cached set (generated.py: atomic, locked, verified by index.json)


def _clip_relpath(split: str, i: int, label: int) -> str:
    return f"videos/{split}/{i:05d}_{CLASS_NAMES[label]}.mp4"


def _split_labels(count: int) -> list[int]:
    # Round-robin over classes: counts differ by at most one, exactly balanced
    # when count is a multiple of 12.
    return [i % NUM_CLASSES for i in range(count)]


def _expected_files(params: dict) -> set[str]:
    files = {"train.csv", "val.csv", "classes.json"}
    for split in SPLIT_IDS:
        for i, label in enumerate(_split_labels(params[f"num_{split}"])):
            files.add(_clip_relpath(split, i, label))
    return files


def _generate(tmp: Path, root: Path, params: dict) -> None:
    """Write the whole set into `tmp`; manifests already name the final paths in `root`."""
    for split, split_id in SPLIT_IDS.items():
        (tmp / "videos" / split).mkdir(parents=True)
        lines = []
        for i, label in enumerate(_split_labels(params[f"num_{split}"])):
            rng = np.random.default_rng([params["seed"], split_id, i])
            frames = render_clip(rng, label, params["num_frames"], params["size"])
            relpath = _clip_relpath(split, i, label)
            write_mp4(tmp / relpath, frames, fps=FPS)
            lines.append(f"{root / relpath} {label}\n")
        (tmp / f"{split}.csv").write_text("".join(lines))

    classes = {
        "classes": list(CLASS_NAMES),
        "shapes": list(SHAPES),
        "directions": list(DIRECTIONS),
        "label_rule": "label = shape_index * 4 + direction_index",
    }
    (tmp / "classes.json").write_text(json.dumps(classes, indent=2) + "\n")


def ensure_demo_videos(
    root: str | os.PathLike,
    *,
    num_train: int = 96,
    num_val: int = 48,
    num_frames: int = 32,
    size: int = 64,
    seed: int = 0,
) -> DemoManifests:
    """Generate the demo set into `root` unless an intact identical one is there.

    Cheap when cached (hashes ~150 small files), so every process may call it.
    """
    for name, value, minimum in (("num_train", num_train, 1), ("num_val", num_val, 1), ("num_frames", num_frames, 2)):
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if size < 16 or size % 2:
        raise ValueError(f"size must be an even number >= 16 (yuv420p needs even sides), got {size}")

    root = Path(root).expanduser().resolve()
    params = {
        "format_version": FORMAT_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "num_frames": num_frames,
        "size": size,
        "seed": seed,
        "fps": FPS,
        # Manifests hold absolute paths, so a moved set must be regenerated.
        "root": str(root),
    }

    def generate(tmp: Path) -> None:
        log.info(f"generating demo videos in {root} ({num_train} train + {num_val} val clips, "
                 f"{num_frames} frames of {size}x{size}, seed {seed})")
        _generate(tmp, root, params)

    ensure_generated(root, params, _expected_files(params), generate, what="demo", env_var="ARJEPA_DEMO_DIR")
    return DemoManifests(train=root / "train.csv", val=root / "val.csv", root=root)
