"""Frozen-encoder probes: `python -m arjepa_pl fit --config configs/probe_attentive.yaml
--model.encoder_checkpoint PATH` trains them, `validate` evaluates them.

The encoder comes from any arjepa_pl checkpoint (the objective decides what is read: a JEPA's target
encoder, an AR model's block-causal backbone with its tokenizer — see FeatureExtractor), an exported
encoder file or an official V-JEPA / I-JEPA checkpoint (arjepa_pl.interop). It is frozen and stays in
eval mode; only the heads train. One head per (task, layer) pair shares one encoder pass per batch, so
probing appearance and motion at several depths costs one forward.

Evaluation scores every view of a sample (temporal segments x spatial crops from the data module's
num_clips / eval_views) and averages the softmax; training treats each view as a sample.

With the data wrapped in arjepa_pl.evaluation.FrozenFeatureData (configs/probe_*.yaml do), the
encoder runs once per clip and the features are cached on disk: every epoch then costs only the heads.
"""

from typing import Literal, Optional, Sequence, Union, cast

import torch
import torch.nn.functional as F
from torch import nn

from arjepa_pl.evaluation.frozen import FrozenEncoderModule
from arjepa_pl.evaluation.intervals import TopKCounts
from arjepa_pl.evaluation.multiview import average_view_probabilities, concatenate_segments
from arjepa_pl.evaluation.tasks import ProbeTask, as_tasks, check_listed_labels
from arjepa_pl.models import AttentiveClassifier, LinearClassifier, VisionTransformer


class Probe(FrozenEncoderModule):
    """Attentive or linear probes on a frozen encoder, for one or more label tasks and encoder layers.

    Metrics: `val/<task>/l<layer>/top1` (the share of evaluated clips classified right) with its 95 %
    Wilson interval `.../top1_low`, `.../top1_high` (evaluation-split sampling noise, see
    arjepa_pl.evaluation.intervals), `/top5` for tasks of more than 5 classes, `val/clips` (clips
    evaluated) and `val/loss`, with `layer` the encoder block read (0-based); the same under `test/`.
    With the feature cache (arjepa_pl.evaluation.FrozenFeatureData) also `features/l<layer>/rankme`
    and `features/l<layer>/within_clip_share` of the frozen features of the evaluation split.

    Args:
        tasks: what to predict from each clip's label (ProbeTask: name, num_classes, divisor, modulo).
        encoder_checkpoint: the encoder to probe: an arjepa_pl checkpoint, an exported encoder, or an
            official V-JEPA / I-JEPA checkpoint; it brings its own architecture.
        encoder: used only when encoder_checkpoint is null: a randomly initialised frozen encoder of
            this architecture (the no-pretraining baseline every comparison needs).
        encoder_which: which encoder of the checkpoint: "auto" (the objective's representation, the
            target encoder of official checkpoints), "target_encoder" or "encoder".
        probe: "attentive" (V-JEPA's cross-attention pooler) or "linear" (mean-pooled features).
        layers: encoder blocks whose features are probed (0-based; -1 = the last).
        self_attn_blocks: attentive probe only: self-attention blocks over the tokens before the
            pooler (V-JEPA: 0; V-JEPA 2: 3).
        num_heads: attentive probe heads (default: the encoder's).
        cross_attn_proj: attentive probe only: false = V-JEPA 2's pooler (no projection after its
            cross-attention).
        segments: V-JEPA 2's protocol: the tokens of a video's `segments` temporal segments (set the
            data's num_clips to it) are concatenated and classified together, per spatial crop;
            1 = every view is scored on its own.
        head_init: a transformers VJEPA2ForVideoClassification directory or `hf:<hub id>`: every
            attentive head starts from its pooler, and from its classifier where the class count
            agrees (arjepa_pl.interop.huggingface.init_probe_heads); the heads take its pooler's shape.
        lr / start_lr / final_lr / warmup_steps / weight_decay / final_weight_decay: the probe's AdamW
            schedule (V-JEPA's protocol: lr 1e-3, cosine, weight decay 0.01).
        optim_args: betas, eps, total_steps, parallelism: see arjepa_pl.optim.ScheduledModule.
    """

    def __init__(
        self,
        tasks: list[ProbeTask],
        encoder_checkpoint: Optional[str] = None,
        encoder: Optional[VisionTransformer] = None,
        encoder_which: Literal["auto", "target_encoder", "encoder"] = "auto",
        encoder_num_heads: Optional[int] = None,
        probe: Literal["attentive", "linear"] = "attentive",
        layers: Sequence[int] = (-1,),
        self_attn_blocks: int = 0,
        num_heads: Optional[int] = None,
        cross_attn_proj: bool = True,
        segments: int = 1,
        head_init: Optional[str] = None,
        lr: float = 1e-3,
        start_lr: float = 1e-3,
        final_lr: float = 0.0,
        warmup_steps: int = 0,
        weight_decay: float = 0.01,
        final_weight_decay: float = 0.01,
        **optim_args,
    ):
        super().__init__(lr=lr, start_lr=start_lr, final_lr=final_lr, warmup_steps=warmup_steps,
                         weight_decay=weight_decay, final_weight_decay=final_weight_decay, **optim_args)
        self.save_init_args()
        self.tasks = as_tasks(tasks, "a probe")
        self._train_labels_checked = False  # set when the fit starts (check_listed_labels)
        self.init_encoder(encoder_checkpoint, encoder, encoder_which, encoder_num_heads, layers)

        dim = self.extractor.embed_dim
        heads = num_heads or self.extractor.encoder.num_heads
        self.segments, hf_head = segments, None
        if head_init is not None:  # the heads take the shape of V-JEPA 2's pooler
            from arjepa_pl.interop.huggingface import read_probe_head

            hf_head = read_probe_head(head_init)
            self_attn_blocks, cross_attn_proj = hf_head.self_attn_blocks, False
        self.heads = nn.ModuleDict()
        self.val_metrics, self.test_metrics = nn.ModuleDict(), nn.ModuleDict()
        for task in self.tasks:
            for layer in self.layers:
                key = self.head_key(task, layer)
                self.heads[key] = (AttentiveClassifier(dim, task.num_classes, heads, self_attn_blocks, cross_attn_proj)
                                   if probe == "attentive" else LinearClassifier(dim, task.num_classes))
                for metrics in (self.val_metrics, self.test_metrics):
                    metrics[key] = nn.ModuleDict({f"top{k}": TopKCounts(k)
                                                  for k in (1, 5) if k == 1 or task.num_classes > 5})
        if hf_head is not None:
            hf_head.init(self.heads.values())

    @staticmethod
    def head_key(task: ProbeTask, layer: int) -> str:
        return f"{task.name}_l{layer}"

    # -- forward -------------------------------------------------------------------------------------
    def logits(self, batch: dict) -> tuple[dict[str, torch.Tensor], int]:
        """({head key: logits [B * V, classes]}, views V) of a batch of clips, or of their cached features."""
        self.check_batch(batch, "label")
        by_layer, views = self.features(batch)
        if self.segments > 1:  # V-JEPA 2: a video's segments classified together
            by_layer = {layer: concatenate_segments(f, views, self.segments)[0] for layer, f in by_layer.items()}
            views //= self.segments
        return {self.head_key(task, layer): self.heads[self.head_key(task, layer)](by_layer[layer])
                for task in self.tasks for layer in self.layers}, views

    def targets(self, batch: dict, check: bool = True) -> dict[str, torch.Tensor]:
        return {task.name: task.targets(batch["label"], check) for task in self.tasks}

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._train_labels_checked = check_listed_labels(self.trainer, lambda labels: self.targets({"label": labels}))

    def _loss(self, logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], views: int) -> torch.Tensor:
        # The heads are independent: the sum gives each its own unscaled gradient; logged as the mean.
        total: Union[float, torch.Tensor] = 0.0
        for task in self.tasks:
            target = targets[task.name].repeat_interleave(views)
            for layer in self.layers:
                total = total + F.cross_entropy(logits[self.head_key(task, layer)].float(), target)
        return cast(torch.Tensor, total)  # a tensor: there is at least one task and one layer

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits, views = self.logits(batch)
        loss = self._loss(logits, self.targets(batch, check=not self._train_labels_checked), views)
        self.log("train/loss", loss / len(self.heads), batch_size=batch["label"].size(0))
        return loss

    def _evaluate(self, batch: dict, stage: str, metrics: nn.ModuleDict) -> None:
        logits, views = self.logits(batch)
        targets = self.targets(batch)
        B = batch["label"].size(0)
        self.log(f"{stage}/loss", self._loss(logits, targets, views) / len(self.heads), sync_dist=True, batch_size=B)
        for task in self.tasks:
            for layer in self.layers:
                key = self.head_key(task, layer)
                probs = average_view_probabilities(logits[key], views)
                for metric in self._counts(metrics, key).values():
                    metric.update(probs, targets[task.name])

    @staticmethod
    def _counts(metrics: nn.ModuleDict, key: str) -> dict[str, TopKCounts]:
        return cast(dict[str, TopKCounts], dict(cast(nn.ModuleDict, metrics[key]).items()))

    def _log_epoch(self, stage: str, metrics: nn.ModuleDict) -> None:
        """Accuracies of the whole epoch (summed over ranks by the metrics), then reset for the next."""
        clips = 0.0
        for task in self.tasks:
            for layer in self.layers:
                for name, metric in self._counts(metrics, self.head_key(task, layer)).items():
                    accuracy, low, high, clips = metric.compute().tolist()
                    prefix = f"{stage}/{task.name}/l{layer}/{name}"
                    self.log(prefix, accuracy)
                    if name == "top1":
                        self.log_dict({f"{prefix}_low": low, f"{prefix}_high": high})
                    metric.reset()
        self.log(f"{stage}/clips", clips)
        # Statistics of the cached evaluation features, when the data module computed them.
        datamodule = getattr(self._trainer, "datamodule", None)
        stats = getattr(datamodule, "feature_stats", None)
        if stats:
            self.log_dict(dict(stats))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val", self.val_metrics)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test", self.test_metrics)
