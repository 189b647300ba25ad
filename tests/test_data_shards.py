"""Tar shards: the pack command, the shard index, and streaming them exactly once per epoch
across ranks and workers, with mixing, broken shards and fsspec URLs."""

import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from data_modules import ResumableDataLoader, read_manifest
from data_modules import shards, streaming
from data_modules.shards import pack, read_shard, read_shard_set
from data_modules.streaming import ShardClipStream, StreamingVideoDataModule, epoch_draws, locate

REPO = Path(__file__).resolve().parents[1]
CLIP = dict(frames_per_clip=2, frame_step=4, crop_size=16)


@pytest.fixture(scope="module")
def packed(demo_manifests, tmp_path_factory):
    """The 24 demo clips (train + val) packed 5 per shard: shard sizes 5, 5, 5, 5, 4."""
    root = tmp_path_factory.mktemp("shards")
    entries = read_manifest(demo_manifests.train) + read_manifest(demo_manifests.val)
    manifest = root / "all.csv"
    manifest.write_text("".join(f"{p} {label}\n" for p, label in entries))
    pack(str(manifest), str(root / "set"), samples_per_shard=5, log=lambda msg: None)
    return root / "set", entries


def test_pack_command_writes_webdataset_shards_and_reports_left_out_files(demo_manifests, tmp_path):
    entries = read_manifest(demo_manifests.train)
    (tmp_path / "a_directory.mp4").mkdir()
    lines = [f"{p} {label}" for p, label in entries] + [f"{tmp_path}/missing.mp4 3", f"{tmp_path}/a_directory.mp4 4"]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "data_modules.shards", "pack", str(tmp_path / "m.csv"), str(out),
                             "--samples-per-shard", "5"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "packed 12 videos" in result.stdout and "into 3 shards" in result.stdout
    assert "missing.mp4: file not found" in result.stdout and "a_directory.mp4: is a directory" in result.stdout
    index = json.loads((out / "shards.json").read_text())
    assert index["__kind__"] == "wids-shard-index-v1"
    assert [s["nsamples"] for s in index["shardlist"]] == [5, 5, 2]
    assert all(s["filesize"] == (out / s["url"]).stat().st_size for s in index["shardlist"])
    # Every sample: KEY.mp4 (the file's bytes, untouched), KEY.cls, KEY.json; keys number the set.
    by_path = dict(entries)
    keys = []
    for shard in sorted(out.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for key in sorted({name.split(".")[0] for name in members}):
            meta = json.loads(members[f"{key}.json"])
            assert members[f"{key}.mp4"] == Path(meta["path"]).read_bytes()
            assert int(members[f"{key}.cls"]) == meta["label"] == by_path[meta["path"]]
            keys.append(key)
    assert keys == [f"{i:09d}" for i in range(12)]
    # Packing is reproducible, and shuffled (shards mix classes) unless told otherwise.
    again = tmp_path / "again"
    pack(str(tmp_path / "m.csv"), str(again), samples_per_shard=5, log=lambda msg: None)
    assert all((out / n).read_bytes() == (again / n).read_bytes() for n in ("shard-000000.tar", "shard-000002.tar"))
    first_shard = read_shard(str(out / "shard-000000.tar"))[0]
    assert [json.loads(s["json"])["path"] for s in first_shard.values()] != [p for p, _ in entries[:5]]


def test_pack_errors(tmp_path, capsys):
    (tmp_path / "m.csv").write_text(f"{tmp_path}/missing.mp4 0\n")
    assert shards.main(["pack", str(tmp_path / "m.csv"), str(tmp_path / "o")]) == 2
    assert "error: " in (err := capsys.readouterr().err) and "no readable video to pack" in err
    assert shards.main(["pack", str(tmp_path / "nope.csv"), str(tmp_path / "o")]) == 2
    assert "manifest not found" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="shard index not found"):
        read_shard_set(str(tmp_path / "nowhere"))
    (tmp_path / "bad.json").write_text('{"shardlist": []}')
    with pytest.raises(ValueError, match="wids-shard-index-v1"):
        read_shard_set(str(tmp_path / "bad.json"))


def test_locate_visits_every_sample_once_per_cycle():
    from data_modules.shards import ShardSet

    shard_set = ShardSet("x", tuple(f"s{i}" for i in range(5)), (3, 0, 4, 1, 2))  # an empty shard too
    offsets = shard_set.offsets
    for shuffle in (False, True):
        shards, members = locate(shard_set, np.arange(20), seed=0, epoch=2, set_id=0, shuffle=shuffle)
        flat = offsets[shards] + members
        assert sorted(flat[:10]) == sorted(flat[10:]) == list(range(10))  # two cycles, each a permutation
        assert (members < np.array(shard_set.sizes)[shards]).all()
        if shuffle:
            assert flat[:10].tolist() != flat[10:].tolist()  # a new order each cycle
            # A shard's samples are contiguous in the sequence (one shard at a time per worker).
            assert len(np.flatnonzero(np.diff(shards[:10]))) == 3
        else:
            assert flat[:10].tolist() == list(range(10))


def test_epoch_draws_mix_by_weight_or_visit_each_sample_once():
    sizes = [100, 300, 600]
    sets, positions = epoch_draws(sizes, [1, 1, 2], 40000, seed=0, epoch=0, shuffle=True)
    assert np.allclose(np.bincount(sets) / 40000, [0.25, 0.25, 0.5], atol=0.01)
    for s in range(3):  # each set's draws walk its sequence in order, cycling when exhausted
        assert positions[sets == s].tolist() == list(range((sets == s).sum()))
    sets, positions = epoch_draws(sizes, None, 1000, seed=0, epoch=0, shuffle=True)  # no weights: once each
    assert np.bincount(sets).tolist() == sizes and sets[:100].tolist() != [0] * 100
    assert epoch_draws(sizes, None, 1000, seed=0, epoch=0, shuffle=False)[0].tolist() == [0] * 100 + [1] * 300 + [2] * 600


def stream_epoch(shard_sets, world_size, num_workers, epochs=2, **kwargs):
    """[epoch][rank] -> list of batches, each batch a list of (set index, position) pairs."""
    out = [[None] * world_size for _ in range(epochs)]
    for rank in range(world_size):
        ds = ShardClipStream(shard_sets, train=True, world_size=world_size, rank=rank, num_workers=num_workers,
                             **{**CLIP, **kwargs})
        loader = ResumableDataLoader(ds, batch_size=None, num_workers=num_workers, collate_fn=default_collate,
                                     multiprocessing_context="fork" if num_workers else None)
        for epoch in range(epochs):
            batches = list(loader)
            assert len(batches) == len(loader) == len(ds)
            assert all(b["epoch"].tolist() == [epoch] * len(b["epoch"]) for b in batches)
            out[epoch][rank] = [list(zip(b["index"].tolist(), b["position"].tolist())) for b in batches]
    return out


def test_two_ranks_two_workers_see_every_sample_exactly_once(packed):
    shard_set = read_shard_set(str(packed[0]))
    epochs = stream_epoch([shard_set], world_size=2, num_workers=2, batch_size=3)
    for per_rank in epochs:
        assert [len(batches) for batches in per_rank] == [4, 4]  # 24 samples / 2 ranks / 3 per batch
        indices = [i for batches in per_rank for batch in batches for i, _ in batch]
        assert sorted(indices) == list(range(24))
        for batches in per_rank:  # positions number each rank's sequence
            assert sorted(p for batch in batches for _, p in batch) == list(range(12))
    assert epochs[0] != epochs[1]  # reshuffled every epoch


def test_uneven_split_gives_every_rank_the_same_batch_count(packed):
    shard_set = read_shard_set(str(packed[0]))
    for drop_last, expected in ((True, [2, 2, 2]), (False, [3, 3, 3])):  # 24 // 3 ranks = 8 each: 2 or 3 batches of 3
        per_rank = stream_epoch([shard_set], world_size=3, num_workers=2, epochs=1, batch_size=3, drop_last=drop_last)[0]
        assert [len(b) for b in per_rank] == expected
        indices = [i for batches in per_rank for batch in batches for i, _ in batch]
        assert len(indices) == len(set(indices))  # never a duplicate
    # Evaluation pads by wrapping instead: 24 over 5 ranks = 5 each, every sample at least once.
    seen = Counter()
    for rank in range(5):
        ds = ShardClipStream([shard_set], train=False, batch_size=2, world_size=5, rank=rank, drop_last=False, **CLIP)
        batches = list(DataLoader(ds, batch_size=None, collate_fn=default_collate))
        assert len(batches) == 3
        seen.update(i for b in batches for i in b["index"].tolist())
    assert set(seen) == set(range(24)) and sum(seen.values()) == 25


def test_mixed_shard_sets_follow_their_weights(packed, tmp_path, monkeypatch):
    # Decoding is not what is tested here: stand in a cheap clip so thousands of draws stay fast.
    monkeypatch.setattr(streaming, "load_clip", lambda data, options, rng, train: torch.zeros(1))
    small = read_shard_set(str(packed[0]))
    entries = packed[1][:4]
    (tmp_path / "four.csv").write_text("".join(f"{p} {label}\n" for p, label in entries))
    tiny = pack(str(tmp_path / "four.csv"), str(tmp_path / "four"), samples_per_shard=2, log=lambda msg: None)
    per_rank = stream_epoch([small, tiny], world_size=2, num_workers=2, epochs=1, batch_size=10, weights=[1.0, 3.0],
                            iterations_per_epoch=30)[0]
    indices = np.array([i for batches in per_rank for batch in batches for i, _ in batch])
    assert len(indices) == 600 and [len(b) for b in per_rank] == [30, 30]
    from_tiny = indices >= 24  # the second set's samples follow the first's in "index"
    assert abs(from_tiny.mean() - 0.75) < 0.05
    assert np.allclose(np.bincount(indices[from_tiny] - 24) / from_tiny.sum(), 0.25, atol=0.06)


def test_broken_shard_samples_are_replaced_and_reported(packed, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in Path(packed[0]).iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    data = (broken / "shard-000001.tar").read_bytes()
    (broken / "shard-000001.tar").write_bytes(data[: len(data) // 3])  # truncated mid-member
    (broken / "shard-000003.tar").unlink()  # lost
    ds = ShardClipStream([read_shard_set(f"file://{broken}")], train=True, batch_size=4, max_bad_fraction=0.5, **CLIP)
    batches = list(DataLoader(ds, batch_size=None, collate_fn=default_collate))
    assert len(batches) == 6 and all(b["video"].shape == (4, 3, 2, 16, 16) for b in batches)
    skipped = [line for b in batches for text in b["skipped"] for line in text.splitlines() if line]
    assert any("shard-000003.tar#" in s and "FileNotFoundError" in s for s in skipped)
    assert any("shard-000001.tar#" in s and "missing from its shard" in s for s in skipped)
    assert len(skipped) >= 5  # at least shard 3's five samples


def test_bad_video_inside_a_shard_is_reported_by_its_source_path(demo_manifests, tmp_path):
    (tmp_path / "text.mp4").write_text("not a video\n")
    entries = read_manifest(demo_manifests.val)[:5] + [(str(tmp_path / "text.mp4"), 7)]
    (tmp_path / "m.csv").write_text("".join(f"{p} {label}\n" for p, label in entries))
    ds = ShardClipStream([pack(str(tmp_path / "m.csv"), str(tmp_path / "s"), log=lambda msg: None)], train=False,
                         batch_size=6, max_bad_fraction=0.5, **CLIP)
    (batch,) = DataLoader(ds, batch_size=None, collate_fn=default_collate)
    assert sorted(batch["index"].tolist()) == list(range(6)) and batch["video"].shape[0] == 6
    assert [s for s in batch["skipped"] if s] == [f"{tmp_path / 'text.mp4'}: not a readable video container: "
                                                  "Invalid data found when processing input"]


def test_streaming_from_an_fsspec_url(demo_manifests):
    url = "memory://arjepa-test/shards"
    pack(str(demo_manifests.val), url, samples_per_shard=4, log=lambda msg: None)
    dm = StreamingVideoDataModule(train_shards=url, val_shards=f"{url}/shards.json", batch_size=4, num_workers=0,
                                  **{**CLIP, "frames_per_clip": 4, "frame_step": 2})
    dm.setup("fit")
    train, val = list(dm.train_dataloader()), list(dm.val_dataloader())
    assert len(train) == len(val) == 3 and train[0]["video"].shape == (4, 3, 4, 16, 16)
    assert torch.cat([b["index"] for b in val]).tolist() == list(range(12))  # in order
    assert sorted(torch.cat([b["index"] for b in train]).tolist()) == list(range(12))


def test_streaming_datamodule_from_config(tmp_path):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(StreamingVideoDataModule, "data")
    cfg = parser.parse_string("data:\n  train_shards: [s3://a/k400, gs://b/ssv2]\n  mix_weights: [0.7, 0.3]\n"
                              "  iterations_per_epoch: 300\n  crop_size: 112\n")
    dm = parser.instantiate(cfg).data
    assert dm.train_shards == ["s3://a/k400", "gs://b/ssv2"] and dm.crop_size == 112 and dm.iterations_per_epoch == 300
    with pytest.raises(ValueError, match="1 weights for 2"):
        StreamingVideoDataModule(train_shards=["a", "b"], mix_weights=[1.0])


# ----------------------------------------------------------------------------
# the commands of docs/data.md ("your own data"), on the demo data


def readme_own_videos_commands() -> list[list[str]]:
    section = (REPO / "docs/data.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [shlex.split(line) for block in blocks for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_readme_own_videos_commands_work(demo_manifests, tmp_path, monkeypatch):
    from arjepa_pl.cli import ArJepaCLI

    monkeypatch.chdir(REPO)
    paths = {"/data/k400/train.csv": str(demo_manifests.train), "/data/k400/val.csv": str(demo_manifests.val),
             "/data/k710/train.csv": str(demo_manifests.train), "/data/ssv2/train.csv": str(demo_manifests.val),
             "/data/howto100m/train.csv": str(demo_manifests.train), "/data/k400-shards": str(tmp_path / "shards"),
             "/data/k400-val-shards": str(tmp_path / "shards")}
    commands = readme_own_videos_commands()
    assert [c[:3] for c in commands] == [["python", "-m", "arjepa_pl"]] * 3 + [["python", "-m", "data_modules.shards"],
                                                                              ["python", "-m", "arjepa_pl"]]
    built = []
    for command in commands:
        pattern = "|".join(map(re.escape, sorted(paths, key=len, reverse=True)))
        args = [re.sub(pattern, lambda m: paths[m.group(0)], arg) for arg in command[3:]]
        if command[2] == "data_modules.shards":
            assert shards.main(args) == 0
            continue
        assert args[0] == "fit"
        on_cpu = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "1",
                  "--trainer.strategy", "auto", "--trainer.precision", "32-true", "--trainer.default_root_dir", str(tmp_path)]
        with torch.device("meta"):  # the ViT-L recipe is built, not trained
            built.append(ArJepaCLI(args=[*args[1:], *on_cpu], run=False).datamodule)
    manifests, vitl, mixed, streamed = built
    assert (manifests.crop_size, manifests.frame_step, manifests.val_manifest) == (224, 4, str(demo_manifests.val))
    assert mixed.mix_weights == [0.335, 0.1, 0.565] and mixed.iterations_per_epoch == 300
    assert len(mixed.train_manifest) == 3
    assert isinstance(streamed, StreamingVideoDataModule) and streamed.train_shards == [str(tmp_path / "shards")]
    assert (streamed.crop_size, streamed.batch_size) == (224, 24)  # the recipe's clip keys carry over
    assert read_shard_set(str(tmp_path / "shards")).num_samples == 12
