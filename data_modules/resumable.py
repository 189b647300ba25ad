"""A DataLoader whose place in the epoch goes into Lightning checkpoints (exact mid-epoch resume)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Protocol, cast

from torch.utils.data import DataLoader, IterableDataset

log = logging.getLogger("arjepa_pl.data")


class SelfBatching(Protocol):
    """An iterable dataset that yields whole batches (loaded with batch_size=None)."""

    batch_size: int


class ResumableDataLoader(DataLoader):
    """DataLoader with `state_dict` / `load_state_dict`: (epoch, batches served so far).

    Lightning (2.x) saves the state_dict of every training loader that has these two methods
    (FitLoop.on_save_checkpoint -> CombinedLoader._state_dicts) and, when fit resumes from a
    checkpoint, calls load_state_dict before it first iterates the loader. Everything else that
    decides a sample (order, clip position, crop, replacement of bad videos, masks) is a function
    of the seed, the epoch and the sample's position, so (epoch, batches) is enough to replay the
    rest of the epoch exactly. Only rank 0's state is saved; it is valid on every rank because
    every rank serves the same number of batches.

    The position is kept by a "clock": the sampler (a ClipSampler) for map-style datasets, the
    dataset itself for iterable ones (Lightning sets no epoch on those, so the loader advances
    the dataset's epoch after each complete pass). A clock has `epoch`, `set_epoch`,
    `resume(epoch, position)` and `resume_signature()`: what must be unchanged for a mid-epoch
    position to mean the same samples (world size, data set size, ...). Resuming mid-epoch with
    a different signature is refused with an error that says what changed; a state at an epoch
    boundary resumes under any configuration.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batches = 0  # batches of the current epoch served (or, after a resume, to be skipped)
        self._skip = 0
        self._completed = False
        # Trainer(limit_train_batches): an int or a fraction of len(self), where Lightning ends the
        # epoch. The data modules copy it here so that such an epoch counts as complete.
        self.epoch_limit: int | float = 1.0

    @property
    def batches_per_epoch(self) -> int:
        if isinstance(self.epoch_limit, int):
            return min(len(self), self.epoch_limit)
        return max(int(len(self) * self.epoch_limit), 1)

    @property
    def _clock(self):
        return self.dataset if isinstance(self.dataset, IterableDataset) else self.sampler

    # A generator over DataLoader's own iterator (it counts the batches), not a _BaseDataLoaderIter.
    def __iter__(self) -> Iterator:  # type: ignore[override]
        clock, iterable = self._clock, isinstance(self.dataset, IterableDataset)
        if self._completed and iterable:
            clock.set_epoch(clock.epoch + 1)
        self._completed = False
        self._batches, self._skip = self._skip, 0
        iterator = super().__iter__()
        if iterable:
            # The workers copied the dataset, resume point included, when they started; the
            # next epoch starts at its first batch.
            clock.resume(clock.epoch, 0)
        for batch in iterator:
            # Counted when handed out: the trainer has taken it by the time a checkpoint is saved
            # (Lightning does not prefetch from loaders that have a length). Complete once the last
            # batch is out: Lightning stops asking after that, so the loop may never end.
            self._batches += 1
            self._completed = self._batches >= self.batches_per_epoch
            yield batch
        self._completed = True

    def state_dict(self) -> dict:
        return {"epoch": int(self._clock.epoch), "batches": self._batches, "batches_per_epoch": self.batches_per_epoch,
                "batch_size": self._batch_size(), **self._clock.resume_signature()}

    def load_state_dict(self, state: dict) -> None:
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= state.get("batches_per_epoch", float("inf")):
            epoch, batches = epoch + 1, 0  # saved at the end of an epoch: start the next one
        if batches:
            expected = {"batch_size": self._batch_size(), **self._clock.resume_signature()}
            changed = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
            if changed:
                what = ", ".join(f"{k} was {old!r}, now {new!r}" for k, (old, new) in changed.items())
                raise ValueError(
                    f"cannot resume mid-epoch (epoch {epoch}, after batch {batches}) with different data settings: "
                    f"{what}. The rest of the epoch would not be the samples the interrupted run was going to read. "
                    "Resume with the same settings (devices x nodes, batch size, data), or from a checkpoint "
                    "saved at the end of an epoch."
                )
        position = batches if isinstance(self.dataset, IterableDataset) else batches * self._batch_size()
        self._clock.resume(epoch, position)
        self._batches = self._skip = batches
        self._completed = False
        log.info(f"data loader resumes at epoch {epoch}, batch {batches}")

    def _batch_size(self) -> int:
        # An iterable dataset that makes its own batches is loaded with batch_size=None.
        return int(self.batch_size if self.batch_size is not None else cast(SelfBatching, self.dataset).batch_size)
