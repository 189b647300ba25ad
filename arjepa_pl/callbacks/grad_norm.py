"""The gradient norm, the first thing to look at when a loss spikes or a JEPA run diverges."""

from __future__ import annotations

import lightning.pytorch as L
import torch


def total_grad_norm(parameters) -> torch.Tensor:
    """L2 norm of all gradients together (fp32), like clip_grad_norm_ reports it, without clipping."""
    grads = [p.grad.detach() for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads]))


class GradNormMonitor(L.Callback):
    """Logs train/grad_norm on every optimizer step, before gradient clipping (Lightning calls
    on_before_optimizer_step after unscaling fp16 gradients and before clipping them).

    Under FSDP each rank sees only its shard: the value is rank 0's shard norm.
    """

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        pl_module.log("train/grad_norm", total_grad_norm(params), on_step=True, on_epoch=False, batch_size=1)
