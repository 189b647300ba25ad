"""What the collapse monitor costs: a real fit of a config with its CollapseMonitor, timed.

The monitor's own work (one no-grad forward on the held batch, RankMe and std per feature set) is
timed inside it; the overhead is that time over the rest of the fit. With --baseline the same fit
runs again with the monitor measuring only at step 0, and the wall times are compared too (noisier:
it includes everything else that varies between two runs).

    python bench/collapse_overhead.py [--config configs/vjepa.yaml] [--every 25] [--baseline] [-- CLI overrides]

e.g. a quick CPU reading: python bench/collapse_overhead.py -- --trainer.max_steps 50 --data.frames_per_clip 8
"""

import argparse
import tempfile
import time
from pathlib import Path

from arjepa_pl.callbacks import CollapseMonitor
from arjepa_pl.cli import ArJepaCLI

REPO = Path(__file__).resolve().parents[1]


def timed_fit(config: str, every: int, overrides: list[str]) -> tuple[float, CollapseMonitor, int]:
    with tempfile.TemporaryDirectory() as run_dir:
        cli = ArJepaCLI(args=["--config", config, "--trainer.default_root_dir", run_dir, "--trainer.logger", "false",
                              "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "0",
                              "--trainer.enable_model_summary", "false", *overrides], run=False)
        (monitor,) = [c for c in cli.trainer.callbacks if isinstance(c, CollapseMonitor)]
        monitor.every_n_steps = every
        start = time.perf_counter()
        cli.trainer.fit(cli.model, cli.datamodule)
        return time.perf_counter() - start, monitor, cli.trainer.global_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs/vjepa.yaml"))
    parser.add_argument("--every", type=int, default=25, help="measure every this many steps")
    parser.add_argument("--baseline", action="store_true", help="also time the fit without periodic measurements")
    parser.add_argument("overrides", nargs="*", help="CLI overrides, after --")
    args = parser.parse_args()

    seconds, monitor, steps = timed_fit(args.config, args.every, args.overrides)
    checks = len(monitor.history)
    print(f"{Path(args.config).name}: {steps} steps in {seconds:.1f} s ({seconds / steps * 1000:.0f} ms/step), "
          f"{checks} measurements every {args.every} steps")
    train_step = (seconds - monitor.seconds) / steps
    per_check = monitor.seconds / checks
    print(f"  monitor: {monitor.seconds:.2f} s in all, {per_check * 1000:.0f} ms per measurement "
          f"(= {per_check / train_step:.2f} training steps), overhead {100 * monitor.seconds / (seconds - monitor.seconds):.2f} %")
    for every in sorted({args.every, 25, 100}):
        print(f"  measuring every {every} steps costs {100 * per_check / (every * train_step):.2f} % of the training time")
    if args.baseline:
        base, _, _ = timed_fit(args.config, 10**9, args.overrides)
        print(f"  without periodic measurements: {base:.1f} s -> wall-time difference {100 * (seconds - base) / base:+.2f} %")


if __name__ == "__main__":
    main()
