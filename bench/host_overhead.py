"""The host time that activation checkpointing, FSDP2 and compile add to a training step, measured
where it shows: on the CPU, with ViT-L/16's layout (24 encoder blocks, the 24-block EMA teacher, a
12-block predictor: the same parameter tensors and FSDP2 units as bench/gpu_check.py's model) at a
width of 32 and 128 tokens per clip. The arithmetic is then small (though still a share of the eager
step: attention and matrix products), so what a mode adds to eager is the framework's own work:
Python, dispatch, hooks, per-parameter copies and casts. That work does not shrink with the model's
width: a GPU step shorter than it cannot hide it (the GPU waits for the host), so it is a floor under a
GPU's step time in that mode, and a reason why a larger batch per GPU raises MFU. FSDP2's collectives
run on gloo here (NCCL on a GPU).

    python bench/host_overhead.py [--objectives vjepa ar_video] [--modes eager eager_ac fsdp2 ...]
                                  [--steps 20] [--warmup 5]

Each mode is bench/gpu_check.py's (bf16 autocast; FSDP2 with bf16 all-gathers) on a one-process gloo
group, as on one GPU; the table gives ms per step and what each mode adds to eager.
"""

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/host_overhead.py` from anywhere
    sys.path.insert(0, str(REPO))

from bench.gpu_check import MODES, OBJECTIVES, run, single_process_group  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES))
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=["eager", "eager_ac", "fsdp2"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # What bench/gpu_check.py's run() reads: ViT-L's layout at width 32, 16 frames of 64^2 (128 tokens).
    setup = argparse.Namespace(device="cpu", tiny=False, width=32, size=64, steps=args.steps, warmup=args.warmup)
    if any(mode.startswith("fsdp2") for mode in args.modes):
        single_process_group("gloo")
    print(f"ViT-L/16 layout at width 32, batch 2, 128 tokens per clip, bf16 autocast, CPU, "
          f"{torch.get_num_threads()} thread(s); load average {Path('/proc/loadavg').read_text().split()[0]}")
    print(f"  {'objective':<10} {'mode':<18} {'ms/step':>8} {'added to eager':>15}")
    for objective in args.objectives:
        eager = None
        for mode in args.modes:
            result = run(objective, mode, setup, 2, flops=False, **MODES[mode])
            eager = result["ms_per_step"] if mode == "eager" else eager
            added = "" if eager is None or mode == "eager" else f"{result['ms_per_step'] - eager:+.0f} ms"
            print(f"  {objective:<10} {mode:<18} {result['ms_per_step']:>8.1f} {added:>15}", flush=True)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
