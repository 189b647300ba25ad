"""Video data for arjepa_pl: manifests, clip sampling and decoding, augmentation, samplers, bad-video
handling, tar shards and streaming, mixing, resumable loaders, and a demo set.

Knows nothing of models: batches are dicts {"video": [B, 3, T, S, S], "label", "index", "epoch",
"position", "skipped"} (or "image": [B, 3, S, S] from FrameDataModule).
"""

from .bad_samples import BadSampleGuard, SkippedVideosReport, TooManyBadVideos
from .clip import ClipOptions, load_clip
from .datamodules import ClipDataModule, VideoDataModule
from .datasets import VideoClipDataset
from .decoding import BadVideo
from .demo_videos import DemoManifests, default_demo_dir, ensure_demo_videos
from .frames import FrameDataModule, FrameDataset
from .manifest import read_manifest
from .resumable import ResumableDataLoader
from .samplers import ClipSampler, WeightedClipSampler
from .shards import pack, read_shard_set
from .streaming import ShardClipStream, StreamingVideoDataModule
from .two_rooms import TwoRooms, TwoRoomsLayout
from .two_rooms_module import TwoRoomsDataModule

__all__ = [
    "VideoDataModule",
    "ClipDataModule",
    "StreamingVideoDataModule",
    "ShardClipStream",
    "pack",
    "read_shard_set",
    "VideoClipDataset",
    "ClipOptions",
    "load_clip",
    "FrameDataModule",
    "FrameDataset",
    "ClipSampler",
    "WeightedClipSampler",
    "ResumableDataLoader",
    "BadVideo",
    "BadSampleGuard",
    "TooManyBadVideos",
    "SkippedVideosReport",
    "ensure_demo_videos",
    "default_demo_dir",
    "read_manifest",
    "DemoManifests",
    "TwoRooms",
    "TwoRoomsLayout",
    "TwoRoomsDataModule",
]
