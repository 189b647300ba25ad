"""The comparison's pictures and its W&B run: probe accuracy against training FLOPs, one panel per task."""

import statistics
from pathlib import Path
from typing import Optional

from arjepa_pl.evaluation.compare_plan import RANDOM_INIT
from arjepa_pl.evaluation.report import Record, accuracy_stages, keys, mean_std, tasks_and_layers

LINESTYLES = ("-", "--", ":", "-.")


def plot_accuracy_vs_flops(records: list[Record], path: Path) -> Optional[Path]:
    """Top-1 of the last probed layer of the first accuracy stage against the training FLOPs of the
    checkpoint probed: a line per objective (colour) and condition (line style), mean over seeds with
    std bars; the random encoder as a horizontal band per condition. None when nothing was probed."""
    stages = accuracy_stages(records)
    if not stages:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    rows = [r for r in records if r.stage == stages[0]]
    table = tasks_and_layers(rows)
    pairs = keys(rows)
    conditions = list(dict.fromkeys(c for c, _ in pairs))
    objectives = [o for o in dict.fromkeys(o for _, o in pairs) if o != RANDOM_INIT]
    colours = {o: f"C{i}" for i, o in enumerate(objectives)}
    fig, axes = plt.subplots(1, len(table), figsize=(1.5 + 3.6 * len(table), 3.8), squeeze=False)
    for ax, (task, layers) in zip(axes[0], table.items()):
        key = f"val/{task}/l{layers[-1]}/top1"
        for condition, objective in pairs:
            runs = [r for r in rows if (r.condition, r.objective) == (condition, objective) and key in r.metrics]
            style = LINESTYLES[conditions.index(condition) % len(LINESTYLES)]
            label = objective + (f" ({condition})" if condition else "")
            if objective == RANDOM_INIT:
                mean, std = mean_std([100 * r.metrics[key] for r in runs])
                ax.axhspan(mean - std, mean + std, color="grey", alpha=0.15)
                ax.axhline(mean, color="grey", linestyle=style, linewidth=1, label=label)
                continue
            steps = sorted({r.step for r in runs})
            xs, ys, errs = [], [], []
            for step in steps:
                at = [r for r in runs if r.step == step and r.flops is not None]
                if not at:
                    continue
                mean, std = mean_std([100 * r.metrics[key] for r in at])
                xs.append(statistics.fmean(float(r.flops or 0.0) for r in at) / 1e12)
                ys.append(mean)
                errs.append(std)
            ax.errorbar(xs, ys, yerr=errs, color=colours[objective], linestyle=style, marker="o", markersize=3,
                        capsize=2, label=label)
        ax.set_title(f"{task} (layer {layers[-1]})")
        ax.set_xlabel("training TFLOPs")
        ax.set_ylabel("top-1 (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def log_to_wandb(records: list[Record], out: Path, project: str, report: str, png: Optional[Path]) -> Optional[str]:
    """Every number as a table, the plot and the report as one W&B run of job type 'compare'
    (offline without a key or network)."""
    import wandb

    from arjepa_pl.loggers import choose_mode, pinned_run_id

    mode, why = choose_mode(None, connect_timeout=5.0)
    if why:
        print(f"[compare] W&B {mode}: {why}")
    run = wandb.init(project=project, dir=str(out), id=pinned_run_id(out), resume="allow", mode=mode,  # type: ignore[arg-type]
                     job_type="compare", name=f"compare-{out.name}", reinit="finish_previous")
    rows = [[r.objective, r.condition, r.seed, r.stage or "pretrain", r.step, r.flops, name, value]
            for r in records for name, value in sorted(r.metrics.items())]
    logged = {"compare/results": wandb.Table(columns=["objective", "condition", "seed", "stage", "step", "train_flops",
                                                      "metric", "value"], data=rows),
              "compare/report": wandb.Html(f"<pre>{report}</pre>")}
    if png is not None:
        logged["compare/accuracy_vs_flops"] = wandb.Image(str(png))
    run.log(logged)
    directory = run.dir
    run.finish()
    return directory
