"""`python -m arjepa_pl plan_benchmark --config configs/plan_benchmark.yaml`: which world model plans better?

For every seed, each world-model objective (ACJEPA, ACARVideo) is trained from its own config on equal
terms — the same backbone, data, optimiser and steps, checked before anything runs by the comparison
harness's fairness check (arjepa_pl.evaluation.compare) — and then plans the same fixed episodes with the same
planner (`python -m arjepa_pl plan`). Random actions and the oracle (the true simulator as the world
model) run the same episodes once per seed, as the floor and the ceiling. The results go to the output
directory: results.csv (one row per run), results.md (success rate and the rest, mean +- std over seeds,
with training FLOPs and time, planning time and FLOPs per action), results.png, and a W&B run.

Like the comparison, every run is an ordinary command in its own directory (printed, and kept in
commands.txt): a run resumes from its last checkpoint when the benchmark is started again and is
skipped once complete; `--stage` and `--only` split the work (e.g. one SLURM array task per run).
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Optional

from arjepa_pl.checkpoints import find_resume_checkpoint
from arjepa_pl.evaluation.compare import check_fairness, harness_main, resolved_config
from arjepa_pl.evaluation.compare_exec import JobRunner
from arjepa_pl.evaluation.compare_plan import (
    SUMMARY,
    Job,
    Pretraining,
    Run,
    check_run_arguments,
    command_line,
    fit_command,
    is_complete,
    unfinished,
    with_seed,
)
from arjepa_pl.evaluation.report import fmt, mean_std
from arjepa_pl.planning.plan import RESULTS, plan_arguments

BASELINES: tuple[Literal["random", "oracle"], ...] = ("random", "oracle")
# Besides the encoder, data, steps and optimiser (arjepa_pl.evaluation.compare.MUST_MATCH), world models must share
# the predictor, the frames and the training terms to be compared on equal terms.
WORLD_MODEL_KEYS = tuple(f"model.init_args.{k}" for k in ("image_size", "action_dim", "predictor_embed_dim",
                                                          "predictor_depth", "predictor_num_heads", "rollout_steps",
                                                          "rollout_weight"))


def benchmark(
    objectives: list[Pretraining],
    plan_config: str,
    out_dir: str = "runs/plan_benchmark",
    seeds: Sequence[int] = (0, 1, 2),
    steps: int = 1500,
    optimizer: Optional[dict] = None,
    pretrain_args: Sequence[str] = (),
    plan_args: Sequence[str] = (),
    baselines: Sequence[Literal["random", "oracle"]] = BASELINES,
    launcher: Sequence[str] = (),
    workers: int = 1,
    threads: Optional[int] = None,
    stage: Literal["all", "pretrain", "plan", "report"] = "all",
    only: Optional[list[str]] = None,
    dry_run: bool = False,
    wandb_project: Optional[str] = "arjepa_pl",
) -> Optional[Path]:
    """Train every world model for every seed, plan with each, run the baselines, write the results.

    Args:
        objectives: the world models compared (name, training config, own extra args).
        plan_config: the planning evaluation every model gets (python -m arjepa_pl plan --config PLAN_CONFIG).
        out_dir: where runs and results go: OUT/<objective>/seed<S>/ (training), .../plan/ (its evaluation),
            OUT/<baseline>/seed<S>/plan/.
        seeds: one training + evaluation per objective and seed (>= 3 for a mean +- std worth reading);
            the seed also drives the planner's random draws (the episodes are the plan config's, the same for all).
        steps: optimizer steps of every training run (trainer.max_steps).
        optimizer: optimiser settings given to every objective (lr, start_lr, final_lr, warmup_steps,
            weight_decay, final_weight_decay, betas, eps).
        pretrain_args: command-line overrides for every training run ("{seed}": the seed).
        plan_args: command-line overrides for every planning run ("{seed}": the seed).
        baselines: "random" (random actions) and / or "oracle" (the true simulator).
        launcher: put before every command, e.g. ["srun", "--ntasks-per-node=8"] inside a SLURM allocation.
        workers: commands run at a time; a model's planning starts when its training is done (2 workers of
            1 thread each keep 2 cores busy: these small models gain little from a second thread).
        threads: torch threads of every command (OMP_NUM_THREADS; None: torch's default).
        stage: "all"; or only "pretrain", "plan" (needs the trained runs) or "report".
        only: run only these runs ("ac_jepa", "ac_jepa/seed0", "oracle", ...).
        dry_run: print the commands and check the configs; run nothing.
        wandb_project: W&B project of the results run (null: no W&B).
    """
    check_run_arguments("plan_benchmark", objectives, BASELINES, seeds, steps, optimizer, [plan_config])
    if set(baselines) - set(BASELINES):
        raise ValueError(f"baselines must be among {BASELINES}, got {list(baselines)}")
    if workers < 1 or (threads is not None and threads < 1):
        raise ValueError(f"workers and threads must be >= 1, got workers={workers}, threads={threads}")
    out = Path(out_dir)

    optimizer_args = [f"--model.init_args.{k}={json.dumps(v)}" for k, v in (optimizer or {}).items()]
    python = [*launcher, sys.executable, "-m", "arjepa_pl"]

    def train_command(objective: Pretraining, run: Run) -> list[str]:
        return fit_command(python, objective, run, steps, pretrain_args, optimizer_args)

    def plan_command(run: Run, model_args: list[str]) -> list[str]:
        return [*python, "plan", "--config", plan_config, *with_seed(plan_args, run.seed), *model_args,
                f"--seed={run.seed}", f"--out_dir={run.directory / 'plan'}"]

    # Fairness first, with seed 0's resolved configs; and the plan config parses (not after hours of training).
    checks = {o.name: train_command(o, Run(o.name, seeds[0], out / o.name / "check")) for o in objectives}
    resolved = {name: resolved_config(command[len(python) + 1:-1]) for name, command in checks.items()}
    check_fairness(resolved, WORLD_MODEL_KEYS)
    plan_arguments(plan_command(Run("oracle", seeds[0], out / "check"), ["--world_model=oracle"])[len(python) + 1:])

    runs = [Run(o.name, seed, out / o.name / f"seed{seed}") for seed in seeds for o in objectives]
    floors = [Run(name, seed, out / name / f"seed{seed}") for seed in seeds for name in baselines]
    by_name = {o.name: o for o in objectives}

    def selected(run: Run) -> bool:
        return not only or run.objective in only or run.name in only

    def planned(run: Run) -> bool:
        return (run.directory / "plan" / RESULTS).is_file()

    def command(job: Job) -> list[str]:
        if job.kind == "pretrain":
            return train_command(by_name[job.run.objective], job.run)
        if job.run.objective in BASELINES:
            return plan_command(job.run, [f"--world_model={job.run.objective}"])
        # Looked up when the job starts, after its training (checked complete) has ended.
        checkpoint = find_resume_checkpoint([job.run.directory / "checkpoints"])
        return plan_command(job.run, [f"--ckpt_path={checkpoint or job.run.directory / 'checkpoints/last.ckpt'}"])

    def plan_job(run: Run) -> list[Job]:
        if stage not in ("all", "plan"):
            return []
        if planned(run):
            print(f"[plan_benchmark] {run.name}: planned already ({run.directory / 'plan' / RESULTS})")
            return []
        return [Job("plan", run, run.directory)]

    untrained = [run.name for run in filter(selected, runs) if not is_complete(run.directory, "fit", steps)]
    if stage == "plan" and untrained and not dry_run:
        raise FileNotFoundError(f"not trained for {steps} steps yet: {', '.join(untrained)}; train them first "
                                "(--stage pretrain or all)")
    jobs: list[Job] = []
    for run in filter(selected, runs):
        if stage in ("all", "pretrain") and run.name in untrained:
            jobs.append(Job("pretrain", run, run.directory))
            stale = run.directory / "plan" / RESULTS
            if stale.is_file() and not dry_run:  # planned after an earlier, shorter training: plan again
                stale.replace(stale.with_name(f"{RESULTS}.stale"))
                print(f"[plan_benchmark] {run.name}: its planning results predate this training; kept as "
                      f"{stale.name}.stale")
        else:
            if stage in ("all", "pretrain"):
                print(f"[plan_benchmark] {run.name}: trained already ({run.directory / SUMMARY})")
            jobs += plan_job(run)
    jobs += [job for run in filter(selected, floors) for job in plan_job(run)]
    if dry_run:
        for job in jobs:
            print(f"$ {command_line(command(job))}")
            if job.kind == "pretrain":
                jobs += plan_job(job.run)
        return None

    def finished(job: Job) -> list[Job]:
        if job.kind == "pretrain":
            if not is_complete(job.directory, "fit", steps):
                raise unfinished(job.directory)
            return plan_job(job.run) if stage == "all" else []
        if not planned(job.run):
            raise RuntimeError(f"{job.run.name}: the planning run exited without {RESULTS}; start the benchmark again")
        return []

    runner = JobRunner(out, "subprocess", workers, threads, tag="plan_benchmark")
    try:
        runner.run(jobs, command, finished)
    finally:
        runner.close()

    if stage not in ("all", "report"):
        return None
    rows = []
    for run in runs + floors:
        results = run.directory / "plan" / RESULTS
        if not results.is_file():
            raise FileNotFoundError(f"{run.name} has no planning results ({results}): run its stages first")
        trained = json.loads((run.directory / SUMMARY).read_text()) if run.objective not in BASELINES else {}
        rows.append(result_row(run, json.loads(results.read_text())["summary"], trained))
    return write_benchmark_report(rows, out, steps, wandb_project)


def result_row(run: Run, planned: dict, trained: dict) -> dict:
    """One run's numbers: its planning summary and, for trained models, what training cost."""
    return {"objective": run.objective, "seed": run.seed, "episodes": planned["episodes"],
            "success_rate": planned["success_rate"],
            "success_rate_same_room": planned.get("success_rate_same_room"),
            "success_rate_other_room": planned.get("success_rate_other_room"),
            "final_distance": planned["final_distance"], "steps": planned["steps"],
            "planning_seconds_per_action": planned["planning_seconds_per_action"],
            "planning_flops_per_action": planned.get("planning_flops_per_action"),
            "eval_seconds": planned["eval_seconds"],
            "train_steps": trained.get("global_step"), "train_flops": trained.get("train_flops"),
            "train_seconds": trained.get("fit_seconds")}


def _cell(values: list, scale: float = 1.0, digits: int = 1) -> str:
    values = [v for v in values if v is not None]
    return fmt(values, scale, digits) if values else "—"


def benchmark_markdown(rows: list[dict], steps: int) -> str:
    objectives = list(dict.fromkeys(r["objective"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"Planning in two rooms: mean ± std over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}); "
             "world models "
             f"trained {steps} steps each; {rows[0].get('episodes', 'the same')} episodes per run.", "",
             "| world model | success (%) | same room (%) | other room (%) | final distance | steps "
             "| planning ms / action | planning GFLOPs / action | training TFLOPs | training min | planning min |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for objective in objectives:
        runs = [r for r in rows if r["objective"] == objective]
        column = {key: [r[key] for r in runs] for key in runs[0]}
        lines.append(f"| {objective} | {_cell(column['success_rate'], 100)} | "
                     f"{_cell(column['success_rate_same_room'], 100)} | "
                     f"{_cell(column['success_rate_other_room'], 100)} | "
                     f"{_cell(column['final_distance'], 1, 3)} | "
                     f"{_cell(column['steps'])} | {_cell(column['planning_seconds_per_action'], 1000)} | "
                     f"{_cell(column['planning_flops_per_action'], 1e-9, 2)} | {_cell(column['train_flops'], 1e-12)} | "
                     f"{_cell(column['train_seconds'], 1 / 60)} | {_cell(column['eval_seconds'], 1 / 60)} |")
    return "\n".join(lines) + "\n"


def plot_success(rows: list[dict], path: Path) -> None:
    """Success rate per world model: bars (mean), whiskers (std), dots (seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objectives = list(dict.fromkeys(r["objective"] for r in rows))
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(objectives), 3.4))
    for i, objective in enumerate(objectives):
        values = [100 * r["success_rate"] for r in rows if r["objective"] == objective]
        mean, std = mean_std(values)
        ax.bar(i, mean, 0.6, yerr=std, capsize=3, color="tab:gray" if objective in BASELINES else "tab:blue", alpha=0.8)
        ax.scatter([i] * len(values), values, s=10, color="black", zorder=3)
    ax.set_xticks(range(len(objectives)), objectives, rotation=15)
    ax.set_ylim(0, 100)
    ax.set_ylabel("planning success (%)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_benchmark_report(rows: list[dict], out: Path, steps: int, wandb_project: Optional[str] = None) -> Path:
    """results.csv, results.md, results.png in `out` (and the W&B run); returns results.md's path."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    report = benchmark_markdown(rows, steps)
    (out / "results.md").write_text(report)
    plot_success(rows, out / "results.png")
    print(report)
    if wandb_project:
        import wandb

        from arjepa_pl.loggers import choose_mode, pinned_run_id

        mode, why = choose_mode(None, connect_timeout=5.0)
        if why:
            print(f"[plan_benchmark] W&B {mode}: {why}")
        run = wandb.init(project=wandb_project, dir=str(out), id=pinned_run_id(out), resume="allow",
                         mode=mode,  # type: ignore[arg-type]
                         job_type="plan_benchmark", name=f"plan-benchmark-{out.name}", reinit="finish_previous")
        run.log({"plan_benchmark/results": wandb.Table(columns=list(rows[0]), data=[list(r.values()) for r in rows]),
                 "plan_benchmark/plot": wandb.Image(str(out / "results.png")),
                 "plan_benchmark/report": wandb.Html(f"<pre>{report}</pre>")})
        for objective in dict.fromkeys(r["objective"] for r in rows):
            run.summary[f"{objective}/success_rate"] = statistics.fmean(
                r["success_rate"] for r in rows if r["objective"] == objective)
        run.finish()
    return out / "results.md"


def main(argv: Optional[list[str]] = None) -> None:
    harness_main(benchmark, "plan_benchmark", __doc__.split("\n\n")[0], "configs/plan_benchmark.yaml", argv)
