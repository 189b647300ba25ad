"""Clips/s of the full training data pipeline beside raw decord, and worker memory over a long run.

For each set, two DataLoaders read the same clips (same order, same frame indices rule, same worker
count, same batch size):

- raw:      decord VideoReader(path) + get_batch(indices) per clip, default collate of the uint8 frames;
- pipeline: VideoDataModule's training loader: file checks, header probe, decode (at reduced size
            when the source is large), random resized crop + flip + normalise, collate, V-JEPA masks
            (MaskCollator, both default configurations).

ratio = pipeline / raw clips/s (target >= 0.9), and the same ratio of CPU time per clip (all
processes), which other jobs on a shared machine disturb much less than wall-clock rates. Sets: the demo clips (64x64, 32 frames at 8 fps, clips of
16 x 2 cropped to 64, as configs/vjepa2.yaml) and a generated higher-resolution set (640x360,
30 fps, 30 s each, x264 defaults but the preset; clips of 16 x 4 cropped to 224, as the ViT-L recipe).
Each measurement is the best of --rounds, alternating raw and pipeline (the machine may be shared).
Then the pipeline reads --rss-clips demo clips and prints each worker's RSS growth.

    python bench/data_throughput.py [--workers 2] [--clips 480] [--hires-videos 3] [--rss-clips 3000]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import av
import decord
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arjepa_pl.masks import VJEPA_DEFAULT_MASKS, MaskCollator  # noqa: E402
from data_modules import ClipSampler, VideoDataModule, ensure_demo_videos, read_manifest  # noqa: E402
from data_modules.frame_indices import clip_indices  # noqa: E402


def write_hires(path: Path, seconds: int, fps: int = 30, width: int = 640, height: int = 360, seed: int = 0) -> None:
    """Drifting coloured blocks over a moving gradient: content that changes every frame, like real video."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 128, size=(height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8)
    tiles = np.repeat(np.repeat(blocks, 40, 0), 40, 1)
    ys, xs = np.mgrid[0 : 2 * height, 0 : 2 * width]
    gradient = np.stack([(xs * 255 // (2 * width)), (ys * 255 // (2 * height)), ((xs + ys) % 256)], -1) // 2
    gradient = gradient.astype(np.uint8)
    tmp = path.with_suffix(".partial.mp4")
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        for t in range(seconds * fps):
            top, left = (t // 3) % height, (2 * t) % width
            frame = np.roll(tiles, (t // 2, 3 * t), axis=(0, 1))[:height, :width] + gradient[top : top + height, left : left + width]
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            video_frame.pts = t
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.rename(path)


def hires_manifest(folder: Path, count: int, seconds: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"hires_{seconds}s_{i:02d}.mp4"
        if not path.exists():
            start = time.perf_counter()
            write_hires(path, seconds, seed=i)
            print(f"  generated {path.name} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s", flush=True)
    manifest = folder / f"hires_{seconds}s.csv"
    manifest.write_text("".join(f"hires_{seconds}s_{i:02d}.mp4 {i}\n" for i in range(count)))
    return manifest


class RawClips(Dataset):
    """decord get_batch and nothing else, at the frame indices the pipeline's rule gives."""

    def __init__(self, manifest: Path, frames_per_clip: int, frame_step: int, seed: int = 0):
        self.paths = [p for p, _ in read_manifest(manifest)]
        self.frames_per_clip, self.frame_step, self.seed = frames_per_clip, frame_step, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        index, epoch, _ = key
        reader = decord.VideoReader(self.paths[index], num_threads=1, ctx=decord.cpu(0))
        rng = np.random.default_rng([self.seed, epoch, index])
        indices = clip_indices(len(reader), self.frames_per_clip, self.frame_step, rng=rng)[0]
        frames = torch.from_numpy(reader.get_batch(indices.tolist()).asnumpy())
        del reader
        return frames


def repeated(manifest: Path, times: int, out: Path) -> Path:
    """The manifest's entries repeated, so a small set makes enough clips for a measurement."""
    entries = read_manifest(manifest)
    out.write_text("".join(f"{p} {label}\n" for _ in range(times) for p, label in entries))
    return out


class MaskedVideoData(VideoDataModule):
    """The pipeline as V-JEPA runs it, without a trainer: loaders collate with V-JEPA's mask collator
    (what the objective's collate_fn() gives a data module under the trainer)."""

    def __init__(self, patch_size: int, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = patch_size

    def collate(self):
        return MaskCollator(VJEPA_DEFAULT_MASKS, tubelet_size=2, patch_size=self.patch_size, seed=0)


def loaders(manifest: Path, workers: int, batch_size: int, frames: int, step: int, crop: int, patch: int):
    dm = MaskedVideoData(patch, train_manifest=str(manifest), frames_per_clip=frames, frame_step=step, crop_size=crop,
                         batch_size=batch_size, num_workers=workers, report_skipped=False)
    dm.setup("fit")
    raw_set = RawClips(manifest, frames, step)
    sampler = ClipSampler(raw_set, num_replicas=1, rank=0, shuffle=True, seed=0, drop_last=True)
    fork = "fork" if workers else None
    raw = DataLoader(raw_set, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                     collate_fn=default_collate, multiprocessing_context=fork)
    return raw, dm.train_dataloader()


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the DataLoader workers, once joined)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(loader, batch_size: int) -> tuple[float, float]:
    """(clips/s after the first batch, i.e. without worker start-up; CPU ms per clip, all processes)."""
    cpu = cpu_seconds()
    iterator = iter(loader)
    next(iterator)
    start, n = time.perf_counter(), 0
    for _ in iterator:
        n += batch_size
    rate = n / (time.perf_counter() - start)
    return rate, (cpu_seconds() - cpu) * 1e3 / (n + batch_size)


def compare(name: str, manifest: Path, args, frames: int, step: int, crop: int, patch: int) -> None:
    raw, pipeline = loaders(manifest, args.workers, args.batch_size, frames, step, crop, patch)
    rate, cpu = {"raw": 0.0, "pipeline": 0.0}, {"raw": float("inf"), "pipeline": float("inf")}
    for _ in range(args.rounds):  # alternating, best of each: the machine may be shared
        for key, loader in (("raw", raw), ("pipeline", pipeline)):
            r, c = measure(loader, args.batch_size)
            rate[key], cpu[key] = max(rate[key], r), min(cpu[key], c)
    print(f"{name:<28} {len(raw.sampler):>6} {rate['raw']:>10.1f} {rate['pipeline']:>10.1f} "
          f"{rate['pipeline'] / rate['raw']:>6.2f} {cpu['raw']:>10.1f} {cpu['pipeline']:>10.1f} "
          f"{cpu['raw'] / cpu['pipeline']:>6.2f}", flush=True)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def worker_rss(manifest: Path, args) -> None:
    clips = args.rss_clips
    dm = MaskedVideoData(8, train_manifest=str(manifest), frames_per_clip=16, frame_step=2, crop_size=64,
                         batch_size=args.batch_size, num_workers=args.workers, iterations_per_epoch=clips // args.batch_size,
                         report_skipped=False)
    dm.setup("fit")
    loader = DataLoader(dm.train_dataset, batch_size=args.batch_size, sampler=dm.train_dataloader().sampler,
                        num_workers=args.workers, collate_fn=dm.collate(), multiprocessing_context="fork")
    iterator = iter(loader)
    pids = [w.pid for w in iterator._workers]
    samples, n = [], 0
    for i, _ in enumerate(iterator):
        n += args.batch_size
        if i == 10 or n >= clips - args.batch_size or (i > 10 and i % 50 == 0):
            samples.append((n, [rss_mb(pid) for pid in pids]))
    (n0, first), (n1, last) = samples[0], samples[-1]
    print(f"worker RSS over {n1 - n0} demo clips ({args.workers} workers):")
    for w, (a, b) in enumerate(zip(first, last)):
        trend = " ".join(f"{s[1][w]:.0f}" for s in samples[:: max(1, len(samples) // 6)])
        print(f"  worker {w}: {a:.0f} MB after {n0} clips -> {b:.0f} MB after {n1}: {b - a:+.1f} MB  (samples: {trend})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--clips", type=int, default=480, help="clips per measurement (demo set)")
    parser.add_argument("--hires-clips", type=int, default=64, help="clips per measurement (640x360 set)")
    parser.add_argument("--hires-videos", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rss-clips", type=int, default=3000)
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "arjepa_bench_videos"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # the main process only collates; the workers decode

    folder = Path(args.dir)
    demo = ensure_demo_videos(folder / "demo")
    print(f"data throughput: {args.workers} workers, batch {args.batch_size}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at start (other processes share the machine)")
    hires = hires_manifest(folder / "hires", args.hires_videos, args.seconds)
    demo_set = repeated(demo.train, max(1, args.clips // 96), folder / "demo_repeated.csv")
    hires_set = repeated(hires, max(1, args.hires_clips // args.hires_videos), folder / "hires_repeated.csv")
    print(f"{'':<35} {'clips/s':^29} {'CPU ms per clip':^29}")
    print(f"{'set':<28} {'clips':>6} {'raw decord':>10} {'pipeline':>10} {'ratio':>6} {'raw decord':>10} {'pipeline':>10} {'ratio':>6}")
    compare("demo 64x64, 16x2 -> 64", demo_set, args, frames=16, step=2, crop=64, patch=8)
    compare(f"640x360 {args.seconds}s, 16x4 -> 224", hires_set, args, frames=16, step=4, crop=224, patch=16)
    worker_rss(demo.train, args)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
