"""Opening one video, from a path or from bytes in memory, for decord to decode.

Every way a file can be unusable (missing, a directory, empty, unreadable, not a video, audio
only, too large, a resolution too big to decode, a stream that breaks mid-decode) becomes a
BadVideo whose message says why, so the dataset can skip it and name it in its report. Anything
else (a bug of ours) is left to propagate.
"""

from __future__ import annotations

import io
import os
import re
import stat

import av
import decord
import numpy as np


class BadVideo(Exception):
    """A video that cannot give a clip. Skipped and replaced by the dataset, never fatal by itself."""


def check_file(path: str, max_bytes: int | None = None) -> None:
    """Cheap checks before any decoder sees the file: a plain, non-empty, readable file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BadVideo("file not found") from None
    except OSError as e:
        raise BadVideo(f"cannot stat: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise BadVideo("is a directory")
    if not stat.S_ISREG(st.st_mode):
        # A FIFO or device would block or stream forever inside the decoder.
        raise BadVideo("not a regular file")
    check_size(st.st_size, max_bytes)
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise BadVideo(f"unreadable: {e.strerror or e}") from None


def check_size(num_bytes: int, max_bytes: int | None) -> None:
    if num_bytes == 0:
        raise BadVideo("empty file (0 bytes)")
    if max_bytes is not None and num_bytes > max_bytes:
        raise BadVideo(f"{num_bytes / 1e6:.1f} MB is over the {max_bytes / 1e6:.1f} MB limit (max_file_mb)")


def probe_size(source: str | bytes) -> tuple[int, int]:
    """(height, width) of the first video stream, from the container header (no frame decoded)."""
    try:
        with av.open(source if isinstance(source, str) else io.BytesIO(source)) as container:
            if not container.streams.video:
                raise BadVideo("no video stream (audio only?)")
            codec = container.streams.video[0].codec_context
            height, width = int(codec.height), int(codec.width)
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        # FFmpeg's errors repeat the path after the reason: keep the reason.
        raise BadVideo(f"not a readable video container: {getattr(e, 'strerror', None) or e}") from None
    if height < 1 or width < 1:
        raise BadVideo(f"video stream has no frame size ({width}x{height})")
    return height, width


def decode_size(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    """(height, width) to decode at: the source's, or scaled down so the short side is short_side."""
    if not short_side or min(height, width) <= short_side:
        return height, width
    scale = short_side / min(height, width)
    return max(short_side, round(height * scale)), max(short_side, round(width * scale))


def open_reader(
    source: str | bytes,
    max_frame_pixels: int | None = None,
    short_side: int | None = None,
) -> tuple[decord.VideoReader, bool]:
    """(decord reader, whether it resizes): it does when the source's short side exceeds short_side.

    Decoding at the reduced size makes decord's swscale do the downscaling in C, frame by frame,
    instead of handing us full 720p/1080p RGB frames to crop and resize.
    """
    height, width = probe_size(source)
    if max_frame_pixels is not None and height * width > max_frame_pixels:
        raise BadVideo(f"resolution {width}x{height} is over max_frame_pixels={max_frame_pixels}")
    out_height, out_width = decode_size(height, width, short_side)
    size = {} if (out_height, out_width) == (height, width) else {"height": out_height, "width": out_width}
    try:
        # One thread: the DataLoader workers are the parallelism.
        reader = decord.VideoReader(source if isinstance(source, str) else io.BytesIO(source),
                                    num_threads=1, ctx=decord.cpu(0), **size)
    except (decord.DECORDError, RuntimeError, AssertionError) as e:
        # decord raises RuntimeError("Error reading ...") on files ffmpeg cannot open and asserts
        # on a stream that reports no frames.
        raise BadVideo(f"decord cannot open it: {_first_line(e)}") from None
    return reader, bool(size)


def read_frames(reader: decord.VideoReader, indices: np.ndarray) -> np.ndarray:
    """uint8 [*indices.shape, H, W, 3]; a stream that breaks mid-decode is a BadVideo."""
    try:
        frames = reader.get_batch(indices.reshape(-1).tolist()).asnumpy()
    except (decord.DECORDError, RuntimeError, IndexError) as e:
        raise BadVideo(f"decoding failed: {_first_line(e)}") from None
    return frames.reshape(*indices.shape, *frames.shape[1:])


def _first_line(error: Exception) -> str:
    """The informative part of a decord error: no C++ stack trace, no '[time] file.cc:line:' prefixes."""
    lines = [line for line in str(error).splitlines() if line.strip() and not line.startswith("Stack trace")]
    text = _DECORD_PREFIX.sub("", lines[0] if lines else "").strip()
    return (text or type(error).__name__)[:300]


_DECORD_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+\.cc:\d+: ")
