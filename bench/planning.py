"""Time budget of world models and planning on this machine: training steps per second of each world
model on its default config (a real fit through the CLI, logger and checkpoints off), the wall time of a
50-episode planning evaluation with each (a trained checkpoint, or an untrained model: every episode
then runs to max_steps, the worst case), and what these make of the whole planning benchmark.

The machine may be shared: every reading comes with the load average and a matmul probe (GFLOP/s of a
2048 x 256 x 1024 fp32 product, before and after) taken in the same run. `--idle_gflops` (the probe
on the machine when idle) turns each time into an idle estimate: time x probe now / probe idle. Matmul
throughput is only a proxy for the small ops of these models, so the estimate is labelled as one.

    python bench/planning.py [--train_steps 40] [--episodes 50] [--ckpt ac_jepa=PATH --ckpt ac_ar=PATH]
                             [--idle_gflops 320] [--out bench/results/planning.jsonl]
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import lightning.pytorch as L
import torch
import yaml

from arjepa_pl.cli import ArJepaCLI
from arjepa_pl.planning.plan import plan, plan_arguments

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"ac_jepa": REPO / "configs/ac_jepa.yaml", "ac_ar": REPO / "configs/ac_ar.yaml"}


def probe_gflops(seconds: float = 1.0) -> float:
    a, w = torch.randn(2048, 256), torch.randn(256, 1024)
    a @ w
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ w
        n += 1
    return 2 * 2048 * 256 * 1024 * n / (time.perf_counter() - start) / 1e9


def load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0]) if Path("/proc/loadavg").exists() else float("nan")


class StepClock(L.Callback):
    """Seconds per training step after `skip` warm-up steps (the first step counts FLOPs, the first
    batches start the workers)."""

    def __init__(self, skip: int = 5):
        self.skip, self.start, self.steps = skip, None, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.skip:
            self.start = time.perf_counter()
        elif trainer.global_step > self.skip:
            self.steps = trainer.global_step - self.skip
            self.seconds = time.perf_counter() - self.start


def train_reading(name: str, steps: int, data_dir: str) -> dict:
    config = yaml.safe_load(CONFIGS[name].read_text())
    clock = StepClock()
    with tempfile.TemporaryDirectory() as run_dir:
        cli = ArJepaCLI(args=["--config", str(CONFIGS[name]), "--trainer.max_steps", str(steps),
                              "--trainer.logger", "false",
                              "--trainer.enable_checkpointing", "false", "--trainer.callbacks", "[]",
                              "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
                              "--trainer.default_root_dir", run_dir, "--data.data_dir", data_dir,
                              "--model.init_args.total_steps", str(config["trainer"]["max_steps"])], run=False)
        cli.trainer.callbacks.append(clock)
        cli.trainer.fit(cli.model, cli.datamodule)
    per_step = clock.seconds / clock.steps
    default_steps = config["trainer"]["max_steps"]
    return {"what": f"train {name}", "seconds_per_step": per_step, "steps_per_second": 1 / per_step,
            "default_steps": default_steps, "minutes_for_default_steps": per_step * default_steps / 60}


def plan_reading(name: str, episodes: int, ckpt: str | None, out: str) -> dict:
    args = ["--config", str(REPO / "configs/plan_tworooms.yaml"), "--num_episodes", str(episodes),
            "--media_episodes", "0", "--wandb_project", "null", "--out_dir", out, "--device", "cpu"]
    if name in ("oracle", "random"):
        args += ["--world_model", name]
    trained = ckpt is not None or name in ("oracle", "random")
    if not trained:  # an untrained model of the default config: episodes run to max_steps (the worst case)
        ckpt = untrained_checkpoint(name, out)
    if ckpt is not None:
        args += ["--ckpt_path", ckpt]
    summary = plan(**plan_arguments(args))
    return {"what": f"plan {name}", "trained": trained,
            "minutes": summary["eval_seconds"] / 60, "success_rate": summary["success_rate"], "steps": summary["steps"],
            "planning_ms_per_action": 1000 * summary["planning_seconds_per_action"],
            "planning_gflops_per_action": (summary["planning_flops_per_action"] or 0) / 1e9}


def untrained_checkpoint(name: str, out: str) -> str:
    path = Path(out) / f"{name}-untrained.ckpt"
    cli = ArJepaCLI(args=["--config", str(CONFIGS[name]), "--trainer.max_steps", "0", "--trainer.logger", "false",
                          "--trainer.callbacks", "[]", "--trainer.default_root_dir", out], run=False)
    checkpoint = {"state_dict": cli.model.state_dict(), "hyper_parameters": dict(cli.model.hparams),
                  "datamodule_hyper_parameters": dict(cli.datamodule.hparams)}
    cli.model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train_steps", type=int, default=40)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--ckpt", action="append", default=[],
                        help="NAME=PATH of a trained checkpoint (ac_jepa, ac_ar)")
    parser.add_argument("--idle_gflops", type=float, default=None, help="the probe on this machine when idle")
    parser.add_argument("--skip_train", action="store_true")
    parser.add_argument("--out", default=None, help="append the readings as JSON lines here")
    args = parser.parse_args()
    ckpts = dict(item.split("=", 1) for item in args.ckpt)
    readings = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = os.environ.get("ARJEPA_TWO_ROOMS_DIR") or str(Path(tmp) / "data")
        for name in ([] if args.skip_train else ["ac_jepa", "ac_ar"]):
            before, load_before = probe_gflops(), load()
            reading = train_reading(name, args.train_steps, data_dir)
            readings.append({**reading, "probe_gflops": (before + probe_gflops()) / 2,
                             "load": (load_before + load()) / 2})
        for name in ("ac_jepa", "ac_ar", "random", "oracle"):
            before, load_before = probe_gflops(), load()
            reading = plan_reading(name, args.episodes, ckpts.get(name), tmp)
            readings.append({**reading, "probe_gflops": (before + probe_gflops()) / 2,
                             "load": (load_before + load()) / 2})
    for r in readings:
        if args.idle_gflops:
            scale = r["probe_gflops"] / args.idle_gflops
            for key in ("minutes_for_default_steps", "minutes"):
                if key in r:
                    r[f"idle_estimate_{key}"] = r[key] * scale
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))
    trains = {r["what"]: r for r in readings if r["what"].startswith("train")}
    plans = {r["what"]: r for r in readings if r["what"].startswith("plan")}
    if len(trains) == 2:
        key = "idle_estimate_minutes_for_default_steps" if args.idle_gflops else "minutes_for_default_steps"
        plan_key = "idle_estimate_minutes" if args.idle_gflops else "minutes"
        total = 3 * (sum(r[key] for r in trains.values()) + sum(r[plan_key] for r in plans.values()))
        # These readings use every thread; the benchmark's config runs two single-threaded commands at a
        # time instead (on 2 cores: 34 min measured under load 3-4.5, where this sum said 44 at load 1.5).
        print(f"planning benchmark (3 seeds x (2 trainings + 2 evaluations + random + oracle)), one command at a "
              f"time: about {total:.0f} min{' (idle estimate)' if args.idle_gflops else ' at this load'}, "
              "process start-ups excluded")
    if args.out:
        with open(args.out, "a") as f:
            for r in readings:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
