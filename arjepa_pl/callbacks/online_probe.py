"""Online probe: how linearly decodable (or kNN-decodable) the encoder's features are, while pretraining.

A falling pretraining loss says little about the representation (a JEPA loss even falls when it
collapses). What the frozen probes measure after training can be watched during it, at a small cost:
every `every_n_steps` training batches this callback reads the encoder's features of the batch through
the objective's FeatureExtractor (no grad: the objective's training is untouched) — or takes the
last-layer tokens the training step returns as `outputs["features"]` when it computed them anyway
(V-JEPA's teacher pass over the whole clip: no second pass of the encoder) — and trains detached
heads of its own on them: a linear head on the mean-pooled features, or V-JEPA's attentive probe on the
tokens, which keeps where and when things happen (a mean over tokens cannot show motion: on an AR pixel
encoder whose frozen attentive probe reads motion direction at 94 %, a linear probe on its mean-pooled
features read chance); or adds mean-pooled features to a kNN memory bank. At every
validation it classifies the validation clips and logs `online_probe/<task>/acc` and
`online_probe/<task>/train_acc` (the head's accuracy on the training batches it saw since the last
validation, before each update), summed over ranks.

It is a monitor, not the evaluation: the head chases a moving encoder and sees augmented clips (see
the flip caveat in docs/evaluation.md); report the frozen probes (arjepa_pl.evaluation) as results.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal, Optional, cast

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from arjepa_pl.evaluation.multiview import flatten_views
from arjepa_pl.evaluation.tasks import ProbeTask, as_tasks, check_listed_labels
from arjepa_pl.models.features import FeatureExtractor
from arjepa_pl.models.probes import AttentiveClassifier
from arjepa_pl.optim import decay_groups


class OnlineProbe(L.Callback):
    """Trains detached probes on the encoder's pooled features during `fit`; logs their accuracy.

    Args:
        tasks: what to predict from each clip's label (arjepa_pl.evaluation.ProbeTask: name, num_classes,
            divisor, modulo; e.g. the demo set's shape and direction).
        method: "linear": one head per task, trained with AdamW on the probed training batches;
            "knn": cosine kNN over a memory bank of the most recent probed training clips (mean pooling).
        pooling: what the linear method's heads read. "mean": a linear layer on the tokens' mean;
            "attentive": V-JEPA's attentive probe (arjepa_pl.models.probes.AttentiveClassifier, one per
            task, the encoder's head count) on the tokens of every view.
        every_n_steps: probe every this many training batches (1: all of them).
        layer: the encoder block whose output is read (-1: the last).
        lr / weight_decay: the heads' AdamW (weight decay on the weights only). None: 1e-2 for mean
            pooling (the features are normalised to unit scale, and a monitor gets few updates, so the rate
            is high for AdamW), 1e-3 for attentive heads (V-JEPA's probe rate).
        k / temperature: kNN neighbours, and the temperature of their vote weights exp(cosine / temperature).
        bank_size: clips the kNN bank holds (a ring buffer: the oldest are replaced).
        seed: initialisation of the linear heads (from its own generator: the run's random stream is untouched).
    """

    def __init__(
        self,
        tasks: Sequence[ProbeTask],
        method: Literal["linear", "knn"] = "linear",
        pooling: Literal["mean", "attentive"] = "mean",
        every_n_steps: int = 1,
        layer: int = -1,
        lr: Optional[float] = None,
        weight_decay: float = 1e-4,
        k: int = 20,
        temperature: float = 0.07,
        bank_size: int = 4096,
        seed: int = 0,
    ):
        self.tasks = as_tasks(tasks, "OnlineProbe")
        if method not in ("linear", "knn"):
            raise ValueError(f"method must be 'linear' or 'knn', got {method!r}")
        if pooling not in ("mean", "attentive"):
            raise ValueError(f"pooling must be 'mean' or 'attentive', got {pooling!r}")
        if method == "knn" and pooling != "mean":
            raise ValueError(f"method 'knn' votes with mean-pooled features: use pooling 'mean', got {pooling!r}")
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if lr is None:
            lr = 1e-2 if pooling == "mean" else 1e-3
        if lr <= 0 or weight_decay < 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {lr}, {weight_decay}")
        if k < 1 or bank_size < k or temperature <= 0:
            raise ValueError(f"need k >= 1, bank_size >= k and temperature > 0, got k={k}, "
                             f"bank_size={bank_size}, temperature={temperature}")
        self.method, self.pooling, self.every_n_steps, self.layer = method, pooling, every_n_steps, layer
        self.lr, self.weight_decay, self.seed = lr, weight_decay, seed
        self.k, self.temperature, self.bank_size = k, temperature, bank_size
        self.num_classes = [task.num_classes for task in self.tasks]
        # Saved in checkpoints (state_dict), so a resumed run continues exactly.
        self.batches_seen = 0  # training batches seen, probed or not: picks every n-th
        self.probe_steps = 0  # training batches probed
        # linear: nn.Linear with all tasks' logits side by side (mean), or one AttentiveClassifier per task
        self.head: Optional[nn.Module] = None
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.bank: Optional[torch.Tensor] = None  # knn: [bank_size, D] unit-norm features
        self.bank_labels: Optional[torch.Tensor] = None  # [bank_size] labels, -1 where empty
        self.bank_next = 0  # the ring buffer's next slot
        # Per process only.
        self.seconds = 0.0  # wall time spent probing (training and validation): the callback's cost
        self._extractor: Optional[FeatureExtractor] = None
        self._pending: Optional[dict] = None  # a checkpoint's state that arrived before the head existed
        self._train_labels_checked = False  # every training label known to be in range (setup)
        # [tasks, 2]: correct, seen since the last validation (made anew on the module's device in on_fit_start)
        self._train_counts = torch.zeros(len(self.tasks), 2, dtype=torch.long)
        self._val_counts = torch.zeros_like(self._train_counts)

    # -- lifecycle ---------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        extractor = self._feature_extractor(pl_module)
        extractor.layer_index(self.layer)  # a clear error now for a layer the encoder lacks
        dim = extractor.embed_dim
        if self.method == "linear" and self.head is None:
            # Its own generator state: building the head must not shift the run's random numbers.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                if self.pooling == "mean":
                    self.head = nn.Linear(dim, sum(self.num_classes))
                else:
                    heads = extractor.encoder.num_heads
                    self.head = nn.ModuleList(AttentiveClassifier(dim, n, heads) for n in self.num_classes)
            decay, no_decay = decay_groups(self.head)
            self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": self.weight_decay},
                                                {"params": no_decay, "weight_decay": 0.0}], lr=self.lr)
        if self.method == "knn" and self.bank is None:
            self.bank = torch.zeros(self.bank_size, dim)
            self.bank_labels = torch.full((self.bank_size,), -1, dtype=torch.long)
        if self._pending is not None:
            self._restore()
        self._train_labels_checked = check_listed_labels(trainer, self._targets)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After configure_model, which may have sharded the encoder: the extractor calls the encoder's
        # forward, so FSDP2 gathers its weights for the probe as for training.
        self._extractor = self._feature_extractor(pl_module)
        device = pl_module.device
        if self.head is not None:
            assert self.optimizer is not None  # built with the head
            self.head.to(device)
            for state in self.optimizer.state.values():  # after a resume the state may sit on the CPU
                for key, value in state.items():
                    if torch.is_tensor(value) and key != "step":
                        state[key] = value.to(device)
        if self.bank is not None:
            assert self.bank_labels is not None  # built with the bank
            self.bank, self.bank_labels = self.bank.to(device), self.bank_labels.to(device)
        self._train_counts = torch.zeros(len(self.tasks), 2, device=device, dtype=torch.long)
        self._val_counts = torch.zeros_like(self._train_counts)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.batches_seen += 1
        if (self.batches_seen - 1) % self.every_n_steps:
            return
        start = self._clock(pl_module)
        given = outputs.get("features") if isinstance(outputs, dict) and self.layer == -1 else None
        features, labels = self.features(trainer, batch, given)
        targets = self._targets(labels, check=not self._train_labels_checked)
        if self.method == "linear":
            self._train_counts += self._linear_step(features, targets)
        else:
            self._train_counts += self._correct(self.knn_logits(features), targets)
            self._remember(*self._gather(features, labels))
        self.probe_steps += 1
        self.seconds += self._clock(pl_module) - start

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or self._extractor is None or self.probe_steps == 0:
            return  # nothing trained yet: chance-level numbers would only clutter the curves
        start = self._clock(pl_module)
        features, labels = self.features(trainer, batch)
        self._val_counts += self._correct(self.logits(features), self._targets(labels))
        self.seconds += self._clock(pl_module) - start

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self._extractor is None:
            return
        # Sums over ranks, then one ratio: the accuracy of all clips, not a mean of per-rank accuracies.
        for suffix, counts in (("acc", self._val_counts), ("train_acc", self._train_counts)):
            total = trainer.strategy.reduce(counts.clone(), reduce_op="sum")
            for task, (correct, seen) in zip(self.tasks, total.tolist()):
                if seen:
                    pl_module.log(f"online_probe/{task.name}/{suffix}", correct / seen, sync_dist=False)
            counts.zero_()

    # -- features ----------------------------------------------------------------------------------
    @torch.no_grad()
    def features(self, trainer: L.Trainer, batch: Any,
                 tokens: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(what the heads read, in float32; labels [B]) of a batch, read as the objective was trained.

        `tokens`: the batch's last-layer tokens [B (x views), N, D] as the objective's feature
        extractor gives them, when its training step computed them anyway (`outputs["features"]`:
        V-JEPA's teacher pass); otherwise the extractor runs here.

        Mean pooling: tokens are mean-pooled (over views too, for [B, V, ...] batches) into [B, D] and
        normalised without learnt parameters (F.layer_norm): the encoder's feature scale drifts during
        pretraining and differs between objectives, so a head with a fixed learning rate would chase it.
        The frozen linear probe's BatchNorm (arjepa_pl.models.probes) would do too for fixed features,
        but its running statistics would lag a moving encoder and differ between DDP ranks; this has
        none. Attentive pooling: the tokens of all views [B, V * N, D] (the head's own LayerNorm
        normalises them).
        """
        extractor = self._extractor
        assert extractor is not None, "on_fit_start sets the feature extractor"
        key = "video" if extractor.encoder.video else "image"
        if not isinstance(batch, dict) or key not in batch or "label" not in batch:
            keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
            raise ValueError(f"OnlineProbe needs batches with {key!r} and 'label' (labelled clips), got {keys}")
        x, labels = batch[key], batch["label"]
        if not torch.is_tensor(labels) or labels.dtype not in (torch.int32, torch.int64) or labels.shape != x.shape[:1]:
            raise ValueError(f"OnlineProbe needs integer labels, one per clip, got "
                             f"{labels.dtype if torch.is_tensor(labels) else type(labels).__name__} "
                             f"{tuple(getattr(labels, 'shape', ()))} for {x.shape[0]} clips")
        B = x.shape[0]
        if tokens is None:
            x, _ = flatten_views(x, 4 if extractor.encoder.video else 3)
            modes = [(module, module.training) for module in extractor.modules()]
            extractor.eval()  # no dropout / drop-path: the features probes would read
            try:
                with trainer.precision_plugin.forward_context():
                    (tokens,) = extractor(x, layers=(self.layer,))
            finally:
                for module, training in modes:  # each module as it was (the objective may keep some in eval)
                    module.training = training
        tokens = tokens.detach().float().reshape(B, -1, tokens.shape[-1])
        if self.pooling == "attentive":
            return tokens, labels.long()
        pooled = tokens.mean(1)
        return F.layer_norm(pooled, pooled.shape[-1:]), labels.long()

    def _targets(self, labels: torch.Tensor, check: bool = True) -> list[torch.Tensor]:
        try:
            return [task.targets(labels, check) for task in self.tasks]
        except ValueError as err:
            hint = (" (unlabelled data? the online probe needs class labels >= 0; remove the callback for "
                    "unlabelled data)") if int(labels.min()) < 0 else ""
            raise ValueError(f"OnlineProbe: {err}{hint}") from None

    # -- linear ------------------------------------------------------------------------------------
    def logits(self, features: torch.Tensor) -> list[torch.Tensor]:
        """One [B, classes] score tensor per task (kNN: vote weights)."""
        if self.method == "knn":
            return self.knn_logits(features)
        assert self.head is not None  # built in setup("fit") for the linear method
        with torch.no_grad():
            return self._head_logits(features)

    def _head_logits(self, features: torch.Tensor) -> list[torch.Tensor]:
        head = self.head
        assert head is not None  # built in setup("fit") for the linear method
        if isinstance(head, nn.ModuleList):  # attentive pooling: one classifier per task
            return [classifier(features) for classifier in head]
        return list(head(features).split(self.num_classes, dim=-1))

    def _linear_step(self, features: torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor:
        head, optimizer = self.head, self.optimizer
        assert head is not None and optimizer is not None  # built in setup("fit") for the linear method
        with torch.enable_grad():
            logits = self._head_logits(features)
            # Summed over tasks: each task's head (rows of the linear one) only gets its own loss's gradient.
            # (A sum of tensors: there is at least one task.)
            loss = cast(torch.Tensor, sum(F.cross_entropy(lg, y) for lg, y in zip(logits, targets)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Each rank saw its own batch: averaging the gradients keeps the heads identical (as DDP would).
            world = torch.distributed.get_world_size()
            for p in head.parameters():
                assert p.grad is not None  # every weight of the head is in the loss
                torch.distributed.all_reduce(p.grad)
                p.grad.div_(world)
        optimizer.step()
        return self._correct([lg.detach() for lg in logits], targets)

    @staticmethod
    def _correct(logits: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
        """[tasks, 2]: (correct, seen) per task."""
        return torch.stack([torch.stack([(lg.argmax(-1) == y).sum(), y.new_tensor(y.numel())])
                            for lg, y in zip(logits, targets)])

    # -- kNN ---------------------------------------------------------------------------------------
    def knn_logits(self, features: torch.Tensor) -> list[torch.Tensor]:
        """Weighted votes of the k nearest bank entries (cosine similarity), per task [B, classes]."""
        assert self.bank is not None and self.bank_labels is not None  # built in setup("fit") for kNN
        filled = self.bank_labels >= 0
        bank, labels = self.bank[filled], self.bank_labels[filled]
        queries = F.normalize(features, dim=-1)
        if labels.numel() == 0:  # the very first batch: nothing to vote yet
            return [queries.new_zeros(queries.shape[0], c) for c in self.num_classes]
        similarity, index = (queries @ bank.T).topk(min(self.k, labels.numel()), dim=-1)  # [B, k]
        weights = (similarity / self.temperature).exp()
        votes = []
        for task, targets in zip(self.tasks, self._targets(labels)):
            scores = weights.new_zeros(queries.shape[0], task.num_classes)
            votes.append(scores.scatter_add_(1, targets[index], weights))
        return votes

    def _remember(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Write clips into the ring buffer, replacing the oldest."""
        assert self.bank is not None and self.bank_labels is not None  # built in setup("fit") for kNN
        n = min(features.shape[0], self.bank_size)
        slots = (self.bank_next + torch.arange(n, device=self.bank.device)) % self.bank_size
        self.bank[slots] = F.normalize(features[-n:], dim=-1).to(self.bank.dtype)
        self.bank_labels[slots] = labels[-n:]
        self.bank_next = (self.bank_next + n) % self.bank_size

    @staticmethod
    def _gather(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's (features, labels), in rank order, so every rank's bank holds the same clips
        (and the checkpoint, written by rank 0, holds every rank's bank). Batches may differ in size."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return features, labels
        world = torch.distributed.get_world_size()
        rows = torch.cat([features, labels[:, None].to(features.dtype)], dim=1)
        sizes = [torch.zeros(1, dtype=torch.long, device=rows.device) for _ in range(world)]
        torch.distributed.all_gather(sizes, torch.tensor([rows.shape[0]], device=rows.device))
        most = int(max(sizes))
        padded = F.pad(rows, (0, 0, 0, most - rows.shape[0]))
        gathered = [torch.empty_like(padded) for _ in range(world)]
        torch.distributed.all_gather(gathered, padded)
        rows = torch.cat([g[: int(n)] for g, n in zip(gathered, sizes)])
        return rows[:, :-1], rows[:, -1].round().long()

    # -- plumbing ----------------------------------------------------------------------------------
    @staticmethod
    def _feature_extractor(pl_module: L.LightningModule) -> FeatureExtractor:
        extractor = getattr(pl_module, "feature_extractor", lambda: None)()
        if extractor is None:
            raise TypeError(f"OnlineProbe needs an objective with a vision encoder: {type(pl_module).__name__} "
                            "has no feature_extractor() (or it returns None, as text models do); "
                            "remove the callback for this objective")
        return extractor

    @staticmethod
    def _clock(pl_module: L.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # bill the probe's kernels, not the queued training step
        return time.perf_counter()

    # -- checkpointed state ------------------------------------------------------------------------
    def _signature(self) -> dict:
        signature: dict[str, Any] = {
            "method": self.method, "tasks": [(t.name, t.num_classes, t.divisor, t.modulo) for t in self.tasks],
            "layer": self.layer}
        if self.pooling != "mean":  # (checkpoints from before pooling existed keep their signature)
            signature["pooling"] = self.pooling
        return signature

    def state_dict(self) -> dict:
        state = {"signature": self._signature(), "batches_seen": self.batches_seen, "probe_steps": self.probe_steps}
        if self.head is not None:
            assert self.optimizer is not None  # built with the head
            state["head"] = {k: v.detach().cpu() for k, v in self.head.state_dict().items()}
            state["optimizer"] = self.optimizer.state_dict()
        if self.bank is not None:
            assert self.bank_labels is not None  # built with the bank
            state.update(bank=self.bank.cpu(), bank_labels=self.bank_labels.cpu(), bank_next=self.bank_next)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("signature") != self._signature():
            rank_zero_warn(f"OnlineProbe: the checkpoint's probe ({state_dict.get('signature')}) differs from this "
                           f"one ({self._signature()}); the probe starts afresh", category=UserWarning)
            return
        self._pending = state_dict
        if self.head is not None or self.bank is not None:
            self._restore()
        # else: restored in setup("fit"), once the head exists (validate / predict never build it)

    def _restore(self) -> None:
        state, self._pending = self._pending, None
        assert state is not None  # called with a pending checkpoint state
        self.batches_seen, self.probe_steps = state["batches_seen"], state["probe_steps"]
        if self.method == "linear":
            # setup() / load_state_dict() call this once they exist.
            assert self.head is not None and self.optimizer is not None
            self.head.load_state_dict(state["head"])
            self.optimizer.load_state_dict(state["optimizer"])
        else:
            assert self.bank is not None  # setup() / load_state_dict() call this once it exists
            self.bank, self.bank_labels = state["bank"].to(self.bank.device), state["bank_labels"].to(self.bank.device)
            self.bank_next = state["bank_next"]
