"""Tar shards in the WebDataset layout, and the command that packs a manifest into them.

    python -m data_modules.shards pack MANIFEST OUT [--samples-per-shard 64] [--max-shard-mb 1000]
                                                    [--seed 0 | --no-shuffle] [--check]

OUT (a folder, or any fsspec URL such as s3://bucket/k400) receives shard-000000.tar, ... in which
every sample is three members sharing a key, the sample's 9-digit index in the shard set:

    000000042.mp4    the video file's bytes, untouched (the extension is the source's)
    000000042.cls    the label, as text
    000000042.json   {"path": the source path, "label": ...}: names the video in reports

and shards.json, the shard list with sample counts in wids' shard-index format. The streaming
data module reads the counts to split every epoch exactly across ranks and workers; any
WebDataset reader reads the shards themselves.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

import fsspec
import numpy as np
import webdataset as wds

from .decoding import BadVideo, check_file, open_reader
from .manifest import read_manifest

INDEX_NAME = "shards.json"
INDEX_KIND = "wids-shard-index-v1"
META_SUFFIXES = ("cls", "json")


@dataclass(frozen=True)
class ShardSet:
    """A set of shards: where its index is, the shards' URLs and how many samples each holds."""

    url: str
    shard_urls: tuple[str, ...]
    sizes: tuple[int, ...]

    @property
    def num_samples(self) -> int:
        return sum(self.sizes)

    @property
    def offsets(self) -> np.ndarray:
        """Index in the shard set of each shard's first sample."""
        return np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)


def index_url(url: str) -> str:
    """The shards.json of a shard set given as its folder or as the index itself."""
    return url if url.endswith(".json") else url.rstrip("/") + "/" + INDEX_NAME


def read_shard_set(url: str) -> ShardSet:
    """Read a shard set's index (local path or fsspec URL); relative shard URLs are resolved against it."""
    url = index_url(str(url))
    try:
        with fsspec.open(url, "rt", encoding="utf-8") as f:
            index = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"shard index not found: {url} "
                                "(make one with `python -m data_modules.shards pack`)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{url}: not a valid JSON shard index: {e}") from None
    shards = index.get("shardlist") if isinstance(index, dict) else None
    if index.get("__kind__") != INDEX_KIND or not isinstance(shards, list) or not shards:
        raise ValueError(f"{url}: expected a non-empty '{INDEX_KIND}' shard index with a 'shardlist'")
    base = url.rsplit("/", 1)[0]
    urls, sizes = [], []
    for i, shard in enumerate(shards):
        if (not isinstance(shard, dict) or not isinstance(shard.get("url"), str)
                or not isinstance(shard.get("nsamples"), int) or shard["nsamples"] < 0):
            raise ValueError(f"{url}: shardlist[{i}] must be {{'url': str, 'nsamples': int >= 0}}, got {shard!r}")
        shard_url = shard["url"]
        urls.append(shard_url if "://" in shard_url or shard_url.startswith("/") else f"{base}/{shard_url}")
        sizes.append(shard["nsamples"])
    return ShardSet(url, tuple(urls), tuple(sizes))


def read_shard(url: str, wanted: Callable[[str], bool] | None = None) -> tuple[dict[str, dict], str | None]:
    """({key: {suffix: bytes}}, error) for the wanted keys of one shard, read sequentially.

    Members of unwanted samples are skipped without being kept. An unreadable or truncated
    shard gives what could be read before the problem and the error, instead of raising: the
    samples it lost are then replaced like bad videos.
    """
    select = None if wanted is None else (lambda fname: wanted(wds.tariterators.base_plus_ext(fname)[0] or ""))
    samples: dict[str, dict] = {}
    try:
        with fsspec.open(url, "rb") as stream:
            files = wds.tariterators.tar_file_expander([{"url": url, "stream": stream}], select_files=select)
            for sample in wds.tariterators.group_by_keys(files):
                samples[sample["__key__"]] = sample
    except (OSError, EOFError, tarfile.TarError, ValueError) as e:
        # webdataset appends " @ <stream>" and the stream and URL to the error's args: keep the reason.
        reason = str(e.args[0] if e.args else e).split(" @ ")[0] if not isinstance(e, OSError) else str(e)
        return samples, f"{type(e).__name__}: {reason}"[:300]
    return samples, None


def sample_video(sample: dict) -> tuple[bytes, int, str]:
    """(video bytes, label, name) of a sample read from a shard."""
    videos = [k for k in sample if not k.startswith("__") and k not in META_SUFFIXES]
    if len(videos) != 1:
        raise BadVideo(f"expected one video member besides .cls/.json, found {videos}")
    try:
        label = int(sample["cls"])
        name = json.loads(sample["json"]).get("path", sample["__key__"]) if "json" in sample else sample["__key__"]
    except (KeyError, ValueError) as e:
        raise BadVideo(f"malformed sample metadata: {e}") from None
    return sample[videos[0]], label, str(name)


# ----------------------------------------------------------------------------
# packing


def pack(
    manifest: str,
    out: str,
    samples_per_shard: int = 64,
    max_shard_mb: float = 1000.0,
    seed: int | None = 0,
    check: bool = False,
    log: Callable[[str], None] = print,
) -> ShardSet:
    """Pack a manifest's videos into tar shards plus shards.json under `out`; returns the shard set.

    Entries are shuffled with `seed` (None keeps manifest order) so each shard mixes classes:
    streaming shuffles shards and samples within a shard, not across the whole set. Files that
    cannot be read (missing, empty, a directory, unreadable) are left out and reported; with
    check=True so are files that decord cannot open or that have fewer than 2 frames.
    """
    if samples_per_shard < 1 or max_shard_mb <= 0:
        raise ValueError("samples_per_shard must be >= 1 and max_shard_mb > 0")
    entries = read_manifest(manifest)
    order = np.arange(len(entries)) if seed is None else np.random.default_rng(seed).permutation(len(entries))
    fs, root = fsspec.core.url_to_fs(out)
    fs.makedirs(root, exist_ok=True)
    shardlist: list[dict] = []
    skipped: list[str] = []
    writer, count, size, written = None, 0, 0, 0

    def close() -> None:
        if writer is not None:
            writer.close()
            writer.stream.close()  # TarWriter leaves a stream it did not open to us
            shardlist[-1].update(nsamples=count, filesize=fs.size(f"{root}/{shardlist[-1]['url']}"))

    for i in order:
        path, label = entries[i]
        try:
            check_file(path)
            if check:
                num_frames = len(open_reader(path)[0])
                if num_frames < 2:
                    raise BadVideo(f"{num_frames} frame: a still image, not a video")
            with open(path, "rb") as f:
                data = f.read()
        except (BadVideo, OSError) as e:
            skipped.append(f"{path}: {e}")
            continue
        if writer is None or count >= samples_per_shard or (count and size + len(data) > max_shard_mb * 1e6):
            close()
            name = f"shard-{len(shardlist):06d}.tar"
            shardlist.append({"url": name})
            # mtime 0: the same manifest and seed give byte-identical shards.
            writer, count, size = wds.TarWriter(fs.open(f"{root}/{name}", "wb"), encoder=False, mtime=0), 0, 0
        key = f"{written:09d}"  # the sample's index in the shard set
        suffix = PurePosixPath(path).suffix.lstrip(".").lower() or "mp4"
        writer.write({"__key__": key, suffix: data, "cls": str(label).encode(),
                      "json": json.dumps({"path": path, "label": label}).encode()})
        count, size, written = count + 1, size + len(data), written + 1
    close()
    if not shardlist:
        raise ValueError(f"{manifest}: no readable video to pack ({len(skipped)} skipped: {skipped[:3]})")
    index = {"__kind__": INDEX_KIND, "wids_version": 1, "name": os.path.basename(str(manifest)), "shardlist": shardlist}
    with fs.open(f"{root}/{INDEX_NAME}", "w") as f:
        json.dump(index, f, indent=1)
    total = sum(s["nsamples"] for s in shardlist)
    log(f"packed {total} videos from {manifest} into {len(shardlist)} shards in {out}")
    if skipped:
        log(f"left out {len(skipped)} unreadable entries:\n  " + "\n  ".join(skipped))
    return read_shard_set(f"{out.rstrip('/')}/{INDEX_NAME}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_modules.shards", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("pack", help="pack a manifest's videos into WebDataset tar shards + shards.json")
    p.add_argument("manifest", help="V-JEPA manifest: one 'VIDEO_PATH LABEL' per line")
    p.add_argument("out", help="output folder or fsspec URL (created if needed)")
    p.add_argument("--samples-per-shard", type=int, default=64)
    p.add_argument("--max-shard-mb", type=float, default=1000.0, help="start a new shard before one grows past this")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed of the packing order")
    p.add_argument("--no-shuffle", action="store_true", help="keep the manifest's order")
    p.add_argument("--check", action="store_true", help="also leave out files decord cannot open (slower)")
    args = parser.parse_args(argv)
    try:
        pack(args.manifest, args.out, args.samples_per_shard, args.max_shard_mb,
             None if args.no_shuffle else args.seed, args.check)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
