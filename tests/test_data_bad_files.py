"""Bad inputs never stop a run: every kind is skipped, replaced deterministically, counted and
reported; mostly-bad data stops with a clear error."""

import csv
import logging
import os
import re
import shutil
import stat
from pathlib import Path

import av
import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from data_modules import (
    BadSampleGuard,
    BadVideo,
    ClipOptions,
    SkippedVideosReport,
    TooManyBadVideos,
    VideoClipDataset,
    VideoDataModule,
    decoding,
    load_clip,
    read_manifest,
)
from data_modules.demo_videos import write_mp4

# kind -> what the reason must say
REASONS = {
    "missing": "file not found",
    "zero_bytes": r"empty file \(0 bytes\)",
    "truncated": "not a readable video container",
    "text": "not a readable video container",
    "audio_only": r"no video stream \(audio only\?\)",
    "one_frame": "1 frame: a still image",
    "mid_decode": "decoding failed",
    "huge": r"resolution 4352x2448 is over max_frame_pixels",
    "directory": "is a directory",
    "unreadable": "unreadable: Permission denied",
    "fifo": "not a regular file",
}


def write_audio_only(path):
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_huge(path, height=2448, width=4352):
    """Two flat frames of 10.6 megapixels (over the default 4096 x 2160 limit), encoded fast."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for t in range(2):
            frame = av.VideoFrame.from_ndarray(np.zeros((height * 3 // 2, width), np.uint8), format="yuv420p")
            frame.pts = t
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_bad_videos(folder, good_video):
    """{kind: path} with one file (or non-file) of every bad kind."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {kind: folder / f"{kind}.mp4" for kind in REASONS}
    good = good_video.read_bytes()
    paths["zero_bytes"].write_bytes(b"")
    paths["truncated"].write_bytes(good[: len(good) // 2])  # the index (moov) is at the end: lost
    paths["text"].write_text("this is not a video\n" * 20)
    write_audio_only(paths["audio_only"])
    rng = np.random.default_rng(0)
    write_mp4(paths["one_frame"], rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8))
    # Opens fine (header intact), but the second half of its frames' data is garbage: any clip
    # of 4 frames 2 apart needs it, so decoding breaks part-way.
    write_mp4(paths["mid_decode"], rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8))
    data = bytearray(paths["mid_decode"].read_bytes())
    mdat, moov = data.find(b"mdat"), data.find(b"moov")
    data[mdat + (moov - mdat) // 2 : moov - 8] = bytes((b * 7 + 13) & 0xFF for b in data[mdat + (moov - mdat) // 2 : moov - 8])
    paths["mid_decode"].write_bytes(bytes(data))
    write_huge(paths["huge"])
    paths["directory"].mkdir()
    shutil.copy(good_video, paths["unreadable"])
    paths["unreadable"].chmod(0)
    os.mkfifo(paths["fifo"])
    return {kind: str(path) for kind, path in paths.items()}


@pytest.fixture(scope="module")
def bad_videos(tmp_path_factory, demo_manifests):
    good = read_manifest(demo_manifests.train)[0][0]
    return make_bad_videos(tmp_path_factory.mktemp("bad"), Path(good))


@pytest.fixture
def as_unprivileged(monkeypatch):
    """root reads a chmod-000 file anyway: make the decoding module's open() refuse it as the kernel would
    refuse anyone else (the forked DataLoader workers inherit the patch)."""
    if os.geteuid() != 0:
        return
    real_open = open

    def open_as_user(path, mode="r", *args, **kwargs):
        if "r" in mode and os.path.isfile(path) and not os.stat(path).st_mode & stat.S_IRUSR:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(decoding, "open", open_as_user, raising=False)


OPTIONS = ClipOptions(frames_per_clip=4, frame_step=2, crop_size=32)


@pytest.mark.parametrize("kind", sorted(REASONS))
def test_each_bad_kind_is_a_bad_video_with_its_reason(bad_videos, kind, as_unprivileged):
    with pytest.raises(BadVideo, match=REASONS[kind]):
        load_clip(bad_videos[kind], OPTIONS, np.random.default_rng(0), train=True)


def write_manifest(path, entries):
    path.write_text("".join(f"{video} {label}\n" for video, label in entries))
    return path


def test_replacement_is_deterministic_and_from_the_same_manifest(bad_videos, demo_manifests, tmp_path):
    train = read_manifest(demo_manifests.train)
    bad = write_manifest(tmp_path / "bad.csv", [(bad_videos["text"], 100), (bad_videos["missing"], 101)] + train[:3])
    other = write_manifest(tmp_path / "other.csv", read_manifest(demo_manifests.val))
    args = dict(train=True, frames_per_clip=4, frame_step=2, crop_size=32, max_bad_fraction=1.0)
    a, b = VideoClipDataset([bad, other], **args), VideoClipDataset([bad, other], **args)
    sample = a[(0, 3, 5)]
    assert sample["index"] == 0 and (sample["epoch"], sample["position"]) == (3, 5)
    assert sample["skipped"].startswith(f"{bad_videos['text']}: not a readable video container")
    assert sample["label"] in {0, 1, 2}  # a replacement from the first manifest (labels of train[:3])
    again = b[(0, 3, 5)]  # another process, another order of calls: the same replacement
    b[(1, 3, 0)]
    assert torch.equal(sample["video"], again["video"]) and sample["skipped"] == again["skipped"]
    assert not torch.equal(sample["video"], a[(0, 4, 5)]["video"])  # another epoch, another draw
    assert a[(2, 3, 5)]["skipped"] == ""


def test_guard_stops_past_the_bad_fraction_and_remembers_bad_videos():
    guard = BadSampleGuard(max_retries=3, max_bad_fraction=0.25, min_reads=8)
    decoded = []

    def load(key, attempt):
        decoded.append(key)
        if key % 2:
            raise BadVideo("odd")
        return key

    for i in (0, 2, 4, 6, 8, 10):
        assert guard.load(i, load, lambda a: None, str) == (i, [])
    assert guard.load(1, load, lambda a: 12, str) == (12, ["1: odd"])
    assert guard.load(1, load, lambda a: 14, str) == (14, ["1: odd"])  # 1 is known bad: not decoded again
    assert decoded.count(1) == 1
    with pytest.raises(TooManyBadVideos, match=r"3 of the 11 videos .* more than max_bad_fraction=0.25(?s:.*)3: odd"):
        guard.load(3, load, lambda a: 16, str)


class RecordingModel(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        return self.linear(batch["video"].mean(dim=(2, 3, 4))).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(datamodule, root, **trainer_args):
    trainer = pl.Trainer(accelerator="cpu", logger=pl.loggers.CSVLogger(root, name="logs"), log_every_n_steps=1,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=root, **trainer_args)
    trainer.fit(RecordingModel(), datamodule=datamodule)
    return trainer


@pytest.mark.slow
def test_training_over_every_bad_kind_completes_and_reports_each(bad_videos, demo_manifests, tmp_path, caplog,
                                                                as_unprivileged):
    good = read_manifest(demo_manifests.train) + read_manifest(demo_manifests.val)
    entries = good + [(path, 0) for path in bad_videos.values()] + good[:1]  # 36 = 9 batches of 4
    manifest = write_manifest(tmp_path / "mixed.csv", entries)
    dm = VideoDataModule(train_manifest=str(manifest), frames_per_clip=4, frame_step=2, crop_size=32, batch_size=4,
                         num_workers=2, max_bad_fraction=0.5)
    with caplog.at_level(logging.WARNING, logger="arjepa_pl.data"):
        trainer = fit(dm, tmp_path, max_epochs=1)
    assert trainer.global_step == 9
    report = "\n".join(r.getMessage() for r in caplog.records if "skipped" in r.getMessage())
    assert "epoch 0: skipped" in report
    for kind, path in bad_videos.items():
        lines = [line for line in report.splitlines() if f"{path}: " in line]
        assert lines and all(re.search(REASONS[kind], line) for line in lines), f"{kind}: {lines}"
    callback = next(c for c in trainer.callbacks if isinstance(c, SkippedVideosReport))
    with open(tmp_path / "logs" / "version_0" / "metrics.csv") as f:
        logged = [float(row["data/skipped"]) for row in csv.DictReader(f) if row.get("data/skipped")]
    assert len(logged) == 9 and logged == sorted(logged)  # cumulative, logged every step
    assert logged[-1] == callback.total >= len(bad_videos)  # each at least once (a replacement may be bad too)
    reported = sum(int(part.split(" unusable")[0].split("skipped ")[-1]) for part in report.split("rank ")[1:])
    assert reported == callback.total


@pytest.mark.slow
def test_mostly_bad_data_stops_the_run_with_examples(bad_videos, demo_manifests, tmp_path):
    good = read_manifest(demo_manifests.train)[:2]
    bad = [(bad_videos[kind], 0) for kind in ("missing", "text", "truncated", "zero_bytes", "audio_only", "directory")]
    manifest = write_manifest(tmp_path / "mostly_bad.csv", good + bad * 2)
    dm = VideoDataModule(train_manifest=str(manifest), frames_per_clip=4, frame_step=2, crop_size=32, batch_size=2,
                         num_workers=2)
    with pytest.raises(TooManyBadVideos, match=r"(?s)(unusable, more than max_bad_fraction=0.1|in a row were unusable).*\.mp4: "):
        fit(dm, tmp_path, max_epochs=1)
