"""Tests of the data package: demo set, manifests, transforms, sampler, dataset, data module."""

import json
import logging
import multiprocessing as mp
import os
from collections import Counter

import decord
import numpy as np
import pytest
import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from data_modules import (
    ClipSampler,
    TooManyBadVideos,
    DemoManifests,
    VideoClipDataset,
    VideoDataModule,
    default_demo_dir,
    ensure_demo_videos,
    read_manifest,
)
from data_modules import demo_videos, generated
from data_modules.demo_videos import CLASS_NAMES, DIRECTION_VECTORS, DIRECTIONS
from data_modules.transforms import center_crop_box, clip_to_tensor, random_resized_crop_box
from data_modules.frame_indices import clip_indices

TINY = dict(num_train=2, num_val=2, num_frames=8, size=32)  # fastest set for cache tests


def read_index(root):
    return json.loads((root / "index.json").read_text())


def mtimes(root):
    return {p: p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def decode_all(path):
    reader = decord.VideoReader(str(path), num_threads=1, ctx=decord.cpu(0))
    frames = reader.get_batch(list(range(len(reader)))).asnumpy()
    del reader
    return frames


# ----------------------------------------------------------------------------
# demo set: generation and cache


def test_demo_generation_is_deterministic(demo_manifests, tmp_path):
    again = ensure_demo_videos(tmp_path / "again", num_train=12, num_val=12, num_frames=32, size=64)
    first, second = read_index(demo_manifests.root)["files"], read_index(again.root)["files"]
    assert first.keys() == second.keys()
    for relpath in first:
        if relpath.endswith((".mp4", "classes.json")):  # manifests differ: they hold absolute paths
            assert first[relpath]["sha256"] == second[relpath]["sha256"], relpath


def test_demo_layout_and_balanced_labels(demo_manifests):
    assert isinstance(demo_manifests, DemoManifests)
    for manifest in (demo_manifests.train, demo_manifests.val):
        samples = read_manifest(manifest)
        counts = Counter(label for _, label in samples)
        assert sorted(counts) == list(range(12)) and set(counts.values()) == {1}
        for path, label in samples:
            assert os.path.isabs(path) and os.path.isfile(path)
            assert CLASS_NAMES[label] in os.path.basename(path)
        # V-JEPA format: "ABSOLUTE_PATH LABEL", no header.
        first_line = manifest.read_text().splitlines()[0].split(" ")
        assert len(first_line) == 2 and os.path.isabs(first_line[0])
    classes = json.loads((demo_manifests.root / "classes.json").read_text())
    assert classes["classes"] == list(CLASS_NAMES) and len(classes["classes"]) == 12
    assert read_index(demo_manifests.root)["params"]["seed"] == 0


def test_demo_balanced_for_larger_sets(tmp_path):
    demo = ensure_demo_videos(tmp_path, num_train=24, num_val=13, num_frames=4, size=16)
    assert set(Counter(label for _, label in read_manifest(demo.train)).values()) == {2}
    assert sorted(Counter(label for _, label in read_manifest(demo.val)).values()) == [1] * 11 + [2]


def test_demo_cache_reused_when_intact(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="arjepa_pl.data"):
        ensure_demo_videos(tmp_path / "demo", **TINY)
        before = mtimes(tmp_path / "demo")
        ensure_demo_videos(tmp_path / "demo", **TINY)
    assert mtimes(tmp_path / "demo") == before
    assert sum("generating demo videos" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize("damage", ["delete", "corrupt", "truncate", "delete_index"])
def test_demo_regenerated_when_damaged(tmp_path, damage):
    root = ensure_demo_videos(tmp_path / "demo", **TINY).root
    good = read_index(root)
    video = root / "videos" / "train" / next(p.name for p in (root / "videos" / "train").iterdir())
    if damage == "delete":
        video.unlink()
    elif damage == "corrupt":  # same size, one byte changed
        data = bytearray(video.read_bytes())
        data[len(data) // 2] ^= 0xFF
        video.write_bytes(bytes(data))
    elif damage == "truncate":
        video.write_bytes(video.read_bytes()[:100])
    else:
        (root / "index.json").unlink()
    ensure_demo_videos(tmp_path / "demo", **TINY)
    assert read_index(root) == good
    assert video.is_file() and generated.sha256(video) == good["files"][str(video.relative_to(root))]["sha256"]


def test_demo_regenerated_when_parameters_change(tmp_path):
    ensure_demo_videos(tmp_path / "demo", **TINY)
    demo = ensure_demo_videos(tmp_path / "demo", **dict(TINY, seed=1))
    assert read_index(demo.root)["params"]["seed"] == 1


def test_demo_crash_leaves_nothing_trusted(tmp_path, monkeypatch):
    calls = []

    def failing_write(path, frames, fps=demo_videos.FPS):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        original_write(path, frames, fps)

    original_write = demo_videos.write_mp4
    monkeypatch.setattr(demo_videos, "write_mp4", failing_write)
    with pytest.raises(OSError, match="disk full"):
        ensure_demo_videos(tmp_path / "demo", **TINY)
    assert not (tmp_path / "demo").exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []  # temp dir removed
    monkeypatch.setattr(demo_videos, "write_mp4", original_write)
    demo = ensure_demo_videos(tmp_path / "demo", **TINY)
    assert len(read_manifest(demo.train)) == 2


class _CountGenerations(logging.Handler):
    count = 0

    def emit(self, record):
        self.count += "generating demo videos" in record.getMessage()


def _generate_in_child(root, queue):
    counter = _CountGenerations()
    logger = logging.getLogger("arjepa_pl.data")
    logger.addHandler(counter)
    logger.setLevel(logging.INFO)
    demo = ensure_demo_videos(root, **TINY)
    queue.put((str(demo.train), counter.count))


def test_demo_concurrent_processes(tmp_path):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_generate_in_child, args=(tmp_path / "demo", queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    results = [queue.get(timeout=5) for _ in procs]
    assert results[0][0] == results[1][0]
    assert sorted(generated for _, generated in results) == [0, 1]  # the lock made the second one wait and reuse
    before = mtimes(tmp_path / "demo")
    ensure_demo_videos(tmp_path / "demo", **TINY)  # the result is intact: reused as is
    assert mtimes(tmp_path / "demo") == before


def test_demo_refuses_to_overwrite_foreign_directory(tmp_path):
    (tmp_path / "my_thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        ensure_demo_videos(tmp_path, **TINY)
    assert (tmp_path / "my_thesis.tex").read_text() == "precious"


def test_demo_rejects_bad_parameters(tmp_path):
    with pytest.raises(ValueError, match="size"):
        ensure_demo_videos(tmp_path, size=33)
    with pytest.raises(ValueError, match="num_train"):
        ensure_demo_videos(tmp_path, num_train=0)


def test_default_demo_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("ARJEPA_DEMO_DIR", str(tmp_path / "x"))
    assert default_demo_dir() == tmp_path / "x"
    monkeypatch.delenv("ARJEPA_DEMO_DIR")
    assert default_demo_dir().parts[-3:] == (".cache", "arjepa_pl", "demo")


def test_demo_videos_decode_with_decord(demo_manifests):
    path, _ = read_manifest(demo_manifests.train)[0]
    reader = decord.VideoReader(path, num_threads=1, ctx=decord.cpu(0))
    assert len(reader) == 32
    assert reader.get_avg_fps() == pytest.approx(8.0)
    frames = reader.get_batch([0, 5, 31]).asnumpy()
    assert frames.shape == (3, 64, 64, 3) and frames.dtype == np.uint8


def shape_centroid(frame):
    """(x, y) centroid of pixels far from the frame's median (background) colour."""
    background = np.median(frame.reshape(-1, 3), axis=0)
    distance = np.linalg.norm(frame.astype(np.float32) - background, axis=-1)
    ys, xs = np.nonzero(distance > 60)
    assert len(xs) > 20, "shape not visible"
    return np.array([xs.mean(), ys.mean()])


def test_demo_motion_matches_label(demo_manifests):
    # The direction half of the label must be visible in the pixels: the shape's
    # centroid moves that way between the first and the last frame.
    for path, label in read_manifest(demo_manifests.train) + read_manifest(demo_manifests.val):
        frames = decode_all(path)
        moved = shape_centroid(frames[-1]) - shape_centroid(frames[0])
        expected = np.array(DIRECTION_VECTORS[DIRECTIONS[label % 4]], dtype=np.float64)
        along, across = moved @ expected, abs(moved @ expected[::-1])
        assert along > 5 and across < 2, (path, moved)
        for frame in frames:  # the shape stays visible the whole time
            shape_centroid(frame)


# ----------------------------------------------------------------------------
# manifest


def test_read_manifest_resolves_relative_paths_and_skips_blank_lines(tmp_path):
    manifest = tmp_path / "sub" / "m.csv"
    manifest.parent.mkdir()
    manifest.write_text("a.mp4 3\n\n   \n/abs/b.mp4 -1\n  clips/c.mp4\t7  \n")
    assert read_manifest(manifest) == [
        (str(tmp_path / "sub" / "a.mp4"), 3),
        ("/abs/b.mp4", -1),
        (str(tmp_path / "sub" / "clips" / "c.mp4"), 7),
    ]


@pytest.mark.parametrize(
    "text, lineno, message",
    [
        ("a.mp4 1\nb.mp4\n", 2, "expected 2 fields"),
        ("a.mp4 1\n\nmy video.mp4 2\n", 3, "expected 2 fields"),
        ("a.mp4 cat\n", 1, "label must be an integer"),
        ("a.mp4 1.5\n", 1, "label must be an integer"),
    ],
)
def test_read_manifest_errors_name_file_and_line(tmp_path, text, lineno, message):
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    with pytest.raises(ValueError, match=rf"m\.csv:{lineno}: {message}"):
        read_manifest(manifest)


def test_read_manifest_missing_or_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        read_manifest(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("\n\n")
    with pytest.raises(ValueError, match="empty"):
        read_manifest(tmp_path / "empty.csv")


# ----------------------------------------------------------------------------
# transforms


def test_random_resized_crop_box_in_bounds_and_covers_ranges():
    rng = np.random.default_rng(0)
    height, width = 48, 64
    areas, aspects = [], []
    for _ in range(2000):
        top, left, h, w = random_resized_crop_box(rng, height, width, scale=(0.3, 1.0), ratio=(0.75, 1.35))
        assert 0 <= top and 0 <= left and h > 0 and w > 0
        assert top + h <= height and left + w <= width
        areas.append(h * w / (height * width))
        aspects.append(w / h)
    assert min(areas) < 0.33 and max(areas) > 0.9
    assert 0.7 < min(aspects) < 0.8 and 1.3 < max(aspects) < 1.4


def test_random_resized_crop_box_falls_back_to_clamped_centre_crop():
    # A frame 10x wider than tall cannot fit any crop with ratio <= 1.35 and
    # area >= 90 %, so every try fails: centre crop, width clamped to 1.35 * h.
    box = random_resized_crop_box(np.random.default_rng(0), 20, 200, scale=(0.9, 1.0), ratio=(0.75, 1.35))
    assert box == (0, (200 - 27) // 2, 20, 27)


def test_center_crop_box():
    assert center_crop_box(48, 64) == (0, 8, 48, 48)
    assert center_crop_box(64, 48) == (8, 0, 48, 48)


def test_clip_to_tensor_shape_and_normalisation():
    frames = np.full((4, 30, 40, 3), 128, dtype=np.uint8)
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)
    video = clip_to_tensor(frames, (2, 3, 20, 25), 16, hflip=False, mean=mean, std=std)
    assert video.shape == (3, 4, 16, 16) and video.dtype == torch.float32 and video.is_contiguous()
    for c in range(3):
        assert torch.allclose(video[c], torch.full((4, 16, 16), (128 / 255 - mean[c]) / std[c]), atol=1e-5)


def test_clip_to_tensor_crops_the_box_and_flip_is_exact_mirror():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, 40, 50, 3), dtype=np.uint8)
    box = (5, 7, 21, 29)
    plain = clip_to_tensor(frames, box, 24, hflip=False, mean=(0, 0, 0), std=(1, 1, 1))
    flipped = clip_to_tensor(frames, box, 24, hflip=True, mean=(0, 0, 0), std=(1, 1, 1))
    assert torch.equal(flipped, plain.flip(-1))
    # No resize when the box is already out_size: exactly the cropped pixels / 255.
    same = clip_to_tensor(frames, (5, 7, 24, 24), 24, hflip=False, mean=(0, 0, 0), std=(1, 1, 1))
    expected = torch.from_numpy(frames[:, 5:29, 7:31]).permute(3, 0, 1, 2).float() / 255
    assert torch.allclose(same, expected)


# ----------------------------------------------------------------------------
# frame indices


def test_train_frame_indices():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(300):
        (idx,) = clip_indices(num_frames=40, frames_per_clip=8, frame_step=4, rng=rng)
        assert len(idx) == 8 and (np.diff(idx) == 4).all() and idx[0] >= 0 and idx[-1] < 40
        starts.add(int(idx[0]))
    # The clip's window [end - 32, end) ends anywhere in [clip_len, num_frames] = [32, 40].
    assert starts == set(range(9))


def test_short_video_repeats_last_frame():
    idx = clip_indices(num_frames=10, frames_per_clip=8, frame_step=2, rng=np.random.default_rng(0))
    assert idx.tolist() == [[0, 2, 4, 6, 8, 9, 9, 9]]
    assert clip_indices(10, 8, 2).tolist() == [[0, 2, 4, 6, 8, 9, 9, 9]]
    assert clip_indices(32, 4, 4).tolist() == [[8, 12, 16, 20]]


# ----------------------------------------------------------------------------
# sampler


def test_clip_sampler_two_ranks_cover_every_index_once():
    dataset = list(range(10))
    orders = []
    for epoch in range(2):
        seen = []
        for rank in range(2):
            sampler = ClipSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=3, drop_last=False)
            sampler.set_epoch(epoch)
            items = list(sampler)
            assert len(items) == len(sampler) == 5
            assert [position for _, _, position in items] == list(range(5))
            assert {e for _, e, _ in items} == {epoch}
            seen += [index for index, _, _ in items]
        assert sorted(seen) == list(range(10))
        orders.append(seen)
    assert orders[0] != orders[1]


def test_clip_sampler_padding_and_drop_last():
    padded = [i for rank in range(3) for i, _, _ in ClipSampler(range(10), num_replicas=3, rank=rank, drop_last=False)]
    assert len(padded) == 12 and set(padded) == set(range(10))
    dropped = [i for rank in range(3) for i, _, _ in ClipSampler(range(10), num_replicas=3, rank=rank, drop_last=True)]
    assert len(dropped) == 9 and len(set(dropped)) == 9
    unshuffled = ClipSampler(range(5), num_replicas=1, rank=0, shuffle=False)
    assert list(unshuffled) == [(i, 0, i) for i in range(5)]


def test_clip_sampler_is_a_distributed_sampler():
    # Lightning replaces any sampler that is not a DistributedSampler under DDP.
    assert isinstance(ClipSampler(range(4), num_replicas=1, rank=0), torch.utils.data.DistributedSampler)


# ----------------------------------------------------------------------------
# dataset


def make_dataset(manifest, **kwargs):
    args = dict(frames_per_clip=8, frame_step=2, crop_size=32, train=True, seed=0)
    return VideoClipDataset(manifest, **{**args, **kwargs})


def test_dataset_sample_format(demo_manifests):
    dataset = make_dataset(demo_manifests.train)
    assert len(dataset) == 12
    sample = dataset[(3, 2, 7)]
    assert sample["video"].shape == (3, 8, 32, 32) and sample["video"].dtype == torch.float32
    assert (sample["label"], sample["index"], sample["epoch"], sample["position"]) == (3, 3, 2, 7)
    assert dataset[5]["epoch"] == 0 and dataset[5]["position"] == 5
    with pytest.raises(IndexError):
        dataset[12]


def test_dataset_is_deterministic_per_key(demo_manifests):
    dataset = make_dataset(demo_manifests.train)
    torch.manual_seed(0)
    np.random.seed(0)
    a = dataset[(4, 1, 0)]["video"]
    torch.manual_seed(123)  # global RNG state must not matter
    np.random.seed(123)
    b = dataset[(4, 1, 9)]["video"]  # nor the position
    assert torch.equal(a, b)
    assert torch.equal(dataset[4]["video"], dataset[(4, 0, 0)]["video"])
    others = [dataset[(4, epoch, 0)]["video"] for epoch in range(2, 6)]
    assert not any(torch.equal(a, other) for other in others)
    # A different seed changes the augmentation too.
    assert not torch.equal(a, make_dataset(demo_manifests.train, seed=1)[(4, 1, 0)]["video"])


def test_eval_dataset_is_deterministic_centre_clip(demo_manifests):
    dataset = make_dataset(demo_manifests.val, train=False, frames_per_clip=4, frame_step=4, crop_size=64)
    a, b = dataset[(2, 0, 0)]["video"], dataset[(2, 5, 3)]["video"]
    assert torch.equal(a, b)
    # Centre clip, full 64x64 frame (no resize needed): frames 8, 12, 16, 20.
    frames = decode_all(read_manifest(demo_manifests.val)[2][0])[[8, 12, 16, 20]]
    mean, std = torch.tensor(dataset.options.mean).view(3, 1, 1, 1), torch.tensor(dataset.options.std).view(3, 1, 1, 1)
    expected = (torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 255 - mean) / std
    assert torch.allclose(a, expected, atol=1e-5)


def test_dataset_of_only_bad_videos_stops_naming_them(tmp_path):
    # Bad videos are replaced (tests/test_data_bad_files.py); when nothing usable is left the
    # error names the files and why they are unusable.
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    (tmp_path / "m.csv").write_text("bad.mp4 0\nmissing.mp4 1\n")
    with pytest.raises(TooManyBadVideos, match=r"2 of the 2 videos .* max_bad_fraction=0.1(?s:.*)bad\.mp4: not a readable"):
        make_dataset(tmp_path / "m.csv")[0]
    # Allowed any fraction, it stops when max_retries replacements in a row are bad.
    with pytest.raises(TooManyBadVideos, match=r"11 videos in a row(?s:.*)bad\.mp4: not a readable(?s:.*)missing\.mp4: file not found"):
        make_dataset(tmp_path / "m.csv", max_bad_fraction=1.0)[0]


def test_dataset_rejects_bad_arguments(demo_manifests):
    with pytest.raises(ValueError, match="frames_per_clip"):
        make_dataset(demo_manifests.train, frames_per_clip=0)
    with pytest.raises(ValueError, match="crop_scale"):
        make_dataset(demo_manifests.train, crop_scale=(0.5, 0.2))


def test_dataloader_with_workers_and_sampler(demo_manifests):
    dataset = make_dataset(demo_manifests.train)
    sampler = ClipSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
    sampler.set_epoch(3)
    loader = DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=2, multiprocessing_context="fork")
    batches = list(loader)
    assert len(batches) == 3
    assert batches[0]["video"].shape == (4, 3, 8, 32, 32)
    assert sorted(torch.cat([b["index"] for b in batches]).tolist()) == list(range(12))
    assert torch.cat([b["position"] for b in batches]).tolist() == list(range(12))
    assert set(torch.cat([b["epoch"] for b in batches]).tolist()) == {3}
    # Same samples as in the main process: worker count does not matter.
    first = batches[0]
    i = int(first["index"][0])
    assert torch.equal(first["video"][0], dataset[(i, 3, 0)]["video"])


# ----------------------------------------------------------------------------
# data module


def small_datamodule(**kwargs):
    args = dict(frames_per_clip=4, frame_step=2, crop_size=32, batch_size=4, num_workers=0)
    return VideoDataModule(**{**args, **kwargs})


def test_datamodule_with_manifests_and_workers(demo_manifests):
    dm = small_datamodule(
        train_manifest=str(demo_manifests.train), val_manifest=str(demo_manifests.val), num_workers=2
    )
    dm.prepare_data()
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert len(train) == 3 and train[0]["video"].shape == (4, 3, 4, 32, 32)
    val = list(dm.val_dataloader())
    assert sum(len(b["label"]) for b in val) == 12
    assert torch.cat([b["index"] for b in val]).tolist() == list(range(12))  # not shuffled
    assert len(list(dm.test_dataloader())) == len(list(dm.predict_dataloader())) == 3


def test_datamodule_collates_with_the_objectives_collate_fn(demo_manifests):
    dm = small_datamodule(train_manifest=str(demo_manifests.train))
    dm.setup("fit")
    assert "masks" not in next(iter(dm.train_dataloader()))  # no trainer, no objective: default_collate

    class Objective(pl.LightningModule):
        def collate_fn(self):
            return lambda samples: {"n": len(samples)}

    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(Objective())
    dm.trainer = trainer
    assert next(iter(dm.train_dataloader())) == {"n": 4}
    assert dm.val_dataloader() == []  # user train manifest, no val manifest: no validation
    with pytest.raises(ValueError, match="val_manifest"):
        dm.test_dataloader()


def test_datamodule_embedded_demo(tmp_path):
    dm = small_datamodule(demo_dir=str(tmp_path / "demo"), batch_size=8)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_dataset) == 96 and len(dm.val_dataset) == 48
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (8, 3, 4, 32, 32) and batch["label"].shape == (8,)
    assert len(dm.train_dataloader()) == 12 and len(dm.val_dataloader()) == 6


def test_datamodule_rejects_bad_arguments():
    for bad in (dict(frames_per_clip=0), dict(batch_size=0), dict(crop_size=0), dict(num_workers=-1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            VideoDataModule(**bad)


def test_datamodule_builds_from_config(tmp_path):
    # LightningCLI builds the module through jsonargparse from its signature.
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(VideoDataModule, "data")
    cfg = parser.parse_string(f"data:\n  demo_dir: {tmp_path}\n  crop_size: 112\n  crop_scale: [0.5, 1.0]\n")
    dm = parser.instantiate(cfg).data
    assert isinstance(dm, VideoDataModule)
    assert dm.crop_size == 112 and dm.crop_scale == (0.5, 1.0) and dm.demo_dir == str(tmp_path)


def test_datamodule_in_lightning_fit(demo_manifests):
    import lightning.pytorch as pl

    class TinyModel(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 12)
            self.epochs_seen = []

        def training_step(self, batch, batch_idx):
            self.epochs_seen += batch["epoch"].tolist()
            logits = self.linear(batch["video"].mean(dim=(2, 3, 4)))
            return torch.nn.functional.cross_entropy(logits, batch["label"])

        def validation_step(self, batch, batch_idx):
            pass

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = small_datamodule(train_manifest=str(demo_manifests.train), val_manifest=str(demo_manifests.val))
    model = TinyModel()
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    assert isinstance(trainer.train_dataloader.sampler, ClipSampler)  # not replaced by Lightning
    assert model.epochs_seen == [0] * 12 + [1] * 12  # Lightning called set_epoch
