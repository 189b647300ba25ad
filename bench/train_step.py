"""Speed of one V-JEPA training step: forward, backward, AdamW, EMA update (fp32).

Bench config (issue #2): 16 frames of 64x64, patch 8, tubelet 2 (8x8x8 = 512 tokens), encoder
192 d x 6 layers x 3 heads, predictor 96 d x 3 layers, batch 8, the two default mask configurations.
Masks are drawn by the same collator the DataLoader workers use, outside the timed region (workers
overlap it with the step). The reference implementation runs this at ~1.8 steps/s on a 2-core CPU.

    python bench/train_step.py [--steps 20] [--warmup 3] [--threads N] [--device cpu|cuda]
"""

import argparse
import time

import torch

from arjepa_pl.masks import VJEPA_DEFAULT_MASKS, MaskCollator
from arjepa_pl.models import VisionTransformer
from arjepa_pl.objectives import VJEPA


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

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

    for i in range(args.warmup):
        step(batches[i], i)
    start = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        loss = step(batches[i], i)
    elapsed = time.perf_counter() - start
    rate = args.steps / elapsed
    ctx = [m["context"].shape[1] for m in batches[-1]["masks"]]
    tgt = [m["target"].shape[1] for m in batches[-1]["masks"]]
    print(f"vjepa train step  device={args.device} threads={torch.get_num_threads()} fp32 batch=8 tokens=512 "
          f"context={ctx} target={tgt}")
    print(f"  {rate:.2f} steps/s  {rate * 8:.1f} clips/s  {1000 / rate:.0f} ms/step  (last loss {loss:.4f})")


if __name__ == "__main__":
    main()
