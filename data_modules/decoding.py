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
import struct
from typing import BinaryIO

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
    """(height, width) of the first video stream, from the container header (no frame decoded).

    MP4/MOV headers are read directly (a few small reads, ~20x cheaper than opening the file
    with FFmpeg, which matters for small clips); anything else, or an MP4 whose track is rotated,
    goes through PyAV.
    """
    try:
        with open(source, "rb") if isinstance(source, str) else io.BytesIO(source) as f:
            size = mp4_frame_size(f)
    except OSError as e:
        raise BadVideo(f"unreadable: {e.strerror or e}") from None
    if size is not None:
        return size
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


def mp4_frame_size(f: BinaryIO) -> tuple[int, int] | None:
    """(height, width) of the first video track of an ISO-BMFF file (moov/trak/tkhd), or None.

    None also when the file is not ISO-BMFF, is cut short, or the track has a transform matrix
    (e.g. a phone video rotated by 90 degrees, whose display size is not its decoded size).
    """
    end = f.seek(0, io.SEEK_END)
    for kind, start, stop in _boxes(f, 0, end):
        if kind != b"moov":
            continue
        for kind, trak, trak_end in _boxes(f, start, stop):
            if kind != b"trak":
                continue
            header = handler = None
            for kind, box, box_end in _boxes(f, trak, trak_end):
                if kind == b"tkhd" and box_end - box <= 256:
                    f.seek(box)
                    header = f.read(box_end - box)
                elif kind == b"mdia":
                    for kind, sub, _ in _boxes(f, box, box_end):
                        if kind == b"hdlr":
                            f.seek(sub + 8)  # version/flags, pre_defined
                            handler = f.read(4)
            if handler == b"vide" and header is not None and len(header) in (84, 96):
                matrix, (width, height) = header[-44:-8], struct.unpack(">II", header[-8:])
                return (height >> 16, width >> 16) if matrix == _IDENTITY else None
        return None
    return None


_IDENTITY = struct.pack(">9i", 1 << 16, 0, 0, 0, 1 << 16, 0, 0, 0, 1 << 30)


def _boxes(f: BinaryIO, start: int, end: int):
    """(type, payload start, end) of the ISO-BMFF boxes in [start, end); stops at anything malformed."""
    pos = start
    while pos + 8 <= end:
        f.seek(pos)
        head = f.read(8)
        if len(head) < 8:
            return
        size, kind = struct.unpack(">I4s", head)
        header = 8
        if size == 1:  # 64-bit size follows
            large = f.read(8)
            if len(large) < 8:
                return
            size, header = struct.unpack(">Q", large)[0], 16
        elif size == 0:  # to the end of the enclosing box
            size = end - pos
        if size < header or pos + size > end:
            return
        yield kind, pos + header, pos + size
        pos += size


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
