"""Autoregressive video over discrete patch tokens: a k-means++ patch tokenizer fitted in the
framework, then the block-causal ViT predicts every code of the next step with cross-entropy.

The tokenizer is fitted on the first `fit` (on patches of training clips), saved to `tokenizer_path`
and loaded from there by later runs; its codebook is also a buffer of the model, so checkpoints carry
it and `predict --ckpt_path` needs nothing else. The encoder sees the tokenized clip (each patch
replaced by its code's centre), so training and rollouts feed it the same kind of input.
"""

import math
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics.image import PeakSignalNoiseRatio

from arjepa_pl.models import FeatureExtractor, PatchKMeans, VisionTransformer, patchify, sample_logits, tokenize_clip
from arjepa_pl.objectives.ar_metrics import BitsPerUnit, CodeUsage
from arjepa_pl.objectives.ar_video import NextStepObjective


class ARVideoTokens(NextStepObjective):
    """Next-step cross-entropy over k-means patch codes.

    Metrics (validation): `val/bits_per_dim` = total NLL / (ln 2 * predicted pixel values), the
    tokenizer's reconstruction `val/tokenizer_psnr` (dB, pixels in [0, 1]), and codebook usage
    (`val/codebook_used` fraction of codes occurring, `val/codebook_perplexity`).

    Args:
        encoder: the V-JEPA ViT (video=True); its tubelet is one step and its patch one token.
        num_codes: tokenizer codebook size (the vocabulary).
        tokenizer_path: where the fitted tokenizer is saved and, when it exists, loaded from instead of
            fitting again (None: fit on every new run, keep it only in checkpoints).
        tokenizer_clips: training clips (evenly spread over the training set) whose patches the
            tokenizer is fitted on.
        tokenizer_iters: Lloyd iterations after k-means++ initialisation.
        tokenizer_seed: seed of the k-means++ draws.
        temperature / top_k: how rollouts draw codes (temperature 0 = the most likely code).
        head_hidden, prefix_steps, rollout_context_frames: see NextStepObjective.
        optim_args: the optimiser, its schedules and parallelism: see arjepa_pl.optim.ScheduledModule.
    """

    def __init__(
        self,
        encoder: VisionTransformer,
        num_codes: int = 512,
        tokenizer_path: Optional[str] = None,
        tokenizer_clips: int = 48,
        tokenizer_iters: int = 20,
        tokenizer_seed: int = 0,
        temperature: float = 0.0,
        top_k: Optional[int] = None,
        head_hidden: Optional[int] = None,
        prefix_steps: int = 0,
        rollout_context_frames: int = 8,
        **optim_args,
    ):
        super().__init__(encoder, num_codes, head_hidden, prefix_steps, rollout_context_frames, **optim_args)
        if tokenizer_clips < 1 or tokenizer_iters < 0:
            raise ValueError("tokenizer_clips must be >= 1 and tokenizer_iters >= 0, "
                             f"got {tokenizer_clips}, {tokenizer_iters}")
        self.save_init_args()
        self.tokenizer = PatchKMeans(num_codes, self.patch_dim)
        self.tokenizer_path = tokenizer_path
        self.tokenizer_clips, self.tokenizer_iters = tokenizer_clips, tokenizer_iters
        self.tokenizer_seed = tokenizer_seed
        self.temperature, self.top_k = temperature, top_k
        self.val_bits_per_dim = BitsPerUnit()
        self.val_code_usage = CodeUsage(num_codes)
        self.val_tokenizer_psnr = PeakSignalNoiseRatio(data_range=1.0)

    # -- tokenizer -----------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if bool(self.tokenizer.fitted):
            return
        path = Path(self.tokenizer_path) if self.tokenizer_path else None
        if path is not None and path.is_file():
            stats = self.tokenizer.load(path)
            rank_zero_info(f"tokenizer: loaded {self.tokenizer.num_codes} codes from {path} ({stats})")
            return
        if stage != "fit":
            return  # validate / predict: the checkpoint brings the codebook (checked when it is used)
        stats = self.tokenizer.fit(self._fit_patches(), self.tokenizer_iters, self.tokenizer_seed)
        # Every rank fits the same data with the same seed; rank 0's codebook is made authoritative anyway.
        self.tokenizer.codebook.copy_(self.trainer.strategy.broadcast(self.tokenizer.codebook, src=0))
        stats["psnr_db"] = self._psnr_of_mse(stats["mse"])
        rank_zero_info(f"tokenizer: fitted {self.tokenizer.num_codes} codes on {stats['vectors']} patches, "
                       f"reconstruction PSNR {stats['psnr_db']:.2f} dB, {stats['codes_used']} codes used")
        if path is not None and self.global_rank == 0:
            self.tokenizer.save(path, stats)
            rank_zero_info(f"tokenizer: saved to {path}")

    def _fit_patches(self) -> torch.Tensor:
        """Patches of `tokenizer_clips` training clips at evenly spread indices: the same on every rank."""
        # Trainer.datamodule is set by Lightning's DataConnector but not declared on the class.
        dataset = getattr(self.trainer.datamodule, "train_dataset", None)  # type: ignore[attr-defined]
        if dataset is None or not hasattr(dataset, "__getitem__"):
            raise ValueError("fitting the tokenizer needs a datamodule with a map-style `train_dataset` "
                             "(e.g. data_modules.VideoDataModule), or an existing tokenizer_path")
        n = min(self.tokenizer_clips, len(dataset))
        indices = torch.linspace(0, len(dataset) - 1, n).round().long().unique().tolist()
        video = torch.stack([dataset[i]["video"] for i in indices])
        return patchify(video, self.encoder.tubelet_size, self.encoder.patch_size).reshape(-1, self.patch_dim)

    def _psnr_of_mse(self, mse_normalised: float) -> float:
        """PSNR in [0, 1] pixels of a mean squared error measured in normalised units (approximate:
        uses the mean per-channel std)."""
        std = sum(self.pixel_std) / len(self.pixel_std)
        return 10 * math.log10(1.0 / max(mse_normalised * std**2, 1e-12))

    def tokenize(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes [B, N], the tokenized clip [B, C, T, H, W]: every patch replaced by its code's centre)."""
        return tokenize_clip(self.tokenizer, video, self.encoder.tubelet_size, self.encoder.patch_size)

    def feature_extractor(self) -> FeatureExtractor:
        """The block-causal encoder fed tokenized clips, as in training (see NextStepObjective)."""
        return FeatureExtractor(self.encoder, self.tokenizer, block_causal=True, prefix_steps=self.prefix_steps)

    # -- objective -----------------------------------------------------------------------------------
    def model_input(self, video: torch.Tensor) -> torch.Tensor:
        return self.tokenize(video)[1]

    def step_loss(self, video: torch.Tensor, metrics: bool = False) -> torch.Tensor:
        codes, tokenized = self.tokenize(video)
        logits, target = self.shift(self.training_outputs(tokenized), codes, video)
        nll = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum")
        if metrics:
            self.val_bits_per_dim.update(nll, target.numel() * self.patch_dim)
            self.val_code_usage.update(codes)
            self.val_tokenizer_psnr.update(self.to_pixels(tokenized), self.to_pixels(video))
        return nll / target.numel()

    def on_validation_epoch_end(self) -> None:
        usage = self.val_code_usage.compute()
        self.log_dict({"val/bits_per_dim": self.val_bits_per_dim.compute(),
                       "val/tokenizer_psnr": self.val_tokenizer_psnr.compute(),
                       "val/codebook_used": usage["fraction_used"],
                       "val/codebook_perplexity": usage["perplexity"]})
        for metric in (self.val_bits_per_dim, self.val_code_usage, self.val_tokenizer_psnr):
            metric.reset()

    def next_step_patches(self, outputs: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.decode(sample_logits(outputs, self.temperature, self.top_k))
