"""Reading V-JEPA-style manifests: one `path label` per line, no header."""

from __future__ import annotations

import os
from pathlib import Path


def read_manifest(path: str | os.PathLike) -> list[tuple[str, int]]:
    """Return [(absolute video path, integer label), ...] in file order.

    Relative video paths are resolved against the manifest's own directory, so a
    data set folder with its manifest can be moved or shared as a whole. Blank
    lines are skipped. Paths cannot contain whitespace (the format splits on it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path} (expected a text file of 'VIDEO_PATH LABEL' lines)")

    base = path.resolve().parent
    samples: list[tuple[str, int]] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise ValueError(
                    f"{path}:{lineno}: expected 2 fields 'VIDEO_PATH LABEL', got {len(fields)}: {line.strip()!r}"
                    " (paths with spaces are not supported)"
                )
            video, label_text = fields
            try:
                label = int(label_text)
            except ValueError:
                raise ValueError(f"{path}:{lineno}: label must be an integer, got {label_text!r}") from None
            samples.append((str(base / video), label))  # an absolute `video` stays as it is

    if not samples:
        raise ValueError(f"{path}: manifest is empty (no 'VIDEO_PATH LABEL' lines)")
    return samples
