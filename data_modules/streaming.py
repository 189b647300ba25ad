"""Clips streamed from tar shards (local disk or any fsspec URL), split exactly across ranks and
workers, optionally mixing several shard sets, resumable mid-epoch.

Every epoch has a plan that is a pure function of (seed, epoch) and the shard sets' sizes:

1. Each shard set's epoch sequence: its shards in a random order, and each shard's samples in a
   random order (shards are packed in shuffled manifest order, so this mixes well while every
   worker reads shards sequentially, one at a time).
2. The epoch's draws: one pass over a single set; several sets interleaved at random, each
   sample once (no weights) or drawn by weight, a set restarting its sequence when exhausted
   (per-sample weight = set weight / set size); `iterations_per_epoch` fixes the draw count.
3. Rank r takes the r-th contiguous slice of the draws: every rank the same number of samples,
   so the same number of batches and DDP never waits on a rank that ran out (training drops the
   world_size - 1 draws at most that do not divide; evaluation pads by wrapping instead).
4. The rank's batches are split into num_workers contiguous groups, and the DataLoader takes one
   batch from each worker in turn. After k batches, each group's progress is known, so a resumed
   loader skips exactly what was served, rotating which worker starts.

Only rank 0's loader state is checkpointed; it is valid on every rank since all serve the same
number of batches. The plan depends on world size, worker count and batch size: resuming
mid-epoch with other values is refused (see ResumableDataLoader).
"""

from __future__ import annotations

import logging
import math

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .bad_samples import BadSampleGuard
from .clip import ClipOptions, load_clip
from .datamodules import ClipDataModule
from .decoding import BadVideo
from .resumable import ResumableDataLoader
from .samplers import MIX, check_mixture
from .shards import ShardSet, read_shard, read_shard_set, sample_video

log = logging.getLogger("arjepa_pl.data")

SHARD_ORDER, MEMBER_ORDER, REPLACE = 0x5A, 0x3E, 0x5EED  # seed words of each kind of draw


def epoch_draws(
    sizes: list[int], weights: list[float] | None, total: int, seed: int, epoch: int, shuffle: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(set, position in that set's epoch sequence) of each of the epoch's `total` draws.

    Positions past a set's size continue into its next cycle (a fresh order of the same set).
    """
    sizes_a = np.asarray(sizes, dtype=np.int64)
    if len(sizes) == 1:
        return np.zeros(total, dtype=np.int64), np.arange(total, dtype=np.int64)
    rng = np.random.default_rng([seed, epoch, MIX])
    if weights is None and total == sizes_a.sum():
        choice = np.repeat(np.arange(len(sizes)), sizes_a)  # every sample once
        if shuffle:
            choice = rng.permutation(choice)
    else:
        w = np.asarray(sizes if weights is None else weights, dtype=np.float64)
        choice = rng.choice(len(sizes), size=total, p=w / w.sum())
    positions = np.empty(total, dtype=np.int64)
    for s in range(len(sizes)):
        taken = np.flatnonzero(choice == s)
        positions[taken] = np.arange(len(taken))
    return choice, positions


def locate(
    shard_set: ShardSet, positions: np.ndarray, seed: int, epoch: int, set_id: int, shuffle: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(shard, member) at each position of a set's epoch sequence (positions may span cycles).

    Each cycle orders the shards with default_rng([seed, epoch, set, cycle, SHARD_ORDER]) and the
    members of shard s with default_rng([seed, epoch, set, cycle, s, MEMBER_ORDER]); only the
    shards that `positions` touch get their member order computed.
    """
    sizes = np.asarray(shard_set.sizes, dtype=np.int64)
    n = int(sizes.sum())
    shards, members = np.empty_like(positions), np.empty_like(positions)
    for cycle in np.unique(positions // n):
        at = np.flatnonzero(positions // n == cycle)
        within = positions[at] % n
        order = np.random.default_rng([seed, epoch, set_id, cycle, SHARD_ORDER]).permutation(len(sizes)) \
            if shuffle else np.arange(len(sizes))
        starts = np.concatenate([[0], np.cumsum(sizes[order])[:-1]])
        slot = np.searchsorted(starts, within, side="right") - 1
        # Empty shards share a start with the next one: step over them.
        while (bad := sizes[order[slot]] <= within - starts[slot]).any():
            slot[bad] += 1
        shard, offset = order[slot], within - starts[slot]
        member = offset.copy()
        if shuffle:
            for s in np.unique(shard):
                sel = shard == s
                order = np.random.default_rng([seed, epoch, set_id, cycle, s, MEMBER_ORDER]).permutation(sizes[s])
                member[sel] = order[offset[sel]]
        shards[at], members[at] = shard, member
    return shards, members


class ShardClipStream(IterableDataset):
    """Batches of clip samples (lists of dicts, collated by the DataLoader's collate_fn) from shards.

    Load it with DataLoader(batch_size=None). Samples are {"video", "label", "index" (in the
    concatenation of the shard sets), "epoch", "position" (in this rank's epoch sequence),
    "skipped"}; clips and augmentations come from default_rng([seed, epoch, set, index]), so
    they depend only on the plan. An unusable video, or a sample lost with a broken shard, is
    replaced by a sample of the same shard set drawn from the sample's identity. A replacement is
    read on its own (part of another shard): a few bad samples cost a little I/O.

    Args:
        sources: The shard sets.
        train: Shuffle and augment; else fixed order, padded by wrapping, deterministic clips.
        batch_size: Samples per batch.
        world_size, rank: This process's place among the ranks.
        num_workers: Worker processes of the DataLoader that loads it (0: the main process).
        weights: One per set (per-sample weight = set weight / set size); None: each sample once.
        iterations_per_epoch: Batches per rank per epoch; None: one pass over the data.
        drop_last: Drop the last incomplete batch of each rank.
        seed, max_retries, max_bad_fraction: As for VideoClipDataset.
        **clip_options: ClipOptions fields.
    """

    def __init__(
        self,
        sources: list[ShardSet],
        *,
        train: bool,
        batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        num_workers: int = 0,
        weights: list[float] | None = None,
        iterations_per_epoch: int | None = None,
        drop_last: bool = True,
        seed: int = 0,
        max_retries: int = 10,
        max_bad_fraction: float = 0.1,
        **clip_options,
    ) -> None:
        self.options = ClipOptions(**clip_options)
        self.sources = list(sources)
        self.sizes = [s.num_samples for s in self.sources]
        if weights is not None:
            check_mixture(np.asarray(self.sizes), np.asarray(weights, dtype=np.float64))
        elif 0 in self.sizes:
            raise ValueError(f"empty shard set among {[s.url for s in self.sources]}")
        if not 0 <= rank < world_size or batch_size < 1 or num_workers < 0:
            raise ValueError(f"bad rank {rank} / world_size {world_size} / batch_size {batch_size} "
                             f"/ num_workers {num_workers}")
        self.train, self.batch_size, self.world_size, self.rank = train, batch_size, world_size, rank
        self.num_workers, self.weights, self.seed = num_workers, weights, seed
        self.iterations_per_epoch = iterations_per_epoch
        self.total = iterations_per_epoch * batch_size * world_size if iterations_per_epoch else sum(self.sizes)
        # Training drops the draws that do not divide by world_size; evaluation wraps around instead.
        self.samples_per_rank = self.total // world_size if train else math.ceil(self.total / world_size)
        self.num_batches = (self.samples_per_rank // batch_size if drop_last
                            else math.ceil(self.samples_per_rank / batch_size))
        if self.num_batches < 1:
            raise ValueError(f"{self.total} samples make no batch of {batch_size} on each of {world_size} ranks")
        self._set_offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self._shard_offsets = [s.offsets for s in self.sources]
        where = self.sources[0].url if len(self.sources) == 1 else f"{len(self.sources)} shard sets"
        self.guard = BadSampleGuard(max_retries, max_bad_fraction, min_reads=min(64, sum(self.sizes)), where=where)
        self.epoch, self._start_batch = 0, 0
        # set -> (shard, ({key: sample}, read error or None)) being read
        self._cache: dict[int, tuple[int, tuple[dict, str | None]]] = {}
        self._needed: dict[tuple[int, int], set[int]] = {}
        self._names: dict[tuple[int, int, int], str] = {}  # of the bad samples met, for reports

    def __len__(self) -> int:
        return self.num_batches

    # -- the clock ResumableDataLoader drives ---------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, batches: int) -> None:
        """Make the next iteration serve `epoch` from batch `batches` on (later ones start at 0)."""
        self.epoch, self._start_batch = epoch, batches

    def resume_signature(self) -> dict:
        return {"world_size": self.world_size, "num_workers": self.num_workers, "set_sizes": self.sizes,
                "weights": self.weights, "iterations_per_epoch": self.iterations_per_epoch}

    # -- the plan ---------------------------------------------------------------------------------
    def worker_batches(self, start_batch: int, worker: int, num_workers: int) -> range:
        """This worker's remaining batches (indices in the rank's sequence), resuming after start_batch."""
        q, r = divmod(self.num_batches, num_workers)
        group = (start_batch + worker) % num_workers  # the worker that serves batch start_batch is worker 0
        first = group * q + min(group, r)
        served = max(0, -(-(start_batch - group) // num_workers))  # batches t < start_batch with t % W == group
        return range(first + served, first + q + (group < r))

    def plan(self, epoch: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(set, shard, member) of this rank's samples at positions [lo, hi) of the epoch."""
        sets, positions = epoch_draws(self.sizes, self.weights, self.total, self.seed, epoch, self.train)
        draws = (self.rank * self.samples_per_rank + np.arange(lo, hi)) % self.total
        sets, positions = sets[draws], positions[draws]
        shards, members = np.empty_like(positions), np.empty_like(positions)
        for s in np.unique(sets):
            at = sets == s
            shards[at], members[at] = locate(self.sources[s], positions[at], self.seed, epoch, int(s), self.train)
        return sets, shards, members

    def __iter__(self):
        # Read the clock now (in the process that iterates), not when the generator starts.
        epoch, start = self.epoch, self._start_batch
        self._start_batch = 0
        return self._iterate(epoch, start)

    def _iterate(self, epoch: int, start_batch: int):
        info = get_worker_info()
        num_workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        if num_workers != max(self.num_workers, 1):
            raise RuntimeError(f"ShardClipStream was built for num_workers={self.num_workers} but runs in "
                               f"{num_workers} workers: the split of batches between workers would be wrong")
        batches = self.worker_batches(start_batch, worker, num_workers)
        if not batches:
            return
        lo, hi = batches.start * self.batch_size, min(batches.stop * self.batch_size, self.samples_per_rank)
        sets, shards, members = self.plan(epoch, lo, hi)
        self._cache.clear()
        self._needed = {}
        for s, sh, m in zip(sets.tolist(), shards.tolist(), members.tolist()):
            self._needed.setdefault((s, sh), set()).add(m)
        for b in batches:
            yield [self._sample(epoch, p, sets[p - lo], shards[p - lo], members[p - lo])
                   for p in range(b * self.batch_size, min((b + 1) * self.batch_size, self.samples_per_rank))]

    # -- samples ----------------------------------------------------------------------------------
    def _sample(self, epoch: int, position: int, set_id: int, shard: int, member: int) -> dict:
        set_id, shard, member = int(set_id), int(shard), int(member)
        index = int(self._shard_offsets[set_id][shard] + member)  # in the set
        offsets, set_size = self._shard_offsets[set_id], self.sizes[set_id]

        def load(key, attempt: int):
            data, label, name = self._video(key)
            words = [self.seed, epoch, set_id, index] + ([attempt] if attempt else [])
            try:
                return load_clip(data, self.options, np.random.default_rng(words), self.train), label
            except BadVideo:
                self._names[key] = name  # reports name the source file, not the shard member
                raise

        def replacement(attempt: int):
            # Any sample of the same set (not of the same shard: a lost shard loses them all).
            other = int(np.random.default_rng([self.seed, epoch, set_id, index, attempt, REPLACE]).integers(set_size))
            other_shard = int(np.searchsorted(offsets, other, side="right")) - 1
            return set_id, other_shard, other - int(offsets[other_shard])

        (video, label), skipped = self.guard.load((set_id, shard, member), load, replacement, self._describe)
        return {"video": video, "label": label, "index": int(self._set_offsets[set_id]) + index, "epoch": epoch,
                "position": position, "skipped": "\n".join(skipped)}

    def _video(self, key: tuple[int, int, int]) -> tuple[bytes, int, str]:
        set_id, shard, member = key
        cached = self._cache.get(set_id)
        if member in self._needed.get((set_id, shard), ()):
            if cached is None or cached[0] != shard:
                # One shard per set in memory at a time, holding only the samples this worker needs.
                cached = self._cache[set_id] = (shard, self._read(set_id, shard, self._needed[(set_id, shard)]))
            samples, error = cached[1]
        else:  # a replacement from elsewhere: read once, not kept
            samples, error = self._read(set_id, shard, {member})
        sample = samples.get(self._key(set_id, shard, member))
        if sample is None:
            raise BadVideo(f"missing from its shard ({error or 'key not in the tar'})")
        return sample_video(sample)

    def _read(self, set_id: int, shard: int, members: set[int]) -> tuple[dict, str | None]:
        keys = {self._key(set_id, shard, m) for m in members}
        return read_shard(self.sources[set_id].shard_urls[shard], keys.__contains__)

    def _key(self, set_id: int, shard: int, member: int) -> str:
        return f"{int(self._shard_offsets[set_id][shard]) + member:09d}"

    def _describe(self, key: tuple[int, int, int]) -> str:
        set_id, shard, member = key
        return self._names.get(key) or f"{self.sources[set_id].shard_urls[shard]}#{self._key(set_id, shard, member)}"


class StreamingVideoDataModule(ClipDataModule):
    """Clips streamed from WebDataset tar shards made by `python -m data_modules.shards pack`.

    Shards are read sequentially from local disk or any fsspec URL (s3://, gs://, http://, ...:
    install the matching fsspec backend), split across ranks and workers with no sample repeated
    or missed in an epoch (see the module docstring), and decoded from bytes in memory. Each
    worker holds at most one shard's samples per shard set in memory.

    Workers are started anew every epoch (persistent_workers is not used): they carry the epoch.

    Args:
        train_shards: A shard set (its folder or shards.json, local or URL), or several to mix.
        val_shards: Validation shard set(s), read in order and concatenated; null: no validation.
        mix_weights: One weight per train shard set: per-sample weight = set weight / set size, with
            replacement; null: every sample once per epoch.
        **kwargs: The clip, augmentation, bad-video and loader options of ClipDataModule.
    """

    val_option = "val_shards"
    train_dataset: ShardClipStream | None
    val_dataset: ShardClipStream | None

    def __init__(
        self,
        train_shards: str | list[str],
        val_shards: str | list[str] | None = None,
        mix_weights: list[float] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.train_shards = [train_shards] if isinstance(train_shards, str) else list(train_shards)
        self.val_shards = [val_shards] if isinstance(val_shards, str) else val_shards
        self.mix_weights = None if mix_weights is None else [float(w) for w in mix_weights]
        if self.mix_weights is not None and len(self.mix_weights) != len(self.train_shards):
            raise ValueError(f"mix_weights has {len(self.mix_weights)} weights for "
                             f"{len(self.train_shards)} train shard sets")

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        args = dict(batch_size=self.batch_size, world_size=self.world_size, rank=self.rank,
                    num_workers=self.num_workers, seed=self.seed, max_retries=self.max_retries,
                    max_bad_fraction=self.max_bad_fraction, **vars(self.clip_options))
        self.train_dataset = ShardClipStream([read_shard_set(u) for u in self.train_shards], train=True,
                                             weights=self.mix_weights, iterations_per_epoch=self.iterations_per_epoch,
                                             drop_last=self.drop_last, **args)
        self.val_dataset = None
        if self.val_shards:
            self.val_dataset = ShardClipStream([read_shard_set(u) for u in self.val_shards], train=False,
                                               drop_last=False, **args)
        if self.rank == 0:
            val_info = f"{sum(self.val_dataset.sizes)} val clips" if self.val_dataset else "no validation"
            log.info(f"streaming video data: {self.train_dataset.sizes} train clips in {self.train_shards}, "
                     f"{len(self.train_dataset)} batches per rank per epoch, {val_info}")

    def train_dataloader(self) -> DataLoader:
        self._require_setup()
        return self._resumable(ResumableDataLoader(self.train_dataset, batch_size=None, **self._loader_args()))

    def val_dataloader(self) -> DataLoader | list:
        self._require_setup()
        if self.val_dataset is None:
            return []
        return DataLoader(self.val_dataset, batch_size=None, **self._loader_args())
