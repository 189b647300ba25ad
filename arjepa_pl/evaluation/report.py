"""The comparison's results: one Record per pretraining and per probe job, then CSV (every number),
Markdown tables (accuracy with intervals, cost, decoder, rollouts, claims), the accuracy-vs-FLOPs plot
and a W&B run.

Accuracies are the last probed layer's (the encoder's output, the number to quote) at the last
checkpoint, mean ± std over seeds, with the mean 95 % Wilson half-width of one run beside it (the
evaluation split's sampling noise; the seeds share that split). "Best layer" is the best probed layer
by mean accuracy, chosen on the same split it is reported on, so it is optimistic; it shows where in
the network each objective keeps the information.
"""

import csv
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from arjepa_pl.evaluation.compare_plan import RANDOM_INIT, ROLLOUT_METRICS, SUMMARY, Job, Run

ACCURACY = re.compile(r"^val/(?P<task>[^/]+)/l(?P<layer>\d+)/top1$")


@dataclass
class Record:
    """One pretraining (stage None) or one probe / predict job on one checkpoint, and its numbers."""

    objective: str
    condition: str
    seed: int
    stage: Optional[str]
    step: int
    flops: Optional[float]  # training FLOPs spent to reach this checkpoint (0 for the random encoder)
    metrics: dict[str, float] = field(default_factory=dict)


def _read(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run that stage of the comparison first")
    return json.loads(path.read_text())


def collect(runs: list[Run], baselines: list[Run], jobs: list[Job]) -> list[Record]:
    """Records of every pretraining run and stage job, from their summary.json / rollout_metrics.json."""
    records, pretrained = [], {}
    for run in runs:
        summary = _read(run.directory / SUMMARY)
        pretrained[run.name] = summary
        metrics = {**summary.get("metrics", {}), "fit_seconds": summary.get("fit_seconds") or math.nan}
        records.append(Record(run.objective, run.condition, run.seed, None, int(summary.get("global_step") or 0),
                              summary.get("train_flops"), metrics))
    for job in jobs:
        run = job.run
        if job.kind == "predict":
            rollout = _read(job.directory / ROLLOUT_METRICS)
            metrics = {f"rollout/{name}": statistics.fmean(values) for name, values in rollout["model"].items()}
            metrics.update({f"rollout/copy_last_{name}": statistics.fmean(values)
                            for name, values in rollout["copy_last"].items()})
        else:
            summary = _read(job.directory / SUMMARY)
            metrics = {**summary.get("metrics", {}), "fit_seconds": summary.get("fit_seconds") or math.nan}
        flops: Optional[float] = 0.0
        if run.objective != RANDOM_INIT:
            done = pretrained.get(run.name) or _read(run.directory / SUMMARY)
            total, steps = done.get("train_flops"), max(int(done.get("global_step") or 0), 1)
            flops = None if total is None else total * job.step / steps
        records.append(Record(run.objective, run.condition, run.seed, job.stage.name if job.stage else None, job.step,
                              flops, metrics))
    return records


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    if not values:
        return "—"
    mean, std = mean_std([v * scale for v in values])
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def keys(records: list[Record]) -> list[tuple[str, str]]:
    """(condition, objective) pairs in order of appearance, the random baseline last."""
    pairs = list(dict.fromkeys((r.condition, r.objective) for r in records))
    return sorted(pairs, key=lambda p: ([c for c, _ in pairs].index(p[0]), p[1] == RANDOM_INIT))


def final(records: list[Record], stage: Optional[str]) -> list[Record]:
    """The records of a stage at each run's last probed checkpoint."""
    last: dict[tuple, Record] = {}
    for r in records:
        if r.stage == stage:
            key = (r.objective, r.condition, r.seed)
            if key not in last or r.step > last[key].step:
                last[key] = r
    return list(last.values())


def tasks_and_layers(records: list[Record]) -> dict[str, list[int]]:
    found: dict[str, set] = {}
    for r in records:
        for key in r.metrics:
            match = ACCURACY.match(key)
            if match:
                found.setdefault(match["task"], set()).add(int(match["layer"]))
    return {task: sorted(layers) for task, layers in sorted(found.items())}


def accuracy_stages(records: list[Record]) -> list[str]:
    return list(dict.fromkeys(r.stage for r in records if r.stage and any(ACCURACY.match(k) for k in r.metrics)))


def accuracy_cell(runs: list[Record], task: str, layer: int) -> str:
    values = [r.metrics[f"val/{task}/l{layer}/top1"] for r in runs if f"val/{task}/l{layer}/top1" in r.metrics]
    halves = [(r.metrics[f"val/{task}/l{layer}/top1_high"] - r.metrics[f"val/{task}/l{layer}/top1_low"]) / 2
              for r in runs if f"val/{task}/l{layer}/top1_high" in r.metrics]
    return fmt(values) + (f" (±{100 * statistics.fmean(halves):.1f})" if halves else "")


def accuracy_table(records: list[Record], stage: str) -> list[str]:
    rows = final(records, stage)
    table = tasks_and_layers(rows)
    clips = sorted({int(r.metrics["val/clips"]) for r in rows if "val/clips" in r.metrics})
    seeds = sorted({r.seed for r in rows})
    lines = [f"**{stage}**: top-1 (%) of the last probed layer at the last checkpoint, mean ± std over {len(seeds)} "
             f"seed(s), (± mean 95 % Wilson half-width on {'/'.join(map(str, clips)) or '?'} evaluation clips); "
             "best layer chosen on the reported split (optimistic).", ""]
    header = ["condition", "objective"]
    for task, layers in table.items():
        header += [f"{task} (l{layers[-1]})"] + ([f"{task} (best layer)"] if len(layers) > 1 else [])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for condition, objective in keys(rows):
        runs = [r for r in rows if (r.condition, r.objective) == (condition, objective)]
        cells = [condition or "—", objective]
        for task, layers in table.items():
            cells.append(accuracy_cell(runs, task, layers[-1]))
            if len(layers) > 1:
                means = {layer: statistics.fmean([r.metrics.get(f"val/{task}/l{layer}/top1", math.nan) for r in runs])
                         for layer in layers}
                best = max(layers, key=lambda layer: -1 if math.isnan(means[layer]) else means[layer])
                cells.append(f"{fmt([r.metrics[f'val/{task}/l{best}/top1'] for r in runs])} (l{best})")
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def cost_table(records: list[Record]) -> list[str]:
    pre = [r for r in records if r.stage is None]
    lines = ["| condition | objective | steps | training TFLOPs | GFLOPs / step | pretraining (min) | "
             "probe jobs (min) | val/loss | val/bits_per_dim |", "|---|---|---|---|---|---|---|---|---|"]
    for condition, objective in keys(records):
        runs = [r for r in pre if (r.condition, r.objective) == (condition, objective)]
        jobs = [r for r in records if r.stage and (r.condition, r.objective) == (condition, objective)]
        flops = [r.flops for r in runs if r.flops]
        per_step = [r.flops / r.step for r in runs if r.flops and r.step]
        probe_min = [sum(j.metrics.get("fit_seconds", 0.0) for j in jobs if j.seed == s) / 60
                     for s in {j.seed for j in jobs}]
        loss, bits = ([r.metrics[name] for r in runs if name in r.metrics] for name in ("val/loss", "val/bits_per_dim"))

        lines.append(f"| {condition or '—'} | {objective} | {runs[0].step if runs else '—'} | "
                     f"{f'{statistics.fmean(flops) / 1e12:.1f}' if flops else '—'} | "
                     f"{f'{statistics.fmean(per_step) / 1e9:.1f}' if per_step else '—'} | "
                     f"{fmt([r.metrics['fit_seconds'] / 60 for r in runs], 1.0) if runs else '—'} | "
                     f"{fmt(probe_min, 1.0)} | {fmt(loss, 1.0, 4)} | {fmt(bits, 1.0, 4)} |")
    return lines + [""]


def metric_table(records: list[Record], title: str, columns: dict[str, str]) -> list[str]:
    """A table of the final records holding any of `columns` ({metric: header}), mean ± std over seeds."""
    rows = [r for r in records if r.stage and any(k in r.metrics for k in columns)]
    rows = [r for stage in dict.fromkeys(r.stage for r in rows) for r in final(rows, stage)]
    if not rows:
        return []
    lines = [title, "", "| condition | objective | stage | " + " | ".join(columns.values()) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for condition, objective in keys(rows):
        for stage in dict.fromkeys(r.stage for r in rows):
            runs = [r for r in rows if (r.condition, r.objective, r.stage) == (condition, objective, stage)]
            if runs:
                cells = [fmt([r.metrics[k] for r in runs if k in r.metrics], 1.0, 4 if "mse" in k else 2)
                         for k in columns]
                lines.append(f"| {condition or '—'} | {objective} | {stage} | " + " | ".join(cells) + " |")
    return lines + [""]


def write_csv(records: list[Record], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["objective", "condition", "seed", "stage", "step", "train_flops", "metric", "value"])
        for r in records:
            for name, value in sorted(r.metrics.items()):
                writer.writerow([r.objective, r.condition, r.seed, r.stage or "pretrain", r.step, r.flops, name, value])


def markdown(records: list[Record], steps: int, claims_lines: list[str], own_steps: Optional[dict] = None) -> str:
    exceptions = ", ".join(f"{name} {n}" for name, n in (own_steps or {}).items())
    lines = [f"Every objective pretrained for {steps} steps{f' ({exceptions})' if exceptions else ''}; numbers "
             "are mean ± std over seeds. A seed sets the pretraining's initial weights, clip order and masks and "
             "the probes' head initialisation and clip order; every seed reads the same data splits (the probes' "
             "training and evaluation clips), so the ± std is training variation and the Wilson half-width the "
             "evaluation split's sampling noise.", ""]
    for stage in accuracy_stages(records):
        lines += accuracy_table(records, stage)
    lines += cost_table(records)
    lines += metric_table(records, "Pixel decoder probe on frozen features (per-frame PSNR in dB, MSE and SSIM on "
                          "0-1 pixels):", {"val/psnr": "PSNR", "val/mse": "MSE", "val/ssim": "SSIM"})
    lines += metric_table(records, "Rollouts (frames after the context, per-frame PSNR in dB) beside copying the last "
                          "context frame:", {"rollout/psnr": "PSNR", "rollout/copy_last_psnr": "copy-last PSNR",
                                             "rollout/ssim": "SSIM", "rollout/copy_last_ssim": "copy-last SSIM"})
    return "\n".join(lines + claims_lines).rstrip() + "\n"


def write_report(records: list[Record], out: Path, steps: int, claims=None, context: Optional[dict] = None,
                 wandb_project: Optional[str] = None, own_steps: Optional[dict] = None) -> Path:
    """results.csv, results.md and accuracy_vs_flops.png in `out` (and the W&B run); returns results.md.
    `own_steps`: the objectives trained for other than `steps` steps, and theirs."""
    from arjepa_pl.evaluation.claims import claims_table
    from arjepa_pl.evaluation.report_plots import log_to_wandb, plot_accuracy_vs_flops

    out.mkdir(parents=True, exist_ok=True)
    write_csv(records, out / "results.csv")
    claims_lines = claims_table(records, claims, context or {}) if claims else []
    report = markdown(records, steps, claims_lines, own_steps)
    (out / "results.md").write_text(report)
    png = plot_accuracy_vs_flops(records, out / "accuracy_vs_flops.png")
    print(report)
    if wandb_project:
        log_to_wandb(records, out, wandb_project, report, png)
    return out / "results.md"
