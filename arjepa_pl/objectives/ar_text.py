"""Byte-level causal language modelling with ByteGPT (the ViT's transformer Block, causal mask).

Batches are {"tokens": long [B, L + 1]} (data_modules.ByteTextDataModule): the model reads the first L
bytes and predicts bytes 2..L+1. Validation reports perplexity and bits/byte; `predict`
continues prompts with a KV cache ({"prompt": long [1, P], "text": str} batches).
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torchmetrics.text import Perplexity

from arjepa_pl.models import ByteGPT
from arjepa_pl.objectives.ar_metrics import BitsPerUnit
from arjepa_pl.optim import ScheduledModule


class ARText(ScheduledModule):
    """Next-byte cross-entropy.

    Args:
        model: the byte-level GPT.
        max_new_bytes / temperature / top_k: how `predict` samples (temperature 0 = greedy).
        sample_seed: seed of the sampling generator, so a predict run is reproducible.
        optim_args: the optimiser, its schedules and parallelism: see arjepa_pl.optim.ScheduledModule.
    """

    def __init__(
        self,
        model: ByteGPT,
        max_new_bytes: int = 256,
        temperature: float = 0.8,
        top_k: Optional[int] = 50,
        sample_seed: int = 0,
        **optim_args,
    ):
        super().__init__(**optim_args)
        if max_new_bytes < 1:
            raise ValueError(f"max_new_bytes must be >= 1, got {max_new_bytes}")
        self.save_init_args()
        self.model = model
        self.max_new_bytes, self.temperature = max_new_bytes, temperature
        self.top_k, self.sample_seed = top_k, sample_seed
        self.val_perplexity = Perplexity()
        self.val_bits_per_byte = BitsPerUnit()

    def nll(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(summed NLL in nats, logits [B, L, V], targets [B, L]) of a [B, L + 1] byte batch."""
        if tokens.ndim != 2 or tokens.size(1) < 2:
            raise ValueError(f"text batches must be [B, L + 1] bytes with L >= 1, got {tuple(tokens.shape)}")
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        logits = self.model(inputs)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum"), logits, targets

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        nll, _, targets = self.nll(batch["tokens"])
        loss = nll / targets.numel()
        self.log("train/loss", loss, batch_size=targets.size(0))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        nll, logits, targets = self.nll(batch["tokens"])
        self.val_perplexity.update(logits.float(), targets)
        self.val_bits_per_byte.update(nll, targets.numel())
        self.log("val/loss", nll / targets.numel(), prog_bar=True, sync_dist=True, batch_size=targets.size(0))

    def on_validation_epoch_end(self) -> None:
        self.log_dict({"val/perplexity": self.val_perplexity.compute(),
                       "val/bits_per_byte": self.val_bits_per_byte.compute()})
        self.val_perplexity.reset()
        self.val_bits_per_byte.reset()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        nll, _, targets = self.nll(batch["tokens"])
        self.log("test/loss", nll / targets.numel(), sync_dist=True, batch_size=targets.size(0))

    def on_predict_start(self) -> None:
        self._generator = torch.Generator(device=self.device).manual_seed(self.sample_seed)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Continue each prompt by max_new_bytes sampled bytes (KV cache)."""
        prompt = batch["prompt"]
        out = self.model.generate(prompt, self.max_new_bytes, self.temperature, self.top_k, generator=self._generator)
        return {"prompt": batch.get("text"), "sample": [bytes(row.tolist()).decode("utf-8", errors="replace")
                                                       for row in out[:, prompt.size(1):].cpu()]}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["model_config"] = dict(self.model.config)
