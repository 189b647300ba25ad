"""Exact mid-epoch resume: a run stopped at a checkpoint and resumed by a new Trainer reads the same
samples, in the same order, with the same augmentations and masks, as a run that never stopped."""

import hashlib

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import Dataset, default_collate

from arjepa_pl.masks import MaskCollator
from data_modules import ClipSampler, MovingShapesDataModule, ResumableDataLoader, VideoDataModule, streaming
from data_modules.shards import pack
from data_modules.streaming import ShardClipStream, StreamingVideoDataModule

CLIP = dict(frames_per_clip=4, frame_step=2, crop_size=32, batch_size=2, num_workers=2)


def digest(tensor):
    return hashlib.sha1(tensor.numpy().tobytes()).hexdigest()[:10]


class Recorder(pl.LightningModule):
    """Records what every training step receives; draws masks at collate time as V-JEPA does."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 1)
        self.steps = []

    def collate_fn(self):
        return MaskCollator([{"num_blocks": 2, "spatial_scale": (0.3, 0.3)}], tubelet_size=2, patch_size=8,
                            seed=0, rank=self.global_rank)

    def training_step(self, batch, batch_idx):
        masks = batch["masks"][0]
        self.steps.append((self.global_step, batch["epoch"].tolist(), batch["position"].tolist(), batch["index"].tolist(),
                           digest(batch["video"]), digest(masks["context"]) + digest(masks["target"])))
        return self.linear(batch["video"].mean(dim=(2, 3, 4))).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(make_datamodule, root, max_steps, stop_at=None, ckpt_path=None):
    """The steps a fit records; with stop_at, it checkpoints at that step (and stops there)."""
    callbacks = [ModelCheckpoint(dirpath=root, filename="stop", every_n_train_steps=stop_at, save_top_k=-1)] if stop_at else []
    trainer = pl.Trainer(max_steps=stop_at or max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=bool(stop_at), callbacks=callbacks,
                         default_root_dir=root)
    model = Recorder()
    trainer.fit(model, datamodule=make_datamodule(), ckpt_path=ckpt_path)
    return model.steps


@pytest.fixture(scope="module")
def shards(demo_manifests, tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "shards"
    pack(str(demo_manifests.train), str(out), samples_per_shard=5, log=lambda msg: None)
    return str(out)


CASES = {
    # name: (data module factory given (manifests, shards), batches per epoch, where the first run stops)
    "manifest": (lambda m, s: VideoDataModule(train_manifest=str(m.train), **CLIP), 6, 8),  # in the 2nd epoch
    "mixture": (lambda m, s: VideoDataModule(train_manifest=[str(m.train), str(m.val)], mix_weights=[1, 2],
                                             iterations_per_epoch=5, **CLIP), 5, 3),
    "shards": (lambda m, s: StreamingVideoDataModule(train_shards=s, **CLIP), 6, 5),  # the 2 workers rotate
    "moving_shapes": (lambda m, s: MovingShapesDataModule(train_clips=12, val_clips=4, test_clips=4, frames_per_clip=4,
                                                          crop_size=32, batch_size=2, num_workers=2), 6, 8),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_resumed_fit_reads_what_the_uninterrupted_fit_read(case, demo_manifests, shards, tmp_path):
    factory, per_epoch, stop_at = CASES[case]
    make = lambda: factory(demo_manifests, shards)  # noqa: E731
    total = 2 * per_epoch - 1
    uninterrupted = fit(make, tmp_path / "a", total)
    first = fit(make, tmp_path / "b", total, stop_at=stop_at)
    resumed = fit(make, tmp_path / "c", total, ckpt_path=str(tmp_path / "b" / "stop.ckpt"))
    assert [s[0] for s in uninterrupted] == list(range(total))
    assert first + resumed == uninterrupted
    assert len({s[3][0] for s in uninterrupted}) > 3  # real shuffling, not a constant order
    assert uninterrupted[per_epoch][1] == [1, 1]  # the second epoch was reached and labelled


# ----------------------------------------------------------------------------
# the loader's state, without a Trainer


class Keys(Dataset):
    """Returns the sampler's key: the order is all that is tested here."""

    def __len__(self):
        return 20

    def __getitem__(self, key):
        index, epoch, position = key
        return {"index": index, "epoch": epoch, "position": position}


def served(loader, n=None):
    out = []
    for batch in loader:
        out.append((batch["epoch"].tolist(), batch["position"].tolist(), batch["index"].tolist()))
        if n is not None and len(out) == n:
            break
    return out


def test_map_style_loader_resumes_at_every_batch_and_epoch_boundary():
    def loader(world_size=2):
        return ResumableDataLoader(Keys(), batch_size=3, sampler=ClipSampler(Keys(), num_replicas=world_size, rank=1, seed=4))

    reference = loader()
    reference.sampler.set_epoch(2)
    full, following = served(reference), None
    reference.sampler.set_epoch(3)
    following = served(reference)
    assert len(full) == 4  # 10 samples for rank 1: 3 full batches and one of 1
    for k in range(len(full) + 1):
        first = loader()
        first.sampler.set_epoch(2)
        head = served(first, k) if k else []
        state = first.state_dict()
        assert (state["epoch"], state["batches"], state["world_size"]) == (2, k, 2)
        second = loader()
        second.load_state_dict(state)
        rest = served(second)
        # At the end of the epoch the resumed loader starts the next one.
        assert head + rest == full if k < len(full) else rest == following
        assert second.state_dict()["batches"] == len(rest) + (k if k < len(full) else 0)


def test_epoch_cut_short_by_limit_train_batches_resumes_at_the_next_epoch():
    first = ResumableDataLoader(Keys(), batch_size=3, sampler=ClipSampler(Keys(), num_replicas=1, rank=0))
    first.epoch_limit = 2  # Trainer(limit_train_batches=2): Lightning ends the epoch after 2 of 7 batches
    served(first, 2)
    second = ResumableDataLoader(Keys(), batch_size=3, sampler=ClipSampler(Keys(), num_replicas=1, rank=0))
    second.load_state_dict(first.state_dict())
    assert served(second, 1)[0][:2] == ([1, 1, 1], [0, 1, 2])


def test_mid_epoch_resume_with_another_world_size_is_refused():
    two = ResumableDataLoader(Keys(), batch_size=2, sampler=ClipSampler(Keys(), num_replicas=2, rank=0))
    served(two, 2)
    four = ResumableDataLoader(Keys(), batch_size=2, sampler=ClipSampler(Keys(), num_replicas=4, rank=0))
    with pytest.raises(ValueError, match=r"cannot resume mid-epoch .* world_size was 2, now 4"):
        four.load_state_dict(two.state_dict())
    bigger = ResumableDataLoader(Keys(), batch_size=4, sampler=ClipSampler(Keys(), num_replicas=2, rank=0))
    with pytest.raises(ValueError, match="batch_size was 2, now 4"):
        bigger.load_state_dict(two.state_dict())
    # At an epoch boundary nothing is lost: any world size may resume.
    four.load_state_dict({**two.state_dict(), "batches": 0})
    assert served(four)[0][1] == [0, 1]


def test_stream_loader_resumes_at_every_batch(demo_manifests, shards, monkeypatch):
    monkeypatch.setattr(streaming, "load_clip", lambda data, options, rng, train: torch.tensor(len(data)))
    from data_modules.shards import read_shard_set

    shard_set = read_shard_set(shards)

    def loader(num_workers=2):
        ds = ShardClipStream([shard_set], train=True, batch_size=2, num_workers=num_workers, seed=1)
        return ResumableDataLoader(ds, batch_size=None, num_workers=num_workers, collate_fn=default_collate,
                                   multiprocessing_context="fork")

    reference = loader()
    epochs = [served(reference) for _ in range(3)]
    assert len(epochs[0]) == 6 and epochs[1][0][0] == [1, 1]  # the loader advanced the stream's epoch
    for k in (1, 6):  # mid-epoch with the workers rotated, and at the end of the epoch
        first = loader()
        head = served(first, k) if k else []
        second = loader()
        second.load_state_dict(first.state_dict())
        rest = served(second)
        assert head + rest == epochs[0] if k < 6 else rest == epochs[1]  # at the end: the next epoch
        assert served(second) == epochs[1 if k < 6 else 2]  # and then the one after
    with pytest.raises(ValueError, match="num_workers was 2, now 1"):
        first = loader()
        served(first, 2)
        loader(num_workers=1).load_state_dict(first.state_dict())



# ----------------------------------------------------------------------------
# two real DDP processes (gloo, CPU), run as a script: Lightning launches the second rank itself

DDP_SCRIPT = '''
import json, sys
import lightning.pytorch as pl
import torch
from data_modules import StreamingVideoDataModule

class Record(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 1)
        self.indices = []

    def training_step(self, batch, batch_idx):
        self.indices += batch["index"].tolist()
        return self.linear(batch["video"].mean(dim=(2, 3, 4))).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

if __name__ == "__main__":
    shards, out = sys.argv[1], sys.argv[2]
    dm = StreamingVideoDataModule(train_shards=shards, frames_per_clip=2, frame_step=4, crop_size=16, batch_size=2,
                                  num_workers=1, max_bad_fraction=0.5)
    model = Record()
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, log_every_n_steps=1,
                         logger=pl.loggers.CSVLogger(out, name="logs"), default_root_dir=out)
    trainer.fit(model, datamodule=dm)
    skipped = trainer.callback_metrics.get("data/skipped")
    with open(f"{out}/rank{trainer.global_rank}.json", "w") as f:
        json.dump({"steps": trainer.global_step, "indices": model.indices,
                   "skipped": None if skipped is None else float(skipped)}, f)
'''


@pytest.mark.slow
def test_two_ddp_processes_split_the_shards_and_sum_the_skips(demo_manifests, tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    manifest = tmp_path / "m.csv"
    entries = Path(demo_manifests.train).read_text().splitlines()
    manifest.write_text("\n".join(entries[:11] + [f"{tmp_path}/text.mp4 0"]) + "\n")
    (tmp_path / "text.mp4").write_text("not a video\n")
    pack(str(manifest), str(tmp_path / "shards"), samples_per_shard=4, log=lambda msg: None)  # the bad file too
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "shards"), str(tmp_path)], cwd=repo,
                          env={**os.environ, "PYTHONPATH": str(repo), "WANDB_MODE": "offline"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 3  # 12 samples: 6 per rank, 3 batches of 2
    seen = ranks[0]["indices"] + ranks[1]["indices"]
    assert len(seen) == len(set(seen)) == 12
    assert ranks[0]["skipped"] == ranks[1]["skipped"] >= 1  # summed over both ranks, the same on each
