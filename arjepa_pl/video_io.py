"""Writing video files: H.264 mp4 whose bytes depend only on the frames. Used by the demo data, the
rollout writers and the media callback; a leaf module, so the data code and the objectives share it
without knowing each other. PyAV is imported when a file is written, not before."""

from pathlib import Path

import numpy as np
import torch


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """[C, T, H, W] in [0, 1] -> uint8 [T, H, W, C]."""
    return (frames.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


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


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 8) -> None:
    """H.264 (libx264, yuv420p) mp4 whose bytes depend only on `frames` (and the x264 build)."""
    import av

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
