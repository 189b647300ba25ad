"""Bad videos never stop a run, and never go unnoticed.

A sample whose video is unusable is replaced by another one chosen deterministically from the
sample's own identity, so the replacement is the same whatever the worker count or resume point.
Retries are bounded; when too large a fraction of what a process reads is bad, the run stops with
an error that lists examples. Each sample carries a `skipped` string ("name: reason" lines), which
the default collate (and the MaskCollator built on it) passes through as a list of strings; the
SkippedVideosReport callback turns those into the `data/skipped` metric and a warning per epoch.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import lightning.pytorch as pl

from .decoding import BadVideo

log = logging.getLogger("arjepa_pl.data")

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)  # what identifies a sample: an index, a (set, shard, member) key, ...


class TooManyBadVideos(RuntimeError):
    """Raised when the data looks mostly bad: a configuration or storage problem, not bad luck."""


class BadSampleGuard:
    """Loads a sample, or deterministic replacements for it, counting what was unusable.

    Per process (the main process or one DataLoader worker), so it needs no communication. Videos
    found bad are remembered and not decoded again by this process (they would fail the same way).

    Args:
        max_retries: Replacements tried for one sample before giving up with TooManyBadVideos.
        max_bad_fraction: Stop when more than this fraction of the videos read so far is bad ...
        min_reads: ... once at least this many were read (so that a few bad files met early do not
            stop a healthy run).
        where: Name of the data (a manifest, a shard set) for messages.
    """

    def __init__(self, max_retries: int = 10, max_bad_fraction: float = 0.1, min_reads: int = 64,
                 where: str = "") -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if not 0 <= max_bad_fraction <= 1:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        self.max_retries = max_retries
        self.max_bad_fraction = max_bad_fraction
        self.min_reads = max(1, min_reads)
        self.where = where
        self.reads = 0
        self.failures = 0
        self.known_bad: dict[Hashable, str] = {}
        self.examples: list[str] = []

    def load(
        self,
        key: K,
        load: Callable[[K, int], T],
        replacement: Callable[[int], K],
        describe: Callable[[K], str],
    ) -> tuple[T, list[str]]:
        """(load(key, 0), []) or, if that video is bad, (load(replacement(a), a), skipped entries).

        `replacement(attempt)` must depend only on the original sample's identity and the attempt
        number, and `load` may raise BadVideo; other exceptions propagate untouched.
        """
        skipped: list[str] = []
        candidate = key
        for attempt in range(self.max_retries + 1):
            if attempt:
                candidate = replacement(attempt)
            self.reads += 1
            reason = self.known_bad.get(candidate)
            if reason is None:
                try:
                    return load(candidate, attempt), skipped
                except BadVideo as e:
                    reason = self.known_bad[candidate] = str(e)
            self.failures += 1
            entry = f"{describe(candidate)}: {reason}"
            skipped.append(entry)
            if len(self.examples) < 5 and entry not in self.examples:
                self.examples.append(entry)
            self._check_fraction()
        raise TooManyBadVideos(
            f"{self.max_retries + 1} videos in a row were unusable while looking for a replacement for "
            f"{describe(key)}{self._in_where()}; the data looks mostly bad:\n  " + "\n  ".join(skipped[:10])
            + "\nFix the data, or raise max_retries / max_bad_fraction if this is expected."
        )

    def _check_fraction(self) -> None:
        if self.reads >= self.min_reads and self.failures > self.max_bad_fraction * self.reads:
            raise TooManyBadVideos(
                f"{self.failures} of the {self.reads} videos read by this process{self._in_where()} were unusable, "
                f"more than max_bad_fraction={self.max_bad_fraction}. Examples:\n  " + "\n  ".join(self.examples)
                + "\nFix or remove them (or raise max_bad_fraction if this much bad data is expected)."
            )

    def _in_where(self) -> str:
        return f" from {self.where}" if self.where else ""


def skipped_entries(batch: Any) -> list[str]:
    """The "name: reason" entries a collated batch carries (none if the collate dropped them)."""
    skipped = batch.get("skipped") if isinstance(batch, dict) else None
    if not isinstance(skipped, (list, tuple)):
        return []
    return [line for text in skipped if isinstance(text, str) for line in text.splitlines() if line]


class SkippedVideosReport(pl.Callback):
    """Logs `data/skipped` (unusable videos skipped so far in the run, all ranks) and warns once per
    epoch naming them. Added to the Trainer by the video data modules; its count is checkpointed."""

    max_names = 20  # named in a warning; the rest are counted

    def __init__(self) -> None:
        self.total = 0
        self._pending: dict[str, Counter] = {"train": Counter(), "val": Counter()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        entries = skipped_entries(batch)
        self.total += len(entries)
        self._pending["train"].update(entries)
        pl_module.log("data/skipped", float(self.total), on_step=True, on_epoch=False, reduce_fx="sum",
                      sync_dist=trainer.world_size > 1, batch_size=1)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._pending["val"].update(skipped_entries(batch))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._warn(trainer, "train", f"epoch {trainer.current_epoch}")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._warn(trainer, "val", f"validation at step {trainer.global_step}")

    def on_train_end(self, trainer, pl_module) -> None:
        # A run that stops mid-epoch (max_steps) still reports what it met since the last report.
        self._warn(trainer, "train", f"epoch {trainer.current_epoch} (until the end of training)")

    def _warn(self, trainer, split: str, when: str) -> None:
        counts = self._pending[split]
        if not counts:
            return
        names = [f"{entry} (x{n})" if n > 1 else entry for entry, n in counts.most_common(self.max_names)]
        more = len(counts) - len(names)
        log.warning(
            f"rank {trainer.global_rank}: {split} data, {when}: skipped {sum(counts.values())} unusable video reads "
            f"({len(counts)} distinct), each replaced by another sample:\n  " + "\n  ".join(names)
            + (f"\n  ... and {more} more" if more > 0 else "")
        )
        counts.clear()

    def state_dict(self) -> dict:
        return {"total": self.total}

    def load_state_dict(self, state_dict: dict) -> None:
        self.total = int(state_dict.get("total", 0))
