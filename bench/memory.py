"""Per-rank memory of the weights and the AdamW state, DDP vs FSDP2, at 2 ranks on the CPU (gloo).

Trains V-JEPA for 2 optimizer steps with each strategy through the Lightning Trainer, exactly as
`--trainer.strategy ddp` / `fsdp2` would, then counts on every rank the bytes of the parameters it
holds (student, predictor and EMA teacher) and of its optimizer state (AdamW's two moments). DDP
replicates all of it; FSDP2 keeps 1/N of every tensor, teacher included. Target: FSDP2 <= 0.55 x DDP.

    python bench/memory.py [--preset base] [--ranks 2]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import lightning.pytorch as L
import torch
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from arjepa_pl.models import VisionTransformer  # noqa: E402
from arjepa_pl.objectives import VJEPA  # noqa: E402
from arjepa_pl.strategies import FSDP2Strategy  # noqa: E402,F401  (registers "fsdp2")
from data_modules.datamodules import objective_collate_fn  # noqa: E402

TARGET = 0.55


class Clips(Dataset):
    """Small random clips: memory of weights and optimizer state does not depend on the input size."""

    def __len__(self):
        return 64

    def __getitem__(self, i):
        return {"video": torch.randn(3, 4, 32, 32, generator=torch.Generator().manual_seed(i)), "label": 0,
                "index": i, "epoch": 0, "position": i}


class ClipData(L.LightningDataModule):
    def train_dataloader(self):  # collated with V-JEPA's mask collator, as data_modules' modules do
        return DataLoader(Clips(), batch_size=2, collate_fn=objective_collate_fn(self.trainer))


def local_bytes(tensors) -> int:
    """Bytes of distinct storages this rank holds (a DTensor counts its local shard)."""
    seen, total = set(), 0
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        t = t.to_local() if hasattr(t, "to_local") else t
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


class Measure(L.Callback):
    def __init__(self, out: str):
        self.out = out

    def on_train_end(self, trainer, pl_module):
        optimizer = trainer.optimizers[0]
        states = [v for state in optimizer.state.values() for v in state.values()]
        row = {"rank": trainer.global_rank, "params": local_bytes(pl_module.parameters()),
               "optimizer": local_bytes(states)}
        Path(f"{self.out}.rank{trainer.global_rank}").write_text(json.dumps(row))


def train(strategy: str, preset: str, ranks: int, out: str) -> None:
    torch.manual_seed(0)
    encoder = VisionTransformer(preset, patch_size=16, tubelet_size=2)
    model = VJEPA(encoder, predictor_embed_dim=384, predictor_depth=12, total_steps=10)
    trainer = L.Trainer(accelerator="cpu", devices=ranks, strategy=strategy, max_steps=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Measure(out)])
    trainer.fit(model, ClipData())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base", help="ViT size: tiny, small, base, large, huge")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--strategy", help=argparse.SUPPRESS)  # set for the worker runs
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.strategy:
        return train(args.strategy, args.preset, args.ranks, args.out)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in ("ddp", "fsdp2"):
            out = f"{tmp}/{strategy}"
            subprocess.run([sys.executable, __file__, "--strategy", strategy, "--preset", args.preset,
                            "--ranks", str(args.ranks), "--out", out], env=env, check=True, capture_output=True)
            results[strategy] = [json.loads(Path(f"{out}.rank{r}").read_text()) for r in range(args.ranks)]

    mib = 2**20
    print(f"V-JEPA ViT-{args.preset}/16 (student + predictor + EMA teacher), AdamW, {args.ranks} ranks, per rank:")
    print(f"  {'strategy':<8} {'rank':>4} {'params MiB':>11} {'optimizer MiB':>14} {'total MiB':>10}")
    totals = {}
    for strategy, rows in results.items():
        for row in rows:
            total = row["params"] + row["optimizer"]
            totals.setdefault(strategy, []).append(total)
            print(f"  {strategy:<8} {row['rank']:>4} {row['params'] / mib:>11.1f} {row['optimizer'] / mib:>14.1f} "
                  f"{total / mib:>10.1f}")
    ratio = max(totals["fsdp2"]) / max(totals["ddp"])
    print(f"  FSDP2 / DDP (largest rank): {ratio:.3f}  (target <= {TARGET}: {'met' if ratio <= TARGET else 'NOT met'})")


if __name__ == "__main__":
    main()
