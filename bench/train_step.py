"""Speed of one V-JEPA training step: forward, backward, AdamW, EMA update — and of one
autoregressive video step (ARVideo: the same encoder under the block-causal mask, MLP head, L2 on the
next tubelet's pixels, AdamW) on the same clips.

Bench config (issue #2): 16 frames of 64x64, patch 8, tubelet 2 (8x8x8 = 512 tokens), encoder
192 d x 6 layers x 3 heads, predictor 96 d x 3 layers, batch 8, the two default mask configurations,
fp32. Masks are drawn by the collator the DataLoader workers use, outside the timed region (workers
overlap it with the step). V-JEPA's public implementation runs this at ~1.8 steps/s on a 2-core CPU.

    python bench/train_step.py [--steps 20] [--warmup 3] [--threads N] [--device cpu|cuda] [--compile]
                               [--objectives vjepa ar_video] [--positions sincos rope_vjepa2]

--positions times each step once per position scheme (sin-cos tables; V-JEPA 2's rotary ones).

--compile also times the same step with every transformer block torch.compile'd (as the objective's
`compile: true` does), after a longer warm-up that absorbs the compilation.

Where the time goes: bench/profile_step.py (a per-region table and a trace). Old code against new on a
busy machine: bench/compare_steps.py (interleaved, best-of-N, in one run).
"""

import argparse
import contextlib
import copy
import time
from typing import Any, Callable, Optional

import torch

from arjepa_pl.masks import VJEPA_DEFAULT_MASKS, MaskCollator
from arjepa_pl.models import VisionTransformer
from arjepa_pl.objectives import VJEPA
from arjepa_pl.objectives.ar_video import ARVideo
from arjepa_pl.parallel import parallelize

OBJECTIVES = ("vjepa", "ar_video")
BATCH, FRAMES, SIZE, PATCH, TUBELET = 8, 16, 64, 8, 2  # the bench shape


def region(name: str):
    """A profiler region (torch.profiler.record_function) while a profiler runs, nothing otherwise:
    the timed steps pay nothing for the profile mode's labels."""
    if torch.autograd.profiler._is_profiler_enabled:
        return torch.profiler.record_function(f"region::{name}")
    return contextlib.nullcontext()


def bench_batches(n: int, batch: int, frames: int, size: int, patch: int, tubelet: int, device: str,
                  distinct: Optional[int] = None, masks: bool = True) -> list[dict]:
    """n batches of random clips with real V-JEPA masks. Masks come from MaskCollator run on meta
    tensors (shapes only, no memory); `distinct` caps how many different clip tensors are made.
    Batches stay on the CPU (pinned when `device` is CUDA): the step moves them, as training does."""
    collate = MaskCollator(VJEPA_DEFAULT_MASKS, tubelet_size=tubelet, patch_size=patch, seed=0)
    pin = torch.device(device).type == "cuda"
    clips = [torch.randn(batch, 3, frames, size, size) for _ in range(min(n, distinct or n))]
    clips = [c.pin_memory() if pin else c for c in clips]
    batches: list[dict[str, Any]] = []
    for step in range(n):
        batches.append({"video": clips[step % len(clips)]})
        if masks:
            shapes = [{"video": torch.empty(3, frames, size, size, device="meta"), "label": 0, "index": i,
                       "epoch": 0, "position": step * batch + i} for i in range(batch)]
            batches[-1]["masks"] = collate(shapes)["masks"]
    return batches


def to_device(batch: Any, device: torch.device) -> Any:
    """What Lightning's batch transfer does: every tensor to the device, without blocking the host."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def objective_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """The training loss as the objective's training_step computes it (without its logging)."""
    if isinstance(model, VJEPA):
        return model.jepa_loss(batch)[0]
    return model.step_loss(batch["video"])


def make_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, autocast_dtype: Optional[torch.dtype] = None,
              clip: float = 10.0) -> Callable[[dict, int], torch.Tensor]:
    """One optimizer step as the LightningModule takes it: batch to the device, loss, backward, clip,
    AdamW, EMA (V-JEPA). Returns the loss without waiting for it (time_steps waits once, at the end)."""
    device = next(model.parameters()).device
    ema = getattr(model, "target_encoder", None) is not None

    def step(batch: dict, i: int) -> torch.Tensor:
        with region("data to device"):
            batch = to_device(batch, device)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            with region("forward + loss"):
                loss = objective_loss(model, batch)
        with region("backward"):
            loss.backward()
        with region("clip gradients"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        with region("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if ema:
            with region("EMA"):
                model.update_target(model.momentum_at(i))
        return loss.detach()

    return step


def time_steps(step: Callable[[dict, int], torch.Tensor], batches: list[dict], warmup: int) -> tuple[float, float]:
    """(steps per second over batches[warmup:], last loss). Waits for the device after the warm-up and
    after the last step only (.item()), so the host may run ahead of the device as in training."""
    for i in range(warmup):
        loss = step(batches[i], i)
    if warmup:
        loss.item()
    start = time.perf_counter()
    for i in range(warmup, len(batches)):
        loss = step(batches[i], i)
    last = loss.item()
    return (len(batches) - warmup) / (time.perf_counter() - start), last


def build(objective: str, device: str, positions: str = "sincos") -> torch.nn.Module:
    """The bench model of `objective` (same encoder for both; `positions`: see VisionTransformer), seeded."""
    torch.manual_seed(0)
    encoder = VisionTransformer(embed_dim=192, depth=6, num_heads=3, patch_size=PATCH, tubelet_size=TUBELET,
                                positions=positions)
    if objective == "vjepa":
        model: torch.nn.Module = VJEPA(encoder, predictor_embed_dim=96, predictor_depth=3, predictor_num_heads=3,
                                       total_steps=1000)
    elif objective == "ar_video":
        model = ARVideo(encoder, residual=True, total_steps=1000)
    else:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    return model.to(device)


def describe(objective: str, device: str, batch: dict, positions: str = "sincos") -> str:
    head = (f"{objective} train step  positions={positions} device={device} threads={torch.get_num_threads()} "
            f"fp32 batch={BATCH} tokens=512")
    if objective == "vjepa":
        ctx = [m["context"].shape[1] for m in batch["masks"]]
        tgt = [m["target"].shape[1] for m in batch["masks"]]
        return f"{head} context={ctx} target={tgt}"
    return f"{head} (8 steps x 64, block-causal, head 192-768-384)"


def bench(objective: str, args, positions: str = "sincos") -> None:
    model = build(objective, args.device, positions)
    masks = objective == "vjepa"
    batches = bench_batches(args.warmup + args.steps, BATCH, FRAMES, SIZE, PATCH, TUBELET, args.device, masks=masks)
    rate, loss = time_steps(make_step(model, model.configure_optimizers()), batches, args.warmup)
    print(describe(objective, args.device, batches[-1], positions))
    print(f"  {rate:.2f} steps/s  {rate * BATCH:.1f} clips/s  {1000 / rate:.0f} ms/step  (last loss {loss:.4f})")
    if args.compile:
        model = copy.deepcopy(model)  # the same networks (their weights do not matter for speed)
        parallelize(model, compile=True)
        # Context sizes vary from batch to batch: the first few shapes compile (then dynamic shapes).
        warmup = max(args.warmup, 6)
        batches = bench_batches(warmup + args.steps, BATCH, FRAMES, SIZE, PATCH, TUBELET, args.device, masks=masks)
        start = time.perf_counter()
        rate, loss = time_steps(make_step(model, model.configure_optimizers()), batches, warmup)
        print(f"  compiled blocks: {rate:.2f} steps/s  {rate * BATCH:.1f} clips/s  {1000 / rate:.0f} ms/step  "
              f"(last loss {loss:.4f}; compile + warm-up + timing {time.perf_counter() - start:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="also time the step with compiled blocks")
    parser.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES))
    parser.add_argument("--positions", nargs="+", choices=["sincos", "rope", "rope_vjepa2"], default=["sincos"],
                        help="time each objective's step with each position scheme")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.objectives:
        for positions in args.positions:
            bench(name, args, positions)


if __name__ == "__main__":
    main()
