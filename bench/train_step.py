"""Speed of one V-JEPA training step: forward, backward, AdamW, EMA update — and of one
autoregressive video step (ARVideo: the same encoder under the block-causal mask, MLP head, L2 on the
next tubelet's pixels, AdamW) on the same clips.

Bench config (issue #2): 16 frames of 64x64, patch 8, tubelet 2 (8x8x8 = 512 tokens), encoder
192 d x 6 layers x 3 heads, predictor 96 d x 3 layers, batch 8, the two default mask configurations,
fp32. Masks are drawn by the collator the DataLoader workers use, outside the timed region (workers
overlap it with the step). V-JEPA's public implementation runs this at ~1.8 steps/s on a 2-core CPU.

    python bench/train_step.py [--steps 20] [--warmup 3] [--threads N] [--device cpu|cuda] [--compile]
                               [--objectives vjepa ar_video] [--positions sincos rope_vjepa2]

--positions times the V-JEPA step once per position scheme (sin-cos tables; V-JEPA 2's rotary ones).

--compile also times the same step with every transformer block torch.compile'd (as the objective's
`compile: true` does), after a longer warm-up that absorbs the compilation.
"""

import argparse
import copy
import time
from typing import Callable, Optional

import torch

from arjepa_pl.masks import VJEPA_DEFAULT_MASKS, MaskCollator
from arjepa_pl.models import VisionTransformer
from arjepa_pl.objectives import VJEPA
from arjepa_pl.objectives.ar_video import ARVideo
from arjepa_pl.parallel import parallelize


def bench_batches(n: int, batch: int, frames: int, size: int, patch: int, tubelet: int, device: str,
                  distinct: Optional[int] = None) -> list[dict]:
    """n batches of random clips with real V-JEPA masks. Masks come from MaskCollator run on meta
    tensors (shapes only, no memory); `distinct` caps how many different clip tensors are made."""
    collate = MaskCollator(VJEPA_DEFAULT_MASKS, tubelet_size=tubelet, patch_size=patch, seed=0)
    clips = [torch.randn(batch, 3, frames, size, size, device=device) for _ in range(min(n, distinct or n))]
    batches = []
    for step in range(n):
        shapes = [{"video": torch.empty(3, frames, size, size, device="meta"), "label": 0, "index": i,
                   "epoch": 0, "position": step * batch + i} for i in range(batch)]
        masks = collate(shapes)["masks"]
        batches.append({"video": clips[step % len(clips)],
                        "masks": [{k: v.to(device) for k, v in m.items()} for m in masks]})
    return batches


def make_step(model: VJEPA, optimizer: torch.optim.Optimizer, autocast_dtype: Optional[torch.dtype] = None,
              clip: float = 10.0) -> Callable[[dict, int], float]:
    """One optimizer step as the LightningModule takes it: loss, backward, clip, AdamW, EMA."""
    device_type = next(model.parameters()).device.type

    def step(batch: dict, i: int) -> float:
        with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss, _ = model.jepa_loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_target(model.momentum_at(i))
        return loss.item()  # waits for the step to finish (also on CUDA)

    return step


def time_steps(step: Callable[[dict, int], float], batches: list[dict], warmup: int) -> tuple[float, float]:
    """(steps per second over batches[warmup:], last loss)."""
    for i in range(warmup):
        step(batches[i], i)
    start = time.perf_counter()
    for i in range(warmup, len(batches)):
        loss = step(batches[i], i)
    return (len(batches) - warmup) / (time.perf_counter() - start), loss


def bench_vjepa(args) -> None:
    for positions in args.positions:
        torch.manual_seed(0)
        bench_vjepa_positions(args, positions)


def bench_vjepa_positions(args, positions: str) -> None:
    encoder = VisionTransformer(embed_dim=192, depth=6, num_heads=3, patch_size=8, tubelet_size=2, positions=positions)
    model = VJEPA(encoder, predictor_embed_dim=96, predictor_depth=3, predictor_num_heads=3,
                  total_steps=1000).to(args.device)
    batches = bench_batches(args.warmup + args.steps, batch=8, frames=16, size=64, patch=8, tubelet=2,
                            device=args.device)
    rate, loss = time_steps(make_step(model, model.configure_optimizers()), batches, args.warmup)
    ctx = [m["context"].shape[1] for m in batches[-1]["masks"]]
    tgt = [m["target"].shape[1] for m in batches[-1]["masks"]]
    print(f"vjepa train step  positions={positions} device={args.device} threads={torch.get_num_threads()} fp32 "
          f"batch=8 tokens=512 context={ctx} target={tgt}")
    print(f"  {rate:.2f} steps/s  {rate * 8:.1f} clips/s  {1000 / rate:.0f} ms/step  (last loss {loss:.4f})")
    if args.compile:
        model = copy.deepcopy(model)  # the same networks (their weights do not matter for speed)
        parallelize(model, compile=True)
        # Context sizes vary from batch to batch: the first few shapes compile (then dynamic shapes).
        warmup = max(args.warmup, 6)
        batches = bench_batches(warmup + args.steps, batch=8, frames=16, size=64, patch=8, tubelet=2,
                                device=args.device)
        start = time.perf_counter()
        rate, loss = time_steps(make_step(model, model.configure_optimizers()), batches, warmup)
        print(f"  compiled blocks: {rate:.2f} steps/s  {rate * 8:.1f} clips/s  {1000 / rate:.0f} ms/step  "
              f"(last loss {loss:.4f}; compile + warm-up + timing {time.perf_counter() - start:.0f} s)")


def bench_ar_video(args) -> None:
    encoder = VisionTransformer(embed_dim=192, depth=6, num_heads=3, patch_size=8, tubelet_size=2)
    model = ARVideo(encoder, residual=True, total_steps=1000).to(args.device)
    optimizer = model.configure_optimizers()
    clips = [torch.randn(8, 3, 16, 64, 64, device=args.device) for _ in range(args.warmup + args.steps)]

    def step(video: torch.Tensor, i: int) -> float:
        loss = model.step_loss(video)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    rate, loss = time_steps(step, clips, args.warmup)
    print(f"ar_video train step  device={args.device} threads={torch.get_num_threads()} fp32 batch=8 tokens=512 "
          f"(8 steps x 64, block-causal, head 192-768-384)")
    print(f"  {rate:.2f} steps/s  {rate * 8:.1f} clips/s  {1000 / rate:.0f} ms/step  (last loss {loss:.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="also time the V-JEPA step with compiled blocks")
    parser.add_argument("--objectives", nargs="+", choices=["vjepa", "ar_video"], default=["vjepa", "ar_video"])
    parser.add_argument("--positions", nargs="+", choices=["sincos", "rope", "rope_vjepa2"], default=["sincos"],
                        help="V-JEPA: time the step with each position scheme")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.objectives:
        torch.manual_seed(0)
        {"vjepa": bench_vjepa, "ar_video": bench_ar_video}[name](args)


if __name__ == "__main__":
    main()
