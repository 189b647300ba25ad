"""The comparison's results: CSV (every number), Markdown (mean +- std over seeds), a plot, W&B.

"Last layer" is the encoder's output, the number to quote. "Best layer" is the best of the probed
layers by mean accuracy over seeds, chosen on the same validation split it is reported on, so it is
optimistic; it shows where in the network each objective keeps the information.
"""

import csv
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

METRIC = re.compile(r"^val/(?P<task>[^/]+)/l(?P<layer>\d+)/(?P<name>top\d+)$")


@dataclass
class ProbeResult:
    """One probed encoder (objective, seed): accuracies by (task, layer) and what pretraining cost."""

    objective: str
    seed: int
    accuracy: dict[tuple[str, int], dict[str, float]] = field(default_factory=dict)
    pretrain_steps: Optional[int] = None
    pretrain_flops: Optional[float] = None
    pretrain_seconds: Optional[float] = None
    probe_seconds: Optional[float] = None

    @classmethod
    def from_summaries(cls, objective: str, seed: int, probe: dict, pretrain: dict) -> "ProbeResult":
        """From the RunSummary files of the probe run and of the pretraining run ({} for none)."""
        result = cls(objective, seed, pretrain_steps=pretrain.get("global_step"),
                     pretrain_flops=pretrain.get("train_flops"), pretrain_seconds=pretrain.get("fit_seconds"),
                     probe_seconds=probe.get("fit_seconds"))
        for key, value in probe.get("metrics", {}).items():
            match = METRIC.match(key)
            if match:
                result.accuracy.setdefault((match["task"], int(match["layer"])), {})[match["name"]] = value
        if not result.accuracy:
            raise ValueError(f"{objective} seed {seed}: the probe summary has no val/<task>/l<layer>/top1 metrics "
                             f"(keys: {sorted(probe.get('metrics', {}))})")
        return result


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    mean, std = mean_std([v * scale for v in values])
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summarise(results: list[ProbeResult]) -> dict:
    """{task: {objective: {"last": [top1 per seed], "best": [...], "best_layer": L}}} (layers 0-based)."""
    tasks = sorted({task for r in results for task, _ in r.accuracy})
    objectives = list(dict.fromkeys(r.objective for r in results))
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for task in tasks:
        table[task] = {}
        for objective in objectives:
            runs = [r for r in results if r.objective == objective]
            layers = sorted({layer for r in runs for t, layer in r.accuracy if t == task})
            if not layers:
                continue
            per_layer = {layer: [r.accuracy[(task, layer)]["top1"] for r in runs if (task, layer) in r.accuracy]
                         for layer in layers}
            best = max(layers, key=lambda layer: statistics.fmean(per_layer[layer]))
            table[task][objective] = {"last": per_layer[layers[-1]], "last_layer": layers[-1],
                                      "best": per_layer[best], "best_layer": best}
    return table


def markdown(results: list[ProbeResult], steps: int) -> str:
    table = summarise(results)
    objectives = list(dict.fromkeys(r.objective for r in results))
    seeds = sorted({r.seed for r in results})
    lines = [f"Frozen-probe top-1 accuracy (%), mean ± std over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}); "
             f"every objective pretrained for {steps} steps. "
             "Best layer: chosen on the reported split (optimistic).", ""]
    header = "| objective | " + " | ".join(f"{task} (last layer) | {task} (best layer)" for task in table) + " |"
    lines += [header, "|" + "---|" * (1 + 2 * len(table))]
    for objective in objectives:
        cells = []
        for rows in table.values():
            row = rows.get(objective)
            cells += ["—", "—"] if row is None else [fmt(row["last"]), f"{fmt(row['best'])} (l{row['best_layer']})"]
        lines.append(f"| {objective} | " + " | ".join(cells) + " |")
    lines += ["", "| objective | pretraining steps | training TFLOPs | FLOPs / step (G) "
                  "| pretraining wall time (min) | probe wall time (min) |",
              "|---|---|---|---|---|---|"]
    for objective in objectives:
        runs = [r for r in results if r.objective == objective]
        flops = [r.pretrain_flops for r in runs if r.pretrain_flops]
        steps_done = [r.pretrain_steps for r in runs if r.pretrain_steps]
        wall = [r.pretrain_seconds / 60 for r in runs if r.pretrain_seconds]
        probe = [r.probe_seconds / 60 for r in runs if r.probe_seconds]
        per_step = [f / s for f, s in zip(flops, steps_done)] if len(flops) == len(steps_done) else []
        lines.append(f"| {objective} | {round(statistics.fmean(steps_done)) if steps_done else '—'} | "
                     f"{f'{statistics.fmean(flops) / 1e12:.1f}' if flops else '—'} | "
                     f"{f'{statistics.fmean(per_step) / 1e9:.1f}' if per_step else '—'} | "
                     f"{fmt(wall, 1.0) if wall else '—'} | {fmt(probe, 1.0) if probe else '—'} |")
    return "\n".join(lines) + "\n"


def write_csv(results: list[ProbeResult], path: Path) -> None:
    columns = ["objective", "seed", "task", "layer", "top1", "top5", "pretrain_steps", "pretrain_flops",
               "pretrain_seconds", "probe_seconds"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in results:
            for (task, layer), acc in sorted(r.accuracy.items()):
                writer.writerow([r.objective, r.seed, task, layer, acc.get("top1"), acc.get("top5"), r.pretrain_steps,
                                 r.pretrain_flops, r.pretrain_seconds, r.probe_seconds])


def plot(results: list[ProbeResult], path: Path) -> None:
    """One panel per task: last-layer and best-layer top-1 per objective (bars: mean, whiskers: std,
    dots: seeds)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    table = summarise(results)
    objectives = list(dict.fromkeys(r.objective for r in results))
    fig, axes = plt.subplots(1, len(table), figsize=(1.6 + 1.9 * len(objectives) * len(table), 3.6), squeeze=False)
    for ax, (task, rows) in zip(axes[0], table.items()):
        for i, objective in enumerate(objectives):
            row = rows.get(objective)
            if row is None:
                continue
            for offset, kind, colour in ((-0.2, "last", "tab:blue"), (0.2, "best", "tab:orange")):
                values = [100 * v for v in row[kind]]
                mean, std = mean_std(values)
                ax.bar(i + offset, mean, 0.38, yerr=std, capsize=3, color=colour, alpha=0.8,
                       label=f"{kind} layer" if i == 0 else None)
                ax.scatter([i + offset] * len(values), values, s=9, color="black", zorder=3)
        ax.set_xticks(range(len(objectives)), objectives, rotation=20)
        ax.set_title(task)
        ax.set_ylim(0, 100)
        ax.set_ylabel("top-1 (%)")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def log_to_wandb(results: list[ProbeResult], out: Path, project: str, report: str, png: Path) -> Optional[str]:
    """The table and the plot as one W&B run of job type 'compare' (offline without a key or network)."""
    import wandb

    from arjepa_pl.loggers import choose_mode, pinned_run_id

    mode, why = choose_mode(None, connect_timeout=5.0)
    if why:
        print(f"[compare] W&B {mode}: {why}")
    # mode may be any WANDB_MODE value, e.g. "dryrun", which wandb accepts but init's Literal type omits.
    run = wandb.init(project=project, dir=str(out), id=pinned_run_id(out), resume="allow", mode=mode,  # type: ignore[arg-type]
                     job_type="compare", name=f"compare-{out.name}", reinit="finish_previous")
    rows = [[r.objective, r.seed, task, layer, acc.get("top1"), r.pretrain_flops, r.pretrain_seconds]
            for r in results for (task, layer), acc in sorted(r.accuracy.items())]
    run.log({"compare/results": wandb.Table(columns=["objective", "seed", "task", "layer", "top1", "pretrain_flops",
                                                      "pretrain_seconds"], data=rows),
             "compare/plot": wandb.Image(str(png)), "compare/report": wandb.Html(f"<pre>{report}</pre>")})
    for task, rows_by_objective in summarise(results).items():
        for objective, row in rows_by_objective.items():
            run.summary[f"{objective}/{task}/last_top1"] = statistics.fmean(row["last"])
    directory = run.dir
    run.finish()
    return directory


def write_report(results: list[ProbeResult], out: Path, steps: int, wandb_project: Optional[str] = None) -> Path:
    """results.csv, results.md and results.png in `out` (and the W&B run); returns results.md's path."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(results, out / "results.csv")
    report = markdown(results, steps)
    (out / "results.md").write_text(report)
    plot(results, out / "results.png")
    print(report)
    if wandb_project:
        log_to_wandb(results, out, wandb_project, report, out / "results.png")
    if any(math.isnan(a.get("top1", 0.0)) for r in results for a in r.accuracy.values()):
        print("[compare] warning: some accuracies are NaN (a probe saw no validation data?)")
    return out / "results.md"
