"""How long a comparison takes: per-step and per-job costs measured on a real comparison, and the dry
run's estimate for a plan from them.

`measure(out_dir)` reads what a finished comparison recorded — timings.jsonl (wall and CPU seconds of
every command, with the load average) and each run's summary.json (seconds inside fit) — and gives
the costs: seconds per pretraining step of each objective, seconds per job of each probe stage, and
the start-up of a process (interpreter, imports, data set-up, tokenizer fit: the wall time outside
fit). `bench/compare_costs.py` writes them to bench/results/compare_costs.json, which
`python -m arjepa_pl compare --dry_run` reads.

The machine the costs were measured on may have been shared: the estimate prints two numbers, the
wall time at the load measured, and the CPU time spread over the machine's cores — what an idle
machine would take if the work used every core all the time (a lower bound; the truth on an idle
machine lies between, nearer the lower one when the measured load was high).
"""

import json
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Optional

from arjepa_pl.evaluation.compare_plan import SUMMARY

DEFAULT_COSTS = Path("bench/results/compare_costs.json")


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def measure(out_dir: str) -> dict:
    """Costs from a finished comparison in `out_dir` (see the module docstring)."""
    out = Path(out_dir)
    timings = [json.loads(line) for line in (out / "timings.jsonl").read_text().splitlines() if line.strip()]
    per_step: dict[str, list[float]] = defaultdict(list)
    per_step_cpu: dict[str, list[float]] = defaultdict(list)
    per_job: dict[str, list[float]] = defaultdict(list)
    per_job_cpu: dict[str, list[float]] = defaultdict(list)
    startup: list[float] = []
    for t in timings:
        if t.get("exit"):
            continue
        if t["kind"] == "pretrain":
            summary = json.loads((out / t["job"].replace("/", os.sep) / SUMMARY).read_text())
            steps = max(int(summary.get("global_step") or 0), 1)
            fit = float(summary.get("fit_seconds") or 0.0)
            startup.append(max(t["wall_seconds"] - fit, 0.0))
            per_step[t["objective"]].append(fit / steps)
            per_step_cpu[t["objective"]].append(t["cpu_seconds"] * fit / max(t["wall_seconds"], 1e-9) / steps)
        else:
            per_job[t["stage"]].append(t["wall_seconds"])
            per_job_cpu[t["stage"]].append(t["cpu_seconds"])
    loads = [t["loadavg_start"][0] for t in timings] + [t["loadavg_end"][0] for t in timings]
    return {
        "source": str(out),
        "measured": time.strftime("%Y-%m-%d %H:%M", time.localtime((out / "timings.jsonl").stat().st_mtime)),
        "cores": os.cpu_count(), "loadavg_1min": {"min": min(loads), "median": _median(loads), "max": max(loads)},
        "startup_seconds": _median(startup),
        "pretrain_seconds_per_step": {k: _median(v) for k, v in per_step.items()},
        "pretrain_cpu_seconds_per_step": {k: _median(v) for k, v in per_step_cpu.items()},
        "stage_seconds": {k: _median(v) for k, v in per_job.items()},
        "stage_cpu_seconds": {k: _median(v) for k, v in per_job_cpu.items()},
    }


def makespan(jobs: list, seconds: dict, workers: int) -> float:
    """Seconds until the last job ends, `workers` jobs at a time, in plan order, a run's stage jobs
    not before its pretraining ends (as JobRunner runs them)."""
    free = [0.0] * workers
    ends: dict[str, float] = {}
    last = 0.0
    for job in jobs:
        if id(job) not in seconds:
            continue
        i = min(range(workers), key=free.__getitem__)
        start = max(free[i], ends.get(job.run.name, 0.0) if job.kind != "pretrain" else 0.0)
        free[i] = start + seconds[id(job)]
        if job.kind == "pretrain":
            ends[job.run.name] = free[i]
        last = max(last, free[i])
    return last


def estimate(jobs: list, steps: Callable[[Any], int], costs_path: Optional[str] = None, workers: int = 1) -> str:
    """The plan (jobs by kind) with its estimated time, or the plan alone without a costs file;
    `steps(run)`: the optimizer steps of a run's pretraining."""
    path = Path(costs_path) if costs_path else DEFAULT_COSTS
    groups: dict[tuple[str, str], int] = defaultdict(int)
    run_steps: dict[str, int] = {}
    for job in jobs:
        groups[(job.kind, job.run.objective if job.kind == "pretrain" else job.stage.name)] += 1
        if job.kind == "pretrain":
            run_steps[job.run.objective] = steps(job.run)
    lines = [f"[compare] plan: {sum(n for (k, _), n in groups.items() if k == 'pretrain')} pretraining runs, "
             f"{sum(n for (k, _), n in groups.items() if k != 'pretrain')} probe / predict jobs"]
    if not path.is_file():
        lines += [f"  {n} x {kind} {name}" + (f" ({run_steps[name]} steps)" if kind == "pretrain" else "")
                  for (kind, name), n in groups.items()]
        lines.append(f"[compare] no time estimate: {path} not found (bench/compare_costs.py measures it)")
        return "\n".join(lines)
    costs = json.loads(path.read_text())
    start = costs["startup_seconds"]
    wall: dict[int, float] = {}
    cpu: dict[int, float] = {}
    unknown = set()
    for job in jobs:
        if job.kind == "pretrain":
            step = costs["pretrain_seconds_per_step"].get(job.run.objective)
            step_cpu = costs["pretrain_cpu_seconds_per_step"].get(job.run.objective)
            if step is None:
                unknown.add(job.run.objective)
                continue
            n_steps = run_steps[job.run.objective]
            wall[id(job)], cpu[id(job)] = start + n_steps * step, start + n_steps * step_cpu
        else:
            one, one_cpu = costs["stage_seconds"].get(job.stage.name), costs["stage_cpu_seconds"].get(job.stage.name)
            if one is None:
                unknown.add(job.stage.name)
                continue
            wall[id(job)], cpu[id(job)] = one, one_cpu
    for (kind, name), n in groups.items():
        if name in unknown:
            continue
        if kind == "pretrain":
            step_cpu = costs["pretrain_cpu_seconds_per_step"][name]
            n_steps = run_steps[name]
            lines.append(f"  {n:3d} x pretrain {name:<16} {n_steps} steps x {step_cpu:.2f} CPU-s + {start:.0f} s start "
                         f"= {n * (start + n_steps * step_cpu) / 60:5.1f} CPU-min")
        else:
            lines.append(f"  {n:3d} x {kind} {name:<18} {costs['stage_cpu_seconds'][name]:.0f} CPU-s each "
                         f"= {n * costs['stage_cpu_seconds'][name] / 60:5.1f} CPU-min")
    load, cores = costs["loadavg_1min"], costs["cores"]
    lines.append(f"[compare] estimate from {path} (measured {costs['measured']}, load average {load['min']:.1f}-"
                 f"{load['max']:.1f} on {cores} cores, {costs.get('omp_num_threads') or 'default'} thread(s) per job): "
                 f"{sum(cpu.values()) / 60:.0f} CPU-minutes; with {workers} worker(s) on an idle machine "
                 f"~{makespan(jobs, cpu, workers) / 60:.0f} min (each job as long as its CPU time); at the load "
                 f"measured ~{makespan(jobs, wall, workers) / 60:.0f} min")
    if unknown:
        lines.append(f"[compare] no measured cost for {sorted(unknown)}: left out of the estimate")
    return "\n".join(lines)
