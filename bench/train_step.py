"""Speed of one V-JEPA training step: forward, backward, AdamW, EMA update (fp32) — and of one
autoregressive video step (ARVideo: the same encoder under the block-causal mask, MLP head, L2 on the
next tubelet's pixels, AdamW) on the same clips.

Bench config (issue #2): 16 frames of 64x64, patch 8, tubelet 2 (8x8x8 = 512 tokens), encoder
192 d x 6 layers x 3 heads, predictor 96 d x 3 layers, batch 8, the two default mask configurations.
Masks are drawn by the same collator the DataLoader workers use, outside the timed region (workers
overlap it with the step). The reference implementation runs this at ~1.8 steps/s on a 2-core CPU.

    python bench/train_step.py [--steps 20] [--warmup 3] [--threads N] [--device cpu|cuda]
                               [--objectives vjepa ar_video]
"""

import argparse
import time

import torch

from arjepa_pl.masks import VJEPA_DEFAULT_MASKS, MaskCollator
from arjepa_pl.models import VisionTransformer
from arjepa_pl.objectives import VJEPA
from arjepa_pl.objectives.ar_video import ARVideo


def bench_batches(n: int, batch: int = 8, frames: int = 16, size: int = 64, device: str = "cpu") -> list[dict]:
    collate = MaskCollator(VJEPA_DEFAULT_MASKS, tubelet_size=2, patch_size=8, seed=0)
    batches = []
    for step in range(n):
        samples = [{"video": torch.randn(3, frames, size, size), "label": 0, "index": i, "epoch": 0,
                    "position": step * batch + i} for i in range(batch)]
        b = collate(samples)
        b["video"] = b["video"].to(device)
        b["masks"] = [{k: v.to(device) for k, v in m.items()} for m in b["masks"]]
        batches.append(b)
    return batches


def timed(step, batches: list[dict], warmup: int) -> tuple[float, float]:
    """(steps per second after `warmup` untimed steps, last loss)."""
    for i in range(warmup):
        step(batches[i], i)
    start = time.perf_counter()
    for i in range(warmup, len(batches)):
        loss = step(batches[i], i)
    return (len(batches) - warmup) / (time.perf_counter() - start), loss


def bench_vjepa(args) -> None:
    encoder = VisionTransformer(embed_dim=192, depth=6, num_heads=3, patch_size=8, tubelet_size=2)
    model = VJEPA(encoder, predictor_embed_dim=96, predictor_depth=3, predictor_num_heads=3,
                  total_steps=1000).to(args.device)
    optimizer = model.configure_optimizers()
    batches = bench_batches(args.warmup + args.steps, device=args.device)

    def step(batch: dict, i: int) -> float:
        loss, _ = model.jepa_loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_target(model.momentum_at(i))
        return loss.item()  # forces the step to finish (also on CUDA)

    rate, loss = timed(step, batches, args.warmup)
    ctx = [m["context"].shape[1] for m in batches[-1]["masks"]]
    tgt = [m["target"].shape[1] for m in batches[-1]["masks"]]
    print(f"vjepa train step  device={args.device} threads={torch.get_num_threads()} fp32 batch=8 tokens=512 "
          f"context={ctx} target={tgt}")
    print(f"  {rate:.2f} steps/s  {rate * 8:.1f} clips/s  {1000 / rate:.0f} ms/step  (last loss {loss:.4f})")


def bench_ar_video(args) -> None:
    encoder = VisionTransformer(embed_dim=192, depth=6, num_heads=3, patch_size=8, tubelet_size=2)
    model = ARVideo(encoder, residual=True, total_steps=1000).to(args.device)
    optimizer = model.configure_optimizers()
    batches = [torch.randn(8, 3, 16, 64, 64, device=args.device) for _ in range(args.warmup + args.steps)]

    def step(video: torch.Tensor, i: int) -> float:
        loss = model.step_loss(video)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    rate, loss = timed(step, batches, args.warmup)
    print(f"ar_video train step  device={args.device} threads={torch.get_num_threads()} fp32 batch=8 tokens=512 "
          f"(8 steps x 64, block-causal, head 192-768-384)")
    print(f"  {rate:.2f} steps/s  {rate * 8:.1f} clips/s  {1000 / rate:.0f} ms/step  (last loss {loss:.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--objectives", nargs="+", choices=["vjepa", "ar_video"], default=["vjepa", "ar_video"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.objectives:
        torch.manual_seed(0)
        {"vjepa": bench_vjepa, "ar_video": bench_ar_video}[name](args)


if __name__ == "__main__":
    main()
