"""Clip sampling (step / fps / duration, segments, padding), decoding options, multi-view
transforms, and weighted mixing, against hand-computed values."""

import io
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from data_modules import BadVideo, ClipOptions, VideoDataModule, WeightedClipSampler, load_clip, read_manifest
from data_modules.frame_indices import clip_indices, is_short, resolve_frame_step
from data_modules.clip import decode_frames
from data_modules.decoding import decode_size, mp4_frame_size, probe_size
from data_modules.demo_videos import write_mp4
from data_modules.transforms import spatial_crop_boxes

from test_data import decode_all

# ----------------------------------------------------------------------------
# frame indices


@pytest.mark.parametrize(
    "fps, duration, video_fps, step",
    [
        (None, None, 30.0, 4),  # frame_step as given, whatever the video's rate
        (7.5, None, 30.0, 4),  # 30 / 7.5
        (8.0, None, 25.0, 3),  # round(3.125)
        (30.0, None, 24.0, 1),  # never below 1
        (None, 2.0, 30.0, 4),  # round(2 s * 30 fps / 16 frames = 3.75)
        (None, 1.0, 8.0, 1),  # round(0.5) = 0 -> 1
        (None, 4.0, 8.0, 2),  # 4 s * 8 fps / 16
        (8.0, None, 0.0, 4),  # no usable frame rate: fall back to frame_step
    ],
)
def test_resolve_frame_step(fps, duration, video_fps, step):
    assert resolve_frame_step(16, 4, fps, duration, video_fps) == step


def test_fps_and_duration_are_exclusive():
    with pytest.raises(ValueError, match="not both"):
        resolve_frame_step(16, 4, 8.0, 2.0, 30.0)
    with pytest.raises(ValueError, match="not both"):
        ClipOptions(fps=8.0, duration=2.0)


def test_eval_clips_are_centred_in_each_segment():
    # 100 frames, 2 segments of 50; a clip spans 4 x 5 = 20 frames, centred: start (50 - 20) // 2 = 15.
    assert clip_indices(100, 4, 5, num_clips=2).tolist() == [[15, 20, 25, 30], [65, 70, 75, 80]]
    # 9 frames, 2 segments of 4 (frame 8 unused); clips of 2 x 1 start at (4 - 2) // 2 = 1.
    assert clip_indices(9, 2, 1, num_clips=2).tolist() == [[1, 2], [5, 6]]
    assert clip_indices(32, 4, 4).tolist() == [[8, 12, 16, 20]]


def test_train_clips_start_uniformly_inside_their_segment():
    rng = np.random.default_rng(0)
    starts = [set(), set()]
    for _ in range(2000):
        clips = clip_indices(100, 4, 5, num_clips=2, rng=rng)
        for i, clip in enumerate(clips):
            assert (np.diff(clip) == 5).all()
            assert 50 * i <= clip[0] and clip[-1] < 50 * (i + 1)  # never leaves its segment
            starts[i].add(int(clip[0]) - 50 * i)
    assert starts[0] == starts[1] == set(range(31))  # every start in [0, 50 - 20]


def test_short_segments_repeat_their_last_frame():
    # 30 frames, 2 segments of 15 < 20 = clip length: start at the segment, clamp to its last frame.
    for rng in (None, np.random.default_rng(0)):
        assert clip_indices(30, 4, 5, num_clips=2, rng=rng).tolist() == [[0, 5, 10, 14], [15, 20, 25, 29]]
    assert clip_indices(10, 8, 2, rng=np.random.default_rng(0)).tolist() == [[0, 2, 4, 6, 8, 9, 9, 9]]
    assert is_short(30, 4, 5, num_clips=2) and not is_short(40, 4, 5, num_clips=2)


# ----------------------------------------------------------------------------
# transforms


def test_spatial_crop_boxes():
    assert spatial_crop_boxes(48, 64, 3) == [(0, 0, 48, 48), (0, 8, 48, 48), (0, 16, 48, 48)]
    assert spatial_crop_boxes(64, 48, 3) == [(0, 0, 48, 48), (8, 0, 48, 48), (16, 0, 48, 48)]
    assert spatial_crop_boxes(48, 64, 1) == [(0, 8, 48, 48)]
    assert spatial_crop_boxes(48, 64, 2) == [(0, 0, 48, 48), (0, 16, 48, 48)]


def test_decode_size():
    assert decode_size(720, 1280, 409) == (409, 727)
    assert decode_size(1280, 720, 224) == (398, 224)
    assert decode_size(360, 640, 409) == (360, 640)  # never upsampled
    assert decode_size(720, 1280, None) == (720, 1280)


def test_clip_options_validation():
    for bad, match in [(dict(num_clips=0), "num_clips"), (dict(eval_views=0), "eval_views"),
                       (dict(short_videos="drop"), "short_videos"), (dict(fps=0), "fps"),
                       (dict(max_file_mb=-1), "max_file_mb"), (dict(decode_short_side=-1), "decode_short_side"),
                       (dict(crop_ratio=(2, 1)), "crop_ratio"), (dict(std=(0, 1, 1)), "std")]:
        with pytest.raises(ValueError, match=match):
            ClipOptions(**bad)
    assert ClipOptions(crop_scale=[0.5, 1]).crop_scale == (0.5, 1.0)  # YAML lists become tuples


# ----------------------------------------------------------------------------
# decoding: sampling modes on real videos, reduced resolution, filters


@pytest.fixture(scope="module")
def wide_video(tmp_path_factory):
    """A 96x128 (h x w) 8 fps clip of 24 frames whose pixels differ from frame to frame."""
    path = tmp_path_factory.mktemp("wide") / "wide.mp4"
    rng = np.random.default_rng(0)
    write_mp4(path, rng.integers(0, 256, size=(24, 96, 128, 3), dtype=np.uint8))
    return str(path)


@pytest.mark.parametrize(
    "options, expected",
    [
        (dict(frame_step=3), [[10, 13, 16, 19]]),  # clip of 12 centred in 32 frames: starts at (32 - 12) // 2
        (dict(fps=4.0), [[12, 14, 16, 18]]),  # 8 fps video -> step 2, clip of 8 starts at (32 - 8) // 2
        (dict(duration=2.0), [[8, 12, 16, 20]]),  # step round(2 * 8 / 4) = 4, clip of 16 starts at 8
        (dict(frame_step=2, num_clips=2), [[4, 6, 8, 10], [20, 22, 24, 26]]),  # segments of 16, clip of 8 at 4
    ],
)
def test_sampling_modes_decode_the_hand_computed_frames(demo_manifests, options, expected):
    path = read_manifest(demo_manifests.val)[0][0]  # 32 frames at 8 fps, 64x64
    frames = decode_frames(path, ClipOptions(frames_per_clip=4, crop_size=64, **options), rng=None)
    assert np.array_equal(frames, decode_all(path)[np.array(expected)])


def test_decode_at_reduced_resolution(wide_video):
    # Training: short side ceil(32 / sqrt(0.25)) = 64 -> 64 x 85; evaluation: 32 -> 32 x 43.
    options = ClipOptions(frames_per_clip=4, frame_step=2, crop_size=32, crop_scale=(0.25, 1.0))
    assert decode_frames(wide_video, options, np.random.default_rng(0)).shape == (1, 4, 64, 85, 3)
    assert decode_frames(wide_video, options, None).shape == (1, 4, 32, 43, 3)
    full = ClipOptions(frames_per_clip=4, frame_step=2, crop_size=32, decode_short_side=0)
    assert decode_frames(wide_video, full, None).shape == (1, 4, 96, 128, 3)
    # The reduced decode is the same picture, not a crop: close to a resize of the full frames.
    small = torch.from_numpy(decode_frames(wide_video, options, None)[0]).float().mean()
    assert abs(small - torch.from_numpy(decode_frames(wide_video, full, None)[0]).float().mean()) < 2


def test_mp4_header_probe_and_its_fallbacks(demo_manifests, wide_video, tmp_path):
    assert mp4_frame_size(open(wide_video, "rb")) == (96, 128)
    data = Path(wide_video).read_bytes()
    assert probe_size(data) == (96, 128)  # from bytes in memory too
    # A track rotated by 90 degrees displays as 128x96: its header size is not the decoded size, so
    # the header is not trusted and FFmpeg (PyAV) gives the coded size.
    tkhd = data.find(b"tkhd")
    rotation = struct.pack(">9i", 0, 1 << 16, 0, -(1 << 16), 0, 0, 0, 0, 1 << 30)
    rotated = data[: tkhd + 4 + 84 - 44] + rotation + data[tkhd + 4 + 84 - 8 :]
    assert mp4_frame_size(io.BytesIO(rotated)) is None and probe_size(rotated) == (96, 128)
    assert mp4_frame_size(io.BytesIO(b"not an mp4 at all")) is None
    assert mp4_frame_size(io.BytesIO(data[: len(data) // 2])) is None  # the header (at the end) is cut off


def test_decord_resize_failures_fall_back_to_full_size(demo_manifests):
    # decord cannot resize 64-pixel-wide frames to 16 (nor 24, 48, ...): that must not make the
    # video bad, only slower.
    path = read_manifest(demo_manifests.val)[0][0]
    options = ClipOptions(frames_per_clip=4, frame_step=2, crop_size=16)
    assert decode_frames(path, options, None).shape == (1, 4, 64, 64, 3)
    assert load_clip(path, options, np.random.default_rng(0), train=False).shape == (3, 4, 16, 16)


def test_multi_view_shapes_and_views_differ(wide_video):
    options = ClipOptions(frames_per_clip=4, frame_step=2, crop_size=32, num_clips=2, eval_views=3)
    views = load_clip(wide_video, options, np.random.default_rng(0), train=False)
    assert views.shape == (6, 3, 4, 32, 32)
    assert not torch.equal(views[0], views[1]) and not torch.equal(views[0], views[3])  # space and time
    train = load_clip(wide_video, options, np.random.default_rng(0), train=True)
    assert train.shape == (2, 3, 4, 32, 32)  # eval_views applies to evaluation only
    one = load_clip(wide_video, ClipOptions(frames_per_clip=4, crop_size=32), np.random.default_rng(0), train=False)
    assert one.shape == (3, 4, 32, 32)


def test_filters_make_bad_videos(demo_manifests):
    path = read_manifest(demo_manifests.val)[0][0]  # 32 frames, 4 s at 8 fps
    rng = np.random.default_rng(0)
    long_clip = dict(frames_per_clip=8, frame_step=8, crop_size=32)  # needs 64 frames
    assert load_clip(path, ClipOptions(**long_clip), rng, train=True).shape == (3, 8, 32, 32)  # padded
    with pytest.raises(BadVideo, match="32 frames is too short"):
        load_clip(path, ClipOptions(short_videos="skip", **long_clip), rng, train=True)
    with pytest.raises(BadVideo, match=r"4.0 s is over the 3.0 s limit"):
        load_clip(path, ClipOptions(max_duration_s=3.0, crop_size=32), rng, train=True)
    with pytest.raises(BadVideo, match="MB limit"):
        load_clip(path, ClipOptions(max_file_mb=0.001, crop_size=32), rng, train=True)
    with pytest.raises(BadVideo, match="resolution 64x64 is over max_frame_pixels=1000"):
        load_clip(path, ClipOptions(max_frame_pixels=1000, crop_size=32), rng, train=True)


# ----------------------------------------------------------------------------
# mixing


def test_weighted_sampler_proportions_follow_weight_over_size():
    sizes, weights = [10, 1000, 90], [0.5, 0.3, 0.2]
    dataset = range(sum(sizes))
    ranks = [WeightedClipSampler(dataset, sizes, weights, num_replicas=2, rank=r, num_samples=20000, seed=1) for r in (0, 1)]
    items = [list(s) for s in ranks]
    assert [len(i) for i in items] == [20000, 20000]
    assert [p for _, _, p in items[0]] == list(range(20000))
    indices = np.array([i for rank in items for i, _, _ in rank])
    source = np.searchsorted(np.cumsum(sizes), indices, side="right")
    assert np.allclose(np.bincount(source, minlength=3) / len(indices), weights, atol=0.01)
    # Inside a data set, uniform: the 10 samples of the small set share its 50 % about equally.
    small = np.bincount(indices[source == 0], minlength=10) / (source == 0).sum()
    assert np.allclose(small, 0.1, atol=0.02)
    # Deterministic per epoch, different across epochs.
    again = WeightedClipSampler(dataset, sizes, weights, num_replicas=2, rank=0, num_samples=20000, seed=1)
    assert list(again) == items[0]
    again.set_epoch(1)
    assert [i for i, _, _ in again] != [i for i, _, _ in items[0]]


def test_weighted_sampler_rejects_bad_mixtures():
    with pytest.raises(ValueError, match="one weight per data set"):
        WeightedClipSampler(range(10), [5, 5], [1.0], num_replicas=1, rank=0)
    with pytest.raises(ValueError, match=">= 0 and not all 0"):
        WeightedClipSampler(range(10), [5, 5], [1.0, -1.0], num_replicas=1, rank=0)
    with pytest.raises(ValueError, match="do not add up"):
        WeightedClipSampler(range(10), [5, 6], [1.0, 1.0], num_replicas=1, rank=0)


def test_datamodule_mixes_manifests_with_fixed_iterations(demo_manifests):
    dm = VideoDataModule(train_manifest=[str(demo_manifests.train), str(demo_manifests.val)], mix_weights=[3, 1],
                         iterations_per_epoch=50, batch_size=4, num_workers=0, crop_size=32, frames_per_clip=4)
    dm.setup("fit")
    assert dm.train_dataset.source_sizes == [12, 12] and len(dm.train_dataset) == 24
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, WeightedClipSampler) and len(loader) == 50
    indices = np.array([i for i, _, _ in loader.sampler])
    assert len(indices) == 200 and abs((indices < 12).mean() - 0.75) < 0.08
    with pytest.raises(ValueError, match="2 weights for 1 train manifests"):
        bad = VideoDataModule(train_manifest=str(demo_manifests.train), mix_weights=[1, 1], num_workers=0)
        bad.setup("fit")
