"""Features of a frozen encoder computed once and kept, so a probe epoch costs only its heads.

A probe trains a small head for tens of epochs on an encoder that never changes; computing the
encoder's features again every epoch is almost all of its cost. FrozenFeatureData wraps any clip data
module: the first time a split is needed it runs the frozen encoder over *fixed views* of every clip
of that split (the evaluation views: centre clips and crops, `num_clips` x `eval_views` per clip) and
stores the features of each requested layer; later epochs, runs and probes read them back.

Entries are keyed by what decides their values: a fingerprint of the encoder's weights and
architecture (so two checkpoints of the same run, or a randomly initialised encoder of each seed,
never share an entry, and a copied checkpoint does), the data module's class and options (minus
loader options: batch size, workers, shuffle seed), the contents of its manifest files, the split,
the layer, the storage dtype and the trainer's precision. Each entry is one file, written to a
temporary name and renamed (atomic: an interrupted run leaves no half entry), beside a JSON note of
what it holds. Layers are entries of their own, so a decoder probe of the last layer reuses the
classification probe's features; the clips' pixels (decoder targets) depend on the data only.

Training views are fixed, not augmented: with the cache, a probe trains on the same evaluation views
of each training clip every epoch (no random crops, flips or temporal jitter). On data without
augmentation (the moving-shapes benchmark) this is exactly the uncached training; on augmented data
it is a choice — probe without the cache to train on augmented views. Seeds still vary the head's
initialisation and the order of the clips.
"""

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import lightning.pytorch as L
import torch
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, Dataset, default_collate

from arjepa_pl.evaluation.frozen import FrozenFeatures
from arjepa_pl.evaluation.multiview import flatten_views
from arjepa_pl.feature_stats import rankme, within_clip_share
from arjepa_pl.models import FeatureExtractor
from arjepa_pl.normalization import IMAGENET_MEAN, IMAGENET_STD, to_uint8_pixels
from data_modules import ClipSampler, ResumableDataLoader
from data_modules.generated import sha256

log = logging.getLogger("arjepa_pl.probe")

# Data module options that change how clips are served, never what a fixed view contains.
LOADER_OPTIONS = frozenset({"batch_size", "num_workers", "pin_memory", "persistent_workers", "drop_last", "seed",
                            "report_skipped", "iterations_per_epoch", "mix_weights", "max_retries", "max_bad_fraction"})
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
STATS_CLIPS = 1024  # evaluation clips the feature statistics are measured on (RankMe is an SVD of clips x D)


def is_sharded(module: torch.nn.Module) -> bool:
    """Whether FSDP2 sharded the module's weights (DTensors): its forward is then collective."""
    return any(isinstance(p, DTensor) for p in module.parameters())


def extractor_fingerprint(extractor: FeatureExtractor) -> str:
    """sha256 of the extractor's spec (architecture, tokenizer, attention) and of every weight's bytes
    (whole weights: for FSDP2 shards, gathered from every rank, which must all call this)."""
    digest = hashlib.sha256(json.dumps(extractor.spec(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(extractor.state_dict().items()):
        if isinstance(tensor, DTensor):
            tensor = tensor.full_tensor()
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _without_loader_options(options: Any) -> Any:
    """`options` with every LOADER_OPTIONS key dropped, at any depth (a wrapped module's are nested)."""
    if isinstance(options, dict):
        return {k: _without_loader_options(v) for k, v in options.items() if k not in LOADER_OPTIONS}
    return options


def data_identity(datamodule: L.LightningDataModule, dataset: Dataset) -> dict:
    """What decides a split's fixed views: the data module's class and options (loader options aside,
    so that e.g. a per-process batch size under DDP reads the same entries) and the sha256 of every
    manifest file the dataset reads."""
    cls = type(datamodule)
    options = _without_loader_options(json.loads(json.dumps(dict(getattr(datamodule, "hparams", {})), default=str)))
    files = [str(p) for p in getattr(dataset, "manifests", [])]
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "options": options,
            "manifests": {p: sha256(Path(p)) for p in files if Path(p).is_file()}, "clips": len(dataset)}  # type: ignore[arg-type]


def entry_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


class FeatureStore:
    """A folder of cache entries: <key>.pt (a dict of tensors) and <key>.json (what it is)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def load(self, key: str) -> dict:
        return torch.load(self.path(key), map_location="cpu", weights_only=True)

    def save(self, key: str, value: dict, note: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        def note_file(path: Path) -> None:
            path.write_text(json.dumps(note, indent=1, default=str))

        for path, write in ((self.root / f"{key}.json", note_file), (self.path(key), lambda p: torch.save(value, p))):
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            write(tmp)
            os.replace(tmp, path)


@torch.no_grad()
def extract(request: FrozenFeatures, loader: DataLoader, layers: list[int], device: torch.device, context,
            dtype: torch.dtype, pixels: bool, mean, std) -> dict:
    """One pass of the frozen encoder over `loader`: {"label" [N], "index" [N], per layer
    "l<layer>": [N, V, tokens, D] in `dtype`, and with `pixels`, "pixels": uint8 [N, V, C, (T,) H, W]}."""
    sample_ndim = 4 if request.input_key == "video" else 3
    parts: dict[str, list[torch.Tensor]] = {"label": [], "index": []}
    extractor = request.extractor
    seen = 0
    for batch in loader:
        x, views = flatten_views(batch[request.input_key], sample_ndim)
        B = x.size(0) // views
        parts["label"].append(torch.as_tensor(batch["label"]))
        parts["index"].append(torch.as_tensor(batch["index"]) if "index" in batch else torch.arange(seen, seen + B))
        seen += B
        if layers:
            with context:
                outputs = extractor(x.to(device), layers)
            for layer, f in zip(layers, outputs):
                parts.setdefault(f"l{layer}", []).append(f.detach().to("cpu", dtype).unflatten(0, (B, views)))
        if pixels:
            parts.setdefault("pixels", []).append(to_uint8_pixels(x, mean, std).cpu().unflatten(0, (B, views)))
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


class CachedSplit(Dataset):
    """Cached features of one split as samples {"features": [V, L, N, D], "label", "index", "epoch",
    "position"} (+ "pixels" when cached); keys are indices or ClipSampler's (index, epoch, position)."""

    def __init__(self, labels: torch.Tensor, index: torch.Tensor, features: list[torch.Tensor],
                 pixels: Optional[torch.Tensor] = None):
        self.labels, self.index, self.layer_features, self.pixels = labels, index, features, pixels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key) -> dict:
        i, epoch, position = (int(key), 0, int(key)) if not isinstance(key, (tuple, list)) else (int(k) for k in key)
        sample = {"features": torch.stack([f[i] for f in self.layer_features], dim=1), "label": self.labels[i],
                  "index": self.index[i], "epoch": epoch, "position": position}
        if self.pixels is not None:
            sample["pixels"] = self.pixels[i]
        return sample


class FrozenFeatureData(L.LightningDataModule):
    """Any clip data module, served as a frozen encoder's cached features (see the module docstring).

    The LightningModule says what to compute (`frozen_features()`: the Probe and the DecoderProbe do);
    batches are {"features": [B, V, L, N, D], "label", "index", ...} (+ "pixels" for a decoder), which
    those modules read as they read clips. Training batches follow the wrapped module's order (a
    ClipSampler seeded with its `seed`, the same batch size and drop_last), so with fixed training
    views the cached and the uncached probe see the same batches. With several processes, rank 0
    computes a missing entry while the others wait, then every rank reads it.

    Args:
        data: the clip data module whose splits are encoded (its fixed_view_dataset(split) gives the
            fixed views of a split; the moving-shapes benchmark and VideoDataModule have one).
        cache: false serves `data`'s own loaders unchanged (augmented training views, the encoder run
            every epoch): for data sets whose features would not fit on disk, e.g. K400 at 224 px.
        cache_dir: where entries are kept (default: <trainer.default_root_dir>/feature_cache); point
            several probes of the same encoders at one folder to share them.
        dtype: storage dtype of the features: float32 (the uncached results exactly) or bfloat16 /
            float16 (half the disk and memory; heads then see rounded features).
        extract_batch_size: clips per encoder pass while filling the cache (default: the data's batch size).
    """

    def __init__(self, data: L.LightningDataModule, cache: bool = True, cache_dir: Optional[str] = None,
                 dtype: Literal["float32", "bfloat16", "float16"] = "float32",
                 extract_batch_size: Optional[int] = None):
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if extract_batch_size is not None and extract_batch_size < 1:
            raise ValueError(f"extract_batch_size must be >= 1 (or null), got {extract_batch_size}")
        self.data, self.cache, self.cache_dir = data, cache, cache_dir
        self.dtype, self.extract_batch_size = dtype, extract_batch_size
        self.splits: dict[str, CachedSplit] = {}
        self.feature_stats: dict[str, float] = {}

    @property
    def label_values(self) -> Optional[Callable[[], list[int]]]:
        """The wrapped data's listing of its training labels, None if it has none (the probes and the
        pre-flight check call it: cached features carry the labels of the clips they came from)."""
        return getattr(self.data, "label_values", None)

    # The wrapped data's normalisation and sizes, for modules that read them from trainer.datamodule.
    @property
    def mean(self):
        return getattr(self.data, "mean", IMAGENET_MEAN)

    @property
    def std(self):
        return getattr(self.data, "std", IMAGENET_STD)

    @property
    def batch_size(self) -> int:
        return int(self.data.batch_size)  # type: ignore[attr-defined]

    def prepare_data(self) -> None:
        self.data.prepare_data()

    def setup(self, stage: str) -> None:
        self.data.trainer = self.trainer
        self.data.setup(stage)

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def split(self, name: str) -> CachedSplit:
        """The cached features of split `name` ("train", "val" or "test"), computed if missing."""
        if name in self.splits:
            return self.splits[name]
        trainer = self.trainer
        module = trainer.lightning_module if trainer is not None else None
        if trainer is None or module is None or not hasattr(module, "frozen_features"):
            raise TypeError("FrozenFeatureData serves frozen-encoder modules in a Trainer (arjepa_pl.evaluation.Probe, "
                            f"DecoderProbe); got {type(module).__name__}: use the data module itself")
        fixed_views = getattr(self.data, "fixed_view_dataset", None)
        if fixed_views is None:
            raise TypeError(f"{type(self.data).__name__} has no fixed_view_dataset(split): the feature cache needs "
                            "fixed views of every clip; probe without FrozenFeatureData")
        dataset = fixed_views(name)
        request: FrozenFeatures = module.frozen_features()  # type: ignore[operator]
        data_id = data_identity(self.data, dataset)
        fingerprint = extractor_fingerprint(request.extractor)
        precision = str(trainer.precision)
        keys = {"label": entry_key(data=data_id, split=name, part="labels")}
        keys.update({f"l{layer}": entry_key(data=data_id, split=name, layer=layer, encoder=fingerprint,
                                            dtype=self.dtype, precision=precision, input=request.input_key)
                     for layer in request.layers})
        if request.pixels:
            keys["pixels"] = entry_key(data=data_id, split=name, part="pixels", mean=self.mean, std=self.std)
        store = FeatureStore(Path(self.cache_dir or Path(trainer.default_root_dir) / "feature_cache"))
        world, rank = self._world()
        missing = [part for part, key in keys.items() if not store.has(key)]
        if world > 1:  # rank 0's view of the cache decides for every rank
            missing = trainer.strategy.broadcast(missing, src=0)
        # Rank 0 encodes and writes; a sharded encoder's forward is collective, so then every rank
        # encodes the same clips in step with it (and only rank 0 writes).
        if missing and (rank == 0 or is_sharded(request.extractor)):
            self._fill(trainer, store, keys, missing, request, dataset, name, fingerprint, data_id, write=rank == 0)
        if world > 1:
            trainer.strategy.barrier("feature_cache")
        entries = {part: store.load(key) for part, key in keys.items()}
        labels = entries["label"]
        self.splits[name] = CachedSplit(labels["label"], labels["index"],
                                        [entries[f"l{layer}"]["features"] for layer in request.layers],
                                        entries["pixels"]["pixels"] if request.pixels else None)
        if name == "val":
            self.feature_stats = self._stats(request.layers)
        return self.splits[name]

    def _fill(self, trainer: L.Trainer, store: FeatureStore, keys: dict, missing: list[str], request: FrozenFeatures,
              dataset: Dataset, split: str, fingerprint: str, data_id: dict, write: bool = True) -> None:
        layers = [int(part[1:]) for part in missing if part.startswith("l") and part != "label"]
        workers = int(getattr(self.data, "num_workers", 0))
        loader = DataLoader(dataset, batch_size=self.extract_batch_size or self.batch_size, shuffle=False,
                            num_workers=workers, collate_fn=default_collate,
                            multiprocessing_context="fork" if workers and os.name == "posix" else None)
        device = next(request.extractor.parameters()).device
        context = trainer.precision_plugin.forward_context()
        log.info(f"feature cache: encoding the {data_id['clips']} clips of the {split} split (layers {layers}) "
                 f"into {store.root}")
        out = extract(request, loader, layers, device, context, DTYPES[self.dtype], "pixels" in missing,
                      self.mean, self.std)
        if not write:
            return
        note = {"split": split, "data": data_id, "encoder": fingerprint, "spec": request.extractor.spec()}
        store.save(keys["label"], {"label": out["label"], "index": out["index"]}, {**note, "part": "labels"})
        for layer in layers:
            store.save(keys[f"l{layer}"], {"features": out[f"l{layer}"]}, {**note, "layer": layer, "dtype": self.dtype})
        if "pixels" in out:
            store.save(keys["pixels"], {"pixels": out["pixels"]}, {**note, "part": "pixels"})

    def _stats(self, layers) -> dict[str, float]:
        """RankMe of the clip-mean features and the within-clip share of token variance (the clip-code
        shortcut's signature) of (up to STATS_CLIPS) evaluation clips, at every layer."""
        split = self.splits["val"]
        stats = {}
        for layer, features in zip(layers, split.layer_features):
            clips = features[:STATS_CLIPS].flatten(0, 1).float()  # [clips x views, tokens, D]
            stats[f"features/l{layer}/rankme"] = rankme(clips.mean(1))
            if clips.size(0) > 1:
                stats[f"features/l{layer}/within_clip_share"] = within_clip_share(clips)
        return stats

    def _sampler(self, dataset: Dataset, shuffle: bool) -> ClipSampler:
        world, rank = self._world()
        return ClipSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle,
                           seed=int(getattr(self.data, "seed", 0)), drop_last=shuffle)

    def train_dataloader(self) -> DataLoader:
        if not self.cache:
            return self.data.train_dataloader()
        dataset = self.split("train")
        loader = ResumableDataLoader(dataset, batch_size=self.batch_size, sampler=self._sampler(dataset, True),
                                     drop_last=bool(getattr(self.data, "drop_last", True)), num_workers=0)
        if self.trainer is not None:
            loader.epoch_limit = self.trainer.limit_train_batches
        return loader

    def _eval_loader(self, name: str) -> DataLoader:
        dataset = self.split(name)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=self._sampler(dataset, False), num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val") if self.cache else self.data.val_dataloader()

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test") if self.cache else self.data.test_dataloader()
