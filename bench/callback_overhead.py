"""What a monitoring callback costs: a real fit of a config with the callback, timed.

Works for the callbacks that run every `every_n_steps` and time their own work in `seconds`:
CollapseMonitor (one no-grad forward on its held batch, RankMe and std per feature set) and
OnlineProbe (one no-grad encoder forward on the training batch, and the probe's update). The overhead
is that time over the rest of the fit. With --baseline the same fit runs again with the callback
working only on the first step, and the wall times are compared too (noisier: it includes everything
else that varies between two runs). Validation is off, so this is the cost to training.

    python bench/callback_overhead.py [--callback CollapseMonitor|OnlineProbe] [--config configs/vjepa.yaml]
                                      [--every 25] [--baseline] [-- CLI overrides]

e.g. quick CPU readings:
    python bench/callback_overhead.py -- --trainer.max_steps 50 --data.frames_per_clip 8
    python bench/callback_overhead.py --callback OnlineProbe --every 5 -- --trainer.max_steps 50
"""

import argparse
import tempfile
import time
from pathlib import Path

import lightning.pytorch as L

from arjepa_pl.callbacks import CollapseMonitor, OnlineProbe
from arjepa_pl.cli import ArJepaCLI

REPO = Path(__file__).resolve().parents[1]
# How many times each callback did its work in a fit.
CALLBACKS = {"CollapseMonitor": (CollapseMonitor, lambda c: len(c.history)),
             "OnlineProbe": (OnlineProbe, lambda c: c.probe_steps)}


class TrainClock(L.Callback):
    """Wall time of the training loop alone: setup (e.g. fitting a tokenizer) is not a training step."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self.seconds = time.perf_counter() - self.start


def timed_fit(config: str, kind: type, every: int, overrides: list[str]) -> tuple[float, L.Callback, int]:
    """(seconds of the training loop, the callback, steps)."""
    with tempfile.TemporaryDirectory() as run_dir:
        cli = ArJepaCLI(args=["--config", config, "--trainer.default_root_dir", run_dir, "--trainer.logger", "false",
                              "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "0",
                              "--trainer.enable_model_summary", "false", *overrides], run=False)
        found = [c for c in cli.trainer.callbacks if isinstance(c, kind)]
        if len(found) != 1:
            raise SystemExit(f"{Path(config).name} has {len(found)} {kind.__name__} callbacks; the bench needs one")
        callback = found[0]
        callback.every_n_steps = every
        clock = TrainClock()
        cli.trainer.callbacks.append(clock)
        cli.trainer.fit(cli.model, cli.datamodule)
        return clock.seconds, callback, cli.trainer.global_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--callback", choices=sorted(CALLBACKS), default="CollapseMonitor")
    parser.add_argument("--config", default=str(REPO / "configs/vjepa.yaml"))
    parser.add_argument("--every", type=int, default=25, help="work every this many steps")
    parser.add_argument("--baseline", action="store_true", help="also time the fit without the periodic work")
    parser.add_argument("overrides", nargs="*", help="CLI overrides, after --")
    args = parser.parse_args()
    kind, count = CALLBACKS[args.callback]

    seconds, callback, steps = timed_fit(args.config, kind, args.every, args.overrides)
    calls = count(callback)
    print(f"{Path(args.config).name}: {steps} steps in {seconds:.1f} s ({seconds / steps * 1000:.0f} ms/step), "
          f"{args.callback} worked {calls} times, every {args.every} steps")
    train_step = (seconds - callback.seconds) / steps
    per_call = callback.seconds / calls
    print(f"  {args.callback}: {callback.seconds:.2f} s in all, {per_call * 1000:.0f} ms per call "
          f"(= {per_call / train_step:.2f} training steps), overhead {100 * callback.seconds / (seconds - callback.seconds):.2f} %")
    for every in sorted({args.every, 1, 5, 25, 100}):
        print(f"  working every {every} steps costs {100 * per_call / (every * train_step):.2f} % of the training time")
    if args.baseline:
        base, _, _ = timed_fit(args.config, kind, 10**9, args.overrides)
        print(f"  working only on the first step: {base:.1f} s -> wall-time difference {100 * (seconds - base) / base:+.2f} %")


if __name__ == "__main__":
    main()
