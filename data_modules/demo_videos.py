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

The directory is generated atomically (into a temp dir next to it, then renamed)
under a file lock, so a crash or two concurrent processes (e.g. several DDP ranks
on one node) never leave a half-written set that is later trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

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
# The only names a demo root may contain: we refuse to replace anything else,
# so pointing demo_dir at a directory with user data can never delete it.
OWNED_NAMES = {"train.csv", "val.csv", "classes.json", "index.json", "videos"}


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


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] RGB -> uint8 [H*3/2, W] planar yuv420p (BT.601, limited range).

    Done here in numpy rather than by swscale so the encoder input is fully
    determined by our code, whatever ffmpeg build PyAV ships.
    """
    x = rgb.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    h, w = y.shape
    u = u.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))  # 2x2 chroma subsampling
    v = v.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    planes = np.concatenate([y.ravel(), u.ravel(), v.ravel()])
    return np.clip(np.rint(planes), 0, 255).astype(np.uint8).reshape(h * 3 // 2, w)


def write_mp4(path: Path, frames: np.ndarray, fps: int = FPS) -> None:
    """H.264 (libx264, yuv420p) mp4 whose bytes depend only on `frames` (and the x264 build)."""
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # Reproducible bytes: x264 single-threaded and without its SIMD code, which
        # on frames this small gave different bytes from run to run (~1 clip in 4).
        # Plain C is fast enough at 64x64. A small GOP keeps seeking cheap.
        stream.options = {"crf": "18", "preset": "fast", "g": str(2 * fps), "threads": "1", "x264-params": "asm=0"}
        for t, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(rgb), format="yuv420p")
            frame.pts = t
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder
            container.mux(packet)


# ----------------------------------------------------------------------------
# cache: index, verification, atomic generation


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


def _is_complete(root: Path, params: dict) -> bool:
    """True when root holds exactly the set `params` describes, undamaged."""
    try:
        index = json.loads((root / "index.json").read_text())
    except (OSError, ValueError):
        return False
    if index.get("params") != params:
        return False
    files = index.get("files", {})
    if set(files) != _expected_files(params):
        return False
    for relpath, meta in files.items():
        path = root / relpath
        if not path.is_file() or path.stat().st_size != meta.get("size"):
            return False
        if _sha256(path) != meta.get("sha256"):
            return False
    return True


def _generate(tmp: Path, root: Path, params: dict) -> None:
    """Write the whole set into `tmp`; manifests already name the final paths in `root`."""
    for split, split_id in SPLIT_IDS.items():
        (tmp / "videos" / split).mkdir(parents=True)
        lines = []
        for i, label in enumerate(_split_labels(params[f"num_{split}"])):
            rng = np.random.default_rng([params["seed"], split_id, i])
            frames = render_clip(rng, label, params["num_frames"], params["size"])
            relpath = _clip_relpath(split, i, label)
            write_mp4(tmp / relpath, frames)
            lines.append(f"{root / relpath} {label}\n")
        (tmp / f"{split}.csv").write_text("".join(lines))

    classes = {
        "classes": list(CLASS_NAMES),
        "shapes": list(SHAPES),
        "directions": list(DIRECTIONS),
        "label_rule": "label = shape_index * 4 + direction_index",
    }
    (tmp / "classes.json").write_text(json.dumps(classes, indent=2) + "\n")

    # index.json last: a set without it is never trusted.
    files = {}
    for relpath in sorted(_expected_files(params)):
        path = tmp / relpath
        files[relpath] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    index = {"params": params, "files": files}
    (tmp / "index.json").write_text(json.dumps(index, indent=2) + "\n")


@contextmanager
def _exclusive_lock(lock_path: Path):
    """Inter-process lock so concurrent callers generate the set only once.

    Without fcntl (Windows) we rely on the atomic rename alone: concurrent
    callers may both generate, but nobody trusts a half-written set.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_stale_leftovers(root: Path, max_age_s: float = 3600.0) -> None:
    # Temp dirs of crashed runs. Only old ones: a young one may belong to a live
    # process on another machine sharing this file system (where flock may not hold).
    for leftover in root.parent.glob(f".{root.name}.*-*"):
        if leftover.is_dir() and time.time() - leftover.stat().st_mtime > max_age_s:
            shutil.rmtree(leftover, ignore_errors=True)


def _check_owned(root: Path) -> None:
    if root.exists():
        if not root.is_dir():
            raise ValueError(f"demo dir {root} exists and is not a directory")
        foreign = sorted(p.name for p in root.iterdir() if p.name not in OWNED_NAMES)
        if foreign:
            raise ValueError(
                f"demo dir {root} holds files that are not part of a demo set ({', '.join(foreign[:5])}); "
                "refusing to overwrite it: point demo_dir / $ARJEPA_DEMO_DIR at an empty or new directory"
            )


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
    manifests = DemoManifests(train=root / "train.csv", val=root / "val.csv", root=root)

    # Fast path without the lock (a set is only ever swapped in whole), which
    # also lets a complete set be used from a read-only location.
    if _is_complete(root, params):
        return manifests
    root.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(root.parent / f".{root.name}.lock"):
        if _is_complete(root, params):  # another process made it while we waited
            return manifests
        _check_owned(root)
        _remove_stale_leftovers(root)
        log.info(f"generating demo videos in {root} ({num_train} train + {num_val} val clips, "
                 f"{num_frames} frames of {size}x{size}, seed {seed})")
        token = f"{os.getpid()}-{secrets.token_hex(4)}"
        tmp = root.parent / f".{root.name}.tmp-{token}"
        stale = root.parent / f".{root.name}.stale-{token}"
        try:
            tmp.mkdir()
            _generate(tmp, root, params)
            # Swap: move any old (damaged / different) set aside, rename the new one in.
            if root.exists():
                root.rename(stale)
            tmp.rename(root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(stale, ignore_errors=True)
    return manifests
