"""Windows of two-rooms trajectories for action-conditioned world models, with exact mid-epoch resume.

A sample is a window of T steps cut from a stored trajectory: {"frames": [T + 1, 3, S, S] (normalised),
"actions": [T, 2] (unit disc), "states": [T + 1, 2] (agent x, y), "index", "epoch", "position"}; the
action at t moves the agent from frame t to frame t + 1. Windows never cross trajectories, and all of
them are served once per epoch in the ClipSampler's seeded order, so a run resumed from a mid-epoch
checkpoint reads exactly the windows the interrupted one would have (ResumableDataLoader).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from .datamodules import objective_collate_fn
from .resumable import ResumableDataLoader
from .samplers import ClipSampler
from .two_rooms import TwoRooms, TwoRoomsLayout
from .two_rooms_data import default_two_rooms_dir, ensure_two_rooms, load_split, two_rooms_params

log = logging.getLogger("arjepa_pl.data")


class TwoRoomsWindows(Dataset):
    """Every window of `num_steps` actions of every trajectory of one split (see the module docstring).

    Keys are plain indices or (index, epoch, position) tuples from ClipSampler; a window depends on its
    index only (nothing here is random), and its frames are rendered from the stored states on read.
    """

    def __init__(self, directory: str | Path, split: str, num_steps: int, layout: TwoRoomsLayout,
                 mean: tuple[float, ...] = (0.5, 0.5, 0.5), std: tuple[float, ...] = (0.5, 0.5, 0.5)):
        self.states, self.actions = load_split(Path(directory), split)
        length = self.actions.shape[1]
        if not 1 <= num_steps <= length:
            raise ValueError(f"num_steps must lie in [1, {length}] (the trajectories' length), got {num_steps}")
        self.num_steps = num_steps
        self.windows_per_trajectory = length - num_steps + 1
        self.sim = TwoRooms(layout)
        self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.states) * self.windows_per_trajectory

    def __getitem__(self, key) -> dict:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list) -> list[dict]:
        """A batch of windows, their frames rendered in one vectorised call (the DataLoader's fetcher
        calls this with a whole batch's keys)."""
        samples, states = [], []
        for key in keys:
            index, epoch, position = key if isinstance(key, tuple) else (key, 0, key)
            trajectory, start = divmod(int(index), self.windows_per_trajectory)
            window = slice(start, start + self.num_steps + 1)
            states.append(torch.from_numpy(self.states[trajectory, window].copy()))
            samples.append({"actions": torch.from_numpy(self.actions[trajectory, start:start + self.num_steps].copy()),
                            "states": states[-1], "index": int(index), "epoch": int(epoch), "position": int(position)})
        frames = (self.sim.render(torch.stack(states)) - self.mean) / self.std
        return [{"frames": f, **sample} for f, sample in zip(frames, samples)]


class TwoRoomsDataModule(pl.LightningDataModule):
    """The offline two-rooms data set (generated on first use) as windows of frames, actions and states.

    Args:
        data_dir: where data sets are generated and cached (one sub-folder per parameter set); null:
            $ARJEPA_TWO_ROOMS_DIR or ~/.cache/arjepa_pl/two_rooms.
        num_train / num_val: random-action trajectories in each split.
        trajectory_length: actions per trajectory.
        num_steps: actions per window (T); a window has T + 1 frames.
        layout: the environment (frame size, walls, door, largest step), see data_modules.TwoRoomsLayout.
        turn_std / switch_prob / min_speed: the random-walk policy that collected the data
            (data_modules.two_rooms_data.random_walk_actions).
        data_seed: seed of the trajectories (the data set itself, not the training order).
        seed: seed of the window order.
        batch_size: windows per batch on each device.
        num_workers: DataLoader worker processes per device (0 renders in the main process).
        mean / std: per-channel normalisation of the [0, 1] frames.
        pin_memory / persistent_workers: as for torch's DataLoader.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        num_train: int = 2000,
        num_val: int = 200,
        trajectory_length: int = 32,
        num_steps: int = 8,
        layout: TwoRoomsLayout = TwoRoomsLayout(),
        turn_std: float = 0.6,
        switch_prob: float = 0.1,
        min_speed: float = 0.3,
        data_seed: int = 0,
        seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 2,
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        std: tuple[float, float, float] = (0.5, 0.5, 0.5),
        pin_memory: bool = False,
        persistent_workers: bool = False,
    ) -> None:
        super().__init__()
        # In checkpoints (planners check the layout a world model was trained in), as plain values.
        self.save_hyperparameters(ignore=["layout"])
        self.hparams["layout"] = layout.as_dict()
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
        if not 1 <= num_steps <= trajectory_length:
            raise ValueError(f"num_steps must lie in [1, trajectory_length={trajectory_length}], got {num_steps}")
        self.params = two_rooms_params(layout, num_train, num_val, trajectory_length, data_seed,
                                       {"turn_std": turn_std, "switch_prob": switch_prob, "min_speed": min_speed})
        self.data_dir, self.layout, self.num_steps = data_dir, layout, num_steps
        self.seed, self.batch_size, self.num_workers = seed, batch_size, num_workers
        self.mean, self.std = tuple(mean), tuple(std)
        self.pin_memory, self.persistent_workers = pin_memory, persistent_workers
        self.train_dataset: TwoRoomsWindows | None = None
        self.val_dataset: TwoRoomsWindows | None = None
        self.world_size, self.rank = 1, 0

    def directory(self) -> Path:
        """The data set's folder, generating it if needed."""
        return ensure_two_rooms(Path(self.data_dir) if self.data_dir else default_two_rooms_dir(), self.params)

    def prepare_data(self) -> None:
        self.directory()  # once per node, before the ranks set up

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None:
            self.world_size, self.rank = self.trainer.world_size, self.trainer.global_rank
        directory = self.directory()  # cheap when cached; needed where prepare_data did not run
        def windows(split: str) -> TwoRoomsWindows:
            return TwoRoomsWindows(directory, split, self.num_steps, self.layout, self.mean, self.std)

        self.train_dataset = windows("train")
        self.val_dataset = windows("val") if self.params["num_val"] else None
        per_rank = len(self.train_dataset) // self.world_size
        if per_rank < self.batch_size:
            raise ValueError(f"{per_rank} training windows per device, fewer than batch_size {self.batch_size}: "
                             "no batch. Raise num_train or lower batch_size")
        if self.rank == 0:
            log.info(f"two rooms: {len(self.train_dataset)} train windows of {self.num_steps} steps from {directory}")

    def _loader(self, dataset: Dataset, sampler: ClipSampler, loader_class=DataLoader, drop_last: bool = False):
        workers = self.num_workers > 0
        return loader_class(dataset, batch_size=self.batch_size, sampler=sampler, drop_last=drop_last,
                            num_workers=self.num_workers, collate_fn=objective_collate_fn(self.trainer),
                            pin_memory=self.pin_memory,
                            persistent_workers=self.persistent_workers and workers,
                            multiprocessing_context="fork" if workers and sys.platform.startswith("linux") else None)

    def train_dataloader(self) -> ResumableDataLoader:
        if self.train_dataset is None:
            raise RuntimeError("TwoRoomsDataModule.setup() must run before the dataloaders are built")
        # drop_last in the sampler gives every rank the same number of windows (uneven counts hang DDP).
        sampler = ClipSampler(self.train_dataset, num_replicas=self.world_size, rank=self.rank, shuffle=True,
                              seed=self.seed, drop_last=True)
        loader = self._loader(self.train_dataset, sampler, ResumableDataLoader, drop_last=True)
        if self.trainer is not None:
            loader.epoch_limit = self.trainer.limit_train_batches
        return loader

    def val_dataloader(self) -> DataLoader | list:
        if self.val_dataset is None:
            return []
        sampler = ClipSampler(self.val_dataset, num_replicas=self.world_size, rank=self.rank, shuffle=False,
                              drop_last=False)
        return self._loader(self.val_dataset, sampler)
