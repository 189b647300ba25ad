"""Throughput, time spent waiting for data, FLOPs / MFU and peak memory of a training run.

Step time is host wall time from one `on_train_batch_end` to the next, averaged over a window of
steps (no CUDA synchronisation: in steady state the host runs at the device's pace). Steps broken
by validation, a checkpoint or the FLOP count are left out, so every number describes training.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from typing import Optional

import lightning.pytorch as L
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

if sys.platform != "win32":  # Unix only
    import resource

# Dense (no sparsity) peak tensor throughput in TFLOP/s, from NVIDIA's data sheets. The first entry
# whose name fragment is in torch.cuda.get_device_name() wins, so specific names come first.
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("h200 nvl", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("h200", {"bf16": 989.5, "fp16": 989.5, "tf32": 494.5, "fp32": 67.0}),
    ("h100 nvl", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("h100 pcie", {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.0}),
    ("h100", {"bf16": 989.5, "fp16": 989.5, "tf32": 494.5, "fp32": 67.0}),  # SXM ("H100 80GB HBM3")
    ("a100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("l40s", {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6}),
    ("l40", {"bf16": 181.0, "fp16": 181.0, "tf32": 90.5, "fp32": 90.5}),
    ("l4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    ("a10g", {"bf16": 70.0, "fp16": 70.0, "tf32": 35.0, "fp32": 31.2}),
    ("a10", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    ("rtx 4090", {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6}),
    ("rtx 3090", {"bf16": 71.0, "fp16": 71.0, "tf32": 35.6, "fp32": 35.6}),
    ("v100-pcie", {"fp16": 112.0, "fp32": 14.0}),
    ("v100", {"fp16": 125.0, "fp32": 15.7}),
    ("t4", {"fp16": 65.0, "fp32": 8.1}),
]


def compute_dtype(precision: str) -> str:
    """The matmul number format of a Lightning precision string: bf16, fp16, tf32, fp32 or fp64."""
    if "bf16" in precision:
        return "bf16"
    if "16" in precision:
        return "fp16"
    if "64" in precision:
        return "fp64"
    return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def peak_tflops(device_name: str, dtype: str) -> Optional[float]:
    """Peak TFLOP/s of a GPU for `dtype` from PEAK_TFLOPS; None when unknown. tf32 falls back to fp32
    on GPUs without TF32 tensor cores (they run fp32 matmuls in fp32)."""
    name = device_name.lower()
    for fragment, peaks in PEAK_TFLOPS:
        if fragment in name:
            return peaks.get(dtype, peaks.get("fp32") if dtype == "tf32" else None)
    return None


def _attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# torch's counter knows the CUDA attention kernels but not the CPU one, which ViTs use on a laptop:
# count it with torch's own formulas.
CPU_ATTENTION_FLOPS = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    CPU_ATTENTION_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_flops,
                      torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _attention_backward_flops}


def batch_clips_and_tokens(pl_module: L.LightningModule, batch) -> tuple[int, Optional[int]]:
    """(clips, patch tokens) in a batch: clips from batch["video"] (or the first tensor), tokens
    from the module's encoder grid when it has one."""
    video = batch.get("video") if isinstance(batch, dict) else None
    if video is None:
        if isinstance(batch, dict):  # e.g. world-model windows {"frames", "actions", ...}: its first tensor
            first = next((v for v in batch.values() if torch.is_tensor(v) and v.ndim), None)
        else:
            first = batch[0] if isinstance(batch, (list, tuple)) else batch
        return (int(first.size(0)) if torch.is_tensor(first) else 1), None
    encoder = getattr(pl_module, "encoder", None)
    tokens = None
    if encoder is not None and hasattr(encoder, "token_grid"):
        tokens = video.size(0) * math.prod(encoder.token_grid(video.shape))
    return int(video.size(0)), tokens


def peak_rss_bytes() -> Optional[int]:
    """Peak resident memory of this process (not its DataLoader workers)."""
    if sys.platform == "win32":
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux


class PerformanceMonitor(L.Callback):
    """Logs perf/* every training step (the trainer writes them every `log_every_n_steps`).

    perf/step_time, perf/clips_per_sec, perf/tokens_per_sec (all devices), perf/data_wait (fraction
    of step time between steps, i.e. waiting for the next batch), perf/tflops (model FLOPs per second
    per device: forward + backward counted once with torch.utils.flop_counter on the first batch),
    perf/mfu (on GPUs of PEAK_TFLOPS, or with `peak_tflops`), perf/peak_mem_gib (CUDA),
    perf/peak_rss_gib (host process).

    Args:
        window: steps averaged into each value.
        count_flops: count the FLOPs of the first training batch (one slower step).
        peak_tflops: the device's peak TFLOP/s for MFU, overriding the table.
    """

    def __init__(self, window: int = 20, count_flops: bool = True, peak_tflops: Optional[float] = None):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window, self.count_flops, self.peak_tflops = window, count_flops, peak_tflops
        self._steps: deque = deque(maxlen=window)  # (seconds, seconds waiting, clips, tokens)
        self._last_end: Optional[float] = None
        self._wait: Optional[float] = None
        self._counter: Optional[FlopCounterMode] = None  # set while the first batch is being counted
        self._counting = self._saw_backward = False
        self.flops_per_clip: Optional[float] = None
        self._peak: Optional[float] = None

    # -- what breaks a step's timing ---------------------------------------------------------------
    def _interrupt(self, *args, **kwargs) -> None:
        self._last_end = None

    on_validation_start = on_validation_end = on_save_checkpoint = on_train_epoch_start = _interrupt

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._peak = self.peak_tflops
        device = pl_module.device
        if device.type == "cuda":
            if self._peak is None:
                self._peak = peak_tflops(torch.cuda.get_device_name(device), compute_dtype(str(trainer.precision)))
            torch.cuda.reset_peak_memory_stats(device)

    # -- per step ------------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.perf_counter()
        self._wait = None if self._last_end is None else now - self._last_end
        if self.count_flops and self.flops_per_clip is None:
            self._counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)
            self._saw_backward = False
            self._counter.__enter__()
            self._counting = True

    def _stop_counting(self) -> None:
        if self._counting:
            assert self._counter is not None  # counting means a counter was entered
            self._counter.__exit__(None, None, None)
            self._counting = False

    def on_after_backward(self, trainer, pl_module) -> None:
        if self._counting:  # forward + backward of this batch, not the optimizer step
            self._stop_counting()
            self._saw_backward = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        clips, tokens = batch_clips_and_tokens(pl_module, batch)
        counter = self._counter
        counted = counter is not None
        if counter is not None:
            self._stop_counting()
            if self._saw_backward:  # else (a skipped step) count the next batch
                self.flops_per_clip = counter.get_total_flops() / clips
            self._counter = None
        now = time.perf_counter()
        # Skip the counted step (it ran slower) and one interrupted mid-step (another callback saved a
        # checkpoint, which resets _last_end).
        if self._wait is not None and self._last_end is not None and not counted:
            self._steps.append((now - self._last_end, self._wait, clips, tokens))
        self._last_end = now
        if self._steps:
            metrics = self.metrics(trainer.world_size, pl_module.device)
            # Not prog_bar (the progress line reads it when it draws: arjepa_pl.callbacks.progress).
            pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._stop_counting()
        self._counter = None


    # -- numbers -------------------------------------------------------------------------------------
    def metrics(self, world_size: int, device: torch.device) -> dict[str, float]:
        """The window's averages; throughputs are per second of step time, summed over `world_size` devices."""
        seconds = sum(s[0] for s in self._steps)
        clips = sum(s[2] for s in self._steps)
        out = {"perf/step_time": seconds / len(self._steps),
               "perf/clips_per_sec": world_size * clips / seconds,
               "perf/data_wait": sum(s[1] for s in self._steps) / seconds}
        if all(s[3] is not None for s in self._steps):
            out["perf/tokens_per_sec"] = world_size * sum(s[3] for s in self._steps) / seconds
        if self.flops_per_clip is not None:
            flops_per_sec = self.flops_per_clip * clips / seconds
            out["perf/tflops"] = flops_per_sec / 1e12
            if self._peak:
                out["perf/mfu"] = flops_per_sec / (self._peak * 1e12)
        if device.type == "cuda":
            out["perf/peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        rss = peak_rss_bytes()
        if rss is not None:
            out["perf/peak_rss_gib"] = rss / 2**30
        return out
