"""`python -m arjepa_pl summary RUN_DIR`: what a run did, from the files it wrote (no W&B needed).

It reads `RUN_DIR/metrics.csv` (arjepa_pl.loggers.CSVLogger, in every config; the `metrics.csv` files
of Lightning's own CSVLogger under RUN_DIR are read too), `summary.json` (arjepa_pl.callbacks.RunSummary:
wall time, clips, FLOPs) and `config.yaml` (the step budget), prints the steps, wall time and
throughput, the last and best value of every loss and evaluation metric and the collapse monitor's
RankMe, and draws `RUN_DIR/curves.png`: loss, learning rate, probe accuracies and RankMe against the
step. The end of every `fit` prints the same (RunSummary). Works on a run that is still going.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from statistics import median
from typing import Optional, Sequence

import yaml

Series = dict[str, list[tuple[int, float]]]  # metric -> [(step, value)], ascending steps
CURVES_FILE = "curves.png"

# A metric is scored when its name says which way is better; the rest (schedules, throughput,
# feature statistics) are curves, not results.
LOWER_IS_BETTER = ("loss", "perplexity", "bits_per", "mse")
HIGHER_IS_BETTER = ("acc", "top1", "top5", "psnr", "ssim")


def metrics_files(run_dir: Path) -> list[Path]:
    """The run's metrics.csv first, then any other (Lightning's CSVLogger versions), oldest first."""
    own = run_dir / "metrics.csv"
    others = sorted((p for p in run_dir.rglob("metrics.csv") if p != own and "wandb" not in p.parts),
                    key=lambda p: p.stat().st_mtime)
    return ([own] if own.is_file() else []) + others


def read_metrics(run_dir: Path) -> Series:
    """Every numeric column of the run's metrics files by step. A step logged twice (a resumed run
    logs again the steps after its checkpoint) keeps the value logged last."""
    values: dict[str, dict[int, float]] = {}
    for path in metrics_files(run_dir):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                try:
                    step = int(float(row.pop("step")))
                except (KeyError, TypeError, ValueError):
                    continue  # not a metrics row
                for key, text in row.items():
                    try:
                        value = float(text)
                    except (TypeError, ValueError):
                        continue  # empty: the metric was not logged in this row
                    if math.isfinite(value):
                        values.setdefault(key, {})[step] = value
    return {key: sorted(by_step.items()) for key, by_step in values.items()}


def better(key: str) -> Optional[str]:
    """'min' or 'max' for a scored metric, None for the others."""
    name = key.rsplit("/", 1)[-1].lower()
    if any(word in name for word in LOWER_IS_BETTER):
        return "min"
    if any(word in name for word in HIGHER_IS_BETTER):
        return "max"
    return None


def _order(key: str) -> tuple:
    # The objective's own losses first, then the rest alphabetically.
    return (key not in ("train/loss", "val/loss"), key != "train/loss", key)


def _number(x: float) -> str:
    return f"{x:.4g}" if abs(x) < 1e5 else f"{x:.3e}"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _read_yaml(path: Path) -> dict:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def summary_text(run_dir: Path, series: Series, curves: Optional[Path] = None) -> str:
    """The run's key numbers as a few lines of text (what `summary` prints)."""
    config = _read_yaml(run_dir / "config.yaml")
    trainer = config.get("trainer") or {}
    done = _read_json(run_dir / "summary.json")
    logged_steps = [step for points in series.values() for step, _ in points]
    step = done.get("global_step", max(logged_steps, default=0))
    max_steps = trainer.get("max_steps") or -1
    head = f"{run_dir}: step {step}" + (f" / {max_steps}" if max_steps > 0 else "")
    if max_steps <= 0 and series.get("epoch"):
        head += f", epoch {int(series['epoch'][-1][1]) + 1}"
        head += f" / {trainer['max_epochs']}" if trainer.get("max_epochs") else ""
    if done.get("fit_seconds") and done.get("global_step", -1) >= max(logged_steps, default=0):
        head += f", {_minutes(done['fit_seconds'])} of fit"
    elif len(series.get("time", [])) > 1:
        times = [t for _, t in series["time"]]
        head += f", {_minutes(times[-1] - times[0])} from the first to the last logged step"
    lines = [head]

    speed = []
    if series.get("perf/clips_per_sec"):
        speed.append(f"{median(v for _, v in series['perf/clips_per_sec']):.3g} clips/s while training (median)")
    if done.get("train_clips") and done.get("fit_seconds"):
        speed.append(f"{done['train_clips'] / done['fit_seconds']:.3g} clips/s over the whole fit")
    if series.get("perf/tflops"):
        speed.append(f"{median(v for _, v in series['perf/tflops']):.3g} TFLOP/s per device")
    if speed:
        lines.append("throughput: " + ", ".join(speed))

    scored = sorted((k for k in series if better(k)), key=_order)
    if scored:
        width = max(len(k) for k in scored)
        lines.append(f"{'metric':<{width}}  {'last':>10} {'(step)':>7}  {'best':>10} {'(step)':>7}")
        for key in scored:
            last_step, last = series[key][-1]
            best_step, best = (min if better(key) == "min" else max)(series[key], key=lambda p: p[1])
            lines.append(f"{key:<{width}}  {_number(last):>10} {f'({last_step})':>7}  {_number(best):>10} "
                         f"{f'({best_step})':>7}")
    elif done.get("metrics"):
        finals = {k: v for k, v in done["metrics"].items() if better(k)}
        lines += [f"{k}: {_number(v)} (final)" for k, v in sorted(finals.items(), key=lambda kv: _order(kv[0]))]
    else:
        lines.append(f"no metrics.csv in {run_dir}: the configs' CSVLogger writes one (docs/logging.md)")

    rankme = sorted(k for k in series if k.startswith("collapse/") and k.endswith("_rankme"))
    if rankme:
        first, last = min(series[k][0][0] for k in rankme), max(series[k][-1][0] for k in rankme)
        if first == last:
            lines.append(f"RankMe at step {first}: " + ", ".join(
                f"{k.split('/')[1].removesuffix('_rankme')} {series[k][-1][1]:.3g}" for k in rankme))
        else:
            lines.append(f"RankMe, step {first} -> {last}: " + ", ".join(
                f"{k.split('/')[1].removesuffix('_rankme')} {series[k][0][1]:.3g} -> {series[k][-1][1]:.3g}"
                for k in rankme))
    if curves is not None:
        lines.append(f"curves: {curves}")
    return "\n".join(lines)


# Panels of the picture: title, which metrics, y-axis scale.
PANELS = [
    ("loss", lambda k: better(k) == "min" and "loss" in k and "_mask" not in k, "log"),
    ("learning rate", lambda k: k == "train/lr", "linear"),
    ("probe accuracy", lambda k: better(k) == "max" and ("probe" in k or k.endswith(("/top1", "/acc"))), "linear"),
    ("RankMe (effective rank of the features)", lambda k: k.startswith("collapse/") and k.endswith("_rankme"),
     "linear"),
]


def plot_curves(series: Series, path: Path, title: str = "") -> Optional[Path]:
    """The panels of PANELS that have data, side by side, as a PNG; None when none has."""
    panels = [(name, sorted(k for k in series if pick(k)), scale) for name, pick, scale in PANELS]
    panels = [p for p in panels if p[1]]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    width, height = 4.2 * len(panels), 3.4
    fig, axes = plt.subplots(1, len(panels), figsize=(width, height), squeeze=False)
    # Fixed margins (in inches) rather than tight_layout, which costs more than the drawing itself.
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.15 / width, bottom=0.5 / height, top=1 - 0.6 / height,
                        wspace=0.35)
    for ax, (name, keys, scale) in zip(axes[0], panels):
        for key in keys:
            steps, values = zip(*series[key])
            ax.plot(steps, values, label=key, marker="o" if len(steps) < 12 else None, markersize=3, linewidth=1.2)
        every = [v for k in keys for _, v in series[k]]
        if scale == "log" and min(every) > 0 and max(every) > 10 * min(every):  # log only across decades
            ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def summarize(run_dir: str | Path, picture: bool = True) -> str:
    """Read the run, draw `curves.png` (when `picture`) and return the text `summary` prints."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory {run_dir}")
    series = read_metrics(run_dir)
    curves = plot_curves(series, run_dir / CURVES_FILE, title=str(run_dir)) if picture else None
    return summary_text(run_dir, series, curves)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m arjepa_pl summary",
        description="A run's steps, wall time, throughput, last and best losses and probe accuracies, "
                    "from its metrics.csv; and a picture of its curves (RUN_DIR/curves.png).")
    parser.add_argument("run_dir", help="the run directory (trainer.default_root_dir), e.g. runs/vjepa")
    parser.add_argument("--no-picture", action="store_true", help="print the numbers only")
    args = parser.parse_args(argv)
    try:
        print(summarize(args.run_dir, picture=not args.no_picture))
    except FileNotFoundError as error:
        parser.exit(2, f"error: {error}\n")
