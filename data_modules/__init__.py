"""Video data for arjepa_pl: manifests, clip decoding, augmentation, samplers, and a demo set.

Knows nothing of models: batches are dicts {"video": [B, 3, T, S, S], "label",
"index", "epoch", "position"} (or "image": [B, 3, S, S] from FrameDataModule).
"""

from .demo_videos import DemoManifests, default_demo_dir, ensure_demo_videos
from .frames import FrameDataModule, FrameDataset
from .manifest import read_manifest
from .samplers import ClipSampler
from .video import VideoDataModule
from .video_clips import VideoClipDataset

__all__ = [
    "VideoDataModule",
    "VideoClipDataset",
    "FrameDataModule",
    "FrameDataset",
    "ClipSampler",
    "ensure_demo_videos",
    "default_demo_dir",
    "read_manifest",
    "DemoManifests",
]
