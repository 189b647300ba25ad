"""The moving-shapes benchmark: the pixels show the labelled factors, splits are balanced, independent and
disjoint, nuisance is drawn on top of the same labelled clip, and the data module serves exact batches."""

import hashlib
import itertools
from collections import Counter

import numpy as np
import pytest
import torch

from arjepa_pl.evaluation.tasks import ProbeTask
from data_modules import MovingShapesDataModule, MovingShapesDataset
from data_modules.moving_shapes import (
    FACTOR_NAMES,
    FACTOR_TASKS,
    FACTORS,
    NUM_COMBINATIONS,
    RGB,
    TRAVEL,
    Nuisance,
    clip_factors,
    factors_to_label,
    label_to_factors,
)

PALETTE = np.array([RGB[c] for c in FACTORS["colour"]], np.float32)


def read_factors(frames: np.ndarray) -> dict[str, int]:
    """Every factor measured from the pixels of a clip [T, S, S, 3], knowing nothing of its labels:
    the object's pixels are those near a palette colour; its centroid per frame gives direction, speed
    and location; the filled share of its bounding box and the width of its bottom row give its shape."""
    T, S = frames.shape[:2]
    distance = np.linalg.norm(frames[..., None, :] - PALETTE, axis=-1)  # [T, S, S, colours]
    on_object = distance.min(-1) < 0.2
    colour = int(np.bincount(distance.argmin(-1)[on_object], minlength=len(PALETTE)).argmax())
    centroids = np.array([np.argwhere(on_object[t]).mean(0)[::-1] for t in range(T)])  # (x, y) per frame
    dx, dy = centroids[-1] - centroids[0]
    direction = (0 if dx > 0 else 1) if abs(dx) > abs(dy) else (2 if dy > 0 else 3)
    speed = int(max(abs(dx), abs(dy)) / S > (TRAVEL["slow"] + TRAVEL["fast"]) / 2)
    mx, my = centroids.mean(0)
    location = int(my > S / 2) * 2 + int(mx > S / 2)
    ys, xs = np.nonzero(on_object[0])
    box = on_object[0, ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    fill, bottom = box.mean(), box[-1].mean()
    shape = 1 if fill > 0.9 else 0 if fill > 0.65 else 2 if bottom > 0.7 else 3  # square, circle, triangle, plus
    return {"shape": shape, "colour": colour, "direction": direction, "speed": speed, "location": location}


@pytest.mark.parametrize("kind", ["none", "texture"])
def test_the_pixels_show_every_labelled_factor(kind):
    dataset = MovingShapesDataset("train", NUM_COMBINATIONS, frames_per_clip=16, size=64, nuisance=Nuisance(kind, 1.0))
    for index in np.random.default_rng(0).choice(NUM_COMBINATIONS, 64, replace=False):
        frames, factors = dataset.frames(int(index))
        assert read_factors(frames) == factors, (kind, index)


def test_dynamic_nuisance_is_drawn_over_the_same_labelled_clip():
    """The object's size and path are drawn before the nuisance, so a dynamic clip is the clean clip plus
    distractors, flicker and fresh noise in every frame: detail that no earlier frame predicts."""
    clean = MovingShapesDataset("val", 8, nuisance=Nuisance("none"))
    noisy = MovingShapesDataset("val", 8, nuisance=Nuisance("dynamic", 1.0))
    for index in range(8):
        (a, factors), (b, same) = clean.frames(index), noisy.frames(index)
        assert factors == same
        residual = (b - a)[np.abs(a - 0.5).sum(-1) > 0.3]  # on the object (some pixels under clipping)
        assert 0.1 < residual.std() < 0.3
        frame_change = np.abs(np.diff(b - a, axis=0)).mean()
        assert frame_change > 0.1  # the nuisance changes from frame to frame


def test_labels_pack_the_factors_and_probe_tasks_read_them_back():
    labels = torch.arange(NUM_COMBINATIONS)
    for task in FACTOR_TASKS:
        values = ProbeTask(**task).targets(labels)
        expected = torch.tensor([label_to_factors(int(label))[task["name"]] for label in labels])
        assert torch.equal(values, expected), task
    for index in range(NUM_COMBINATIONS):
        assert label_to_factors(factors_to_label(clip_factors(index))) == clip_factors(index)


def test_label_values_are_the_training_splits_labels_for_the_probe_task_check():
    # What the CLI's pre-flight check of probe tasks reads (arjepa_pl.validation.check_probe_tasks).
    small = MovingShapesDataModule(train_clips=32).label_values()
    assert small == sorted(MovingShapesDataset("train", 32, 4, 32)[i]["label"] for i in range(32))
    assert MovingShapesDataModule(train_clips=5000).label_values() == list(range(NUM_COMBINATIONS))


def test_a_split_of_512_clips_holds_every_combination_once_so_no_factor_predicts_another():
    combos = [tuple(clip_factors(i).values()) for i in range(3 * NUM_COMBINATIONS, 4 * NUM_COMBINATIONS)]
    assert len(set(combos)) == NUM_COMBINATIONS
    for a, b in itertools.combinations(range(len(FACTOR_NAMES)), 2):  # every pair: a uniform contingency table
        table = Counter((c[a], c[b]) for c in combos)
        cells = len(FACTORS[FACTOR_NAMES[a]]) * len(FACTORS[FACTOR_NAMES[b]])
        assert len(table) == cells and len(set(table.values())) == 1


@pytest.mark.parametrize("size", [4, 100, 4096])
def test_every_factor_is_balanced_in_any_split_of_a_multiple_of_4_clips(size):
    for name, values in FACTORS.items():
        counts = Counter(clip_factors(i)[name] for i in range(size))
        assert counts == {v: size // len(values) for v in range(len(values))}, (name, counts)


def test_splits_share_no_clip():
    digests = {}
    for split in ("train", "val", "test"):
        dataset = MovingShapesDataset(split, 64, frames_per_clip=4, size=32, nuisance=Nuisance("texture"))
        for index in range(len(dataset)):
            digest = hashlib.sha1(dataset.frames(index)[0].tobytes()).hexdigest()
            assert digest not in digests, (split, index, digests.get(digest))
            digests[digest] = (split, index)


def test_data_module_batches_are_the_same_whatever_the_workers_and_jepa_collates_them():
    from arjepa_pl.masks import MaskCollator

    def first_batch(workers):
        dm = MovingShapesDataModule(train_clips=16, val_clips=8, test_clips=4, frames_per_clip=4, crop_size=32,
                                    batch_size=4, num_workers=workers, nuisance="dynamic")
        # What ClipDataModule.collate() returns under a JEPA objective (its collate_fn() hook).
        collator = MaskCollator([{"num_blocks": 2, "spatial_scale": (0.3, 0.3)}], tubelet_size=2, patch_size=8)
        dm.collate = lambda: collator
        dm.setup("fit")
        return next(iter(dm.train_dataloader())), dm

    a, dm = first_batch(0)
    b, _ = first_batch(2)
    assert a["video"].shape == (4, 3, 4, 32, 32) and "masks" in a
    for key in ("video", "label", "index", *FACTOR_NAMES):
        assert torch.equal(a[key], b[key]), key
    for name in FACTOR_NAMES:  # the label packs the per-factor labels
        task = next(t for t in FACTOR_TASKS if t["name"] == name)
        assert torch.equal(ProbeTask(**task).targets(a["label"]), a[name])
    assert len(dm.val_dataloader().dataset) == 8 and len(dm.test_dataloader().dataset) == 4


@pytest.mark.parametrize("kwargs, message", [
    ({"nuisance": "noise"}, "nuisance must be one of"),
    ({"nuisance_strength": 1.5}, "nuisance_strength must lie in [0, 1]"),
    ({"val_clips": 0}, "val_clips must be an integer >= 1"),
    ({"crop_size": 16}, "crop_size must be >= 32 px"),
])
def test_bad_arguments_name_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        MovingShapesDataModule(**kwargs)
