"""Single images for image objectives (I-JEPA): image files, or one frame sampled from each video.

A manifest line may name an image (.jpg, .png, ...: decoded with PyAV, no extra dependency) or a
video (decord, one frame: random for training, the middle one for evaluation), so the embedded demo
videos give an image data set with no download. Everything else — manifests, crops, flips,
normalisation, seeding, the rank-aware ClipSampler, the objective's collate hook — is the video
pipeline's, with clips of one frame.

An image folder (ImageNet layout: ROOT/CLASS/IMAGE) is listed once into a manifest:

    python -m data_modules.frames ROOT OUT.csv

rather than scanned by every rank at every start (slow on network file systems at ImageNet size).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import av
import numpy as np

from .clip import augment_clips
from .datamodules import VideoDataModule
from .datasets import VideoClipDataset
from .decoding import BadVideo

log = logging.getLogger("arjepa_pl.data")

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff"})


def is_image(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def read_image(path: str | os.PathLike) -> np.ndarray:
    """uint8 RGB [H, W, 3] of an image file; errors name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with av.open(str(path)) as container:
            frame = next(container.decode(video=0))
            return frame.to_ndarray(format="rgb24")
    except (av.FFmpegError, StopIteration, ValueError) as e:
        raise RuntimeError(f"could not decode image {path}: {e!r}") from e


class FrameDataset(VideoClipDataset):
    """One image per manifest entry: {"image": [3, crop, crop], "label", "index", "epoch", "position",
    "skipped"}. Entries that are videos give one frame; randomness (frame, crop, flip) comes from
    (seed, epoch, index) exactly as for clips, and unreadable images are skipped and replaced like
    unreadable videos.
    """

    def __init__(self, manifest: str | os.PathLike, train: bool, seed: int = 0, max_retries: int = 10,
                 max_bad_fraction: float = 0.1, **clip_options) -> None:
        if Path(manifest).is_dir():
            raise ValueError(f"{manifest} is a folder, not a manifest: list it once with "
                             f"`python -m data_modules.frames {manifest} {Path(manifest).name}.csv` "
                             "and pass that file")
        clip_options.update(frames_per_clip=1, frame_step=1)  # a "clip" here is one frame
        super().__init__(manifest, train, seed, max_retries, max_bad_fraction, **clip_options)

    def __getitem__(self, key) -> dict:
        sample = super().__getitem__(key)
        sample["image"] = sample.pop("video")[:, 0]  # [3, 1, S, S] -> [3, S, S]
        return sample

    def load(self, path: str, rng: np.random.Generator):
        """An image file through the clip augmentation as a 1-frame clip; a video through the clip decoder."""
        if not is_image(path):
            return super().load(path, rng)
        try:
            frames = read_image(path)[None, None]  # [clips=1, T=1, H, W, 3]
        except (FileNotFoundError, RuntimeError) as e:
            raise BadVideo(str(e)) from e
        return augment_clips(frames, self.options, rng, self.train)


class FrameDataModule(VideoDataModule):
    """Images from manifests of image files and/or videos (one frame each); with no train_manifest,
    frames of the embedded demo videos. Batches: {"image": [B, 3, S, S], "label", "index", ...}.

    Args:
        train_manifest: Training manifest ('PATH LABEL' lines; PATH an image or a video); None uses the demo set.
        val_manifest: Validation manifest; None means the demo val set when training on the demo, else no validation.
        demo_dir: Where the demo set is generated and cached; None uses $ARJEPA_DEMO_DIR or ~/.cache/arjepa_pl/demo.
        crop_size: Side in pixels of the square crop fed to the model.
        batch_size: Images per batch on each device.
        **kwargs: The augmentation, bad-file and loader options of data_modules.ClipDataModule
            (a "clip" here is one image).
    """

    dataset_class = FrameDataset

    def __init__(
        self,
        train_manifest: str | None = None,
        val_manifest: str | None = None,
        demo_dir: str | None = None,
        crop_size: int = 224,
        batch_size: int = 32,
        **kwargs,
    ) -> None:
        super().__init__(train_manifest=train_manifest, val_manifest=val_manifest, demo_dir=demo_dir,
                         crop_size=crop_size, batch_size=batch_size, frames_per_clip=1, frame_step=1, **kwargs)

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        assert self.train_dataset is not None  # built by VideoDataModule.setup
        per_rank = len(self.train_dataset) // self.world_size
        if self.drop_last and per_rank < self.batch_size:
            # Otherwise every epoch is empty and fit ends at step 0 without a word.
            raise ValueError(f"{per_rank} training images per device, fewer than batch_size {self.batch_size} "
                             "with drop_last: no batch. Lower batch_size or set drop_last: false")


def list_image_folder(root: str | os.PathLike) -> list[tuple[str, int]]:
    """[(absolute image path, label)] of a folder, sorted by path.

    ImageNet layout: with class sub-folders, label = index of the sorted sub-folder, and images
    anywhere below it belong to it; with none, every image directly in `root` has label 0.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    classes = sorted(d for d in root.iterdir() if d.is_dir())
    if classes:
        found = [(p, label) for label, d in enumerate(classes) for p in d.rglob("*") if p.is_file() and is_image(p)]
    else:
        found = [(p, 0) for p in root.iterdir() if p.is_file() and is_image(p)]
    if not found:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {root}")
    return sorted((str(p), label) for p, label in found)


def write_image_folder_manifest(root: str | os.PathLike, out: str | os.PathLike) -> int:
    """Write the manifest of an image folder ('PATH LABEL' lines, absolute paths); returns the count."""
    samples = list_image_folder(root)
    spaced = [p for p, _ in samples if any(c.isspace() for c in p)]
    if spaced:
        raise ValueError(f"{len(spaced)} image paths contain whitespace, which the manifest format cannot hold, "
                         f"e.g. {spaced[0]!r}")
    Path(out).write_text("".join(f"{p} {label}\n" for p, label in samples), encoding="utf-8")
    return len(samples)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="List an image folder (ROOT/CLASS/IMAGE) as a manifest.")
    parser.add_argument("root", help="image folder; class sub-folders give the labels")
    parser.add_argument("out", help="manifest file to write")
    args = parser.parse_args(argv)
    n = write_image_folder_manifest(args.root, args.out)
    print(f"wrote {n} images to {args.out}")


if __name__ == "__main__":
    main()
