"""`python -m arjepa_pl compare --config configs/compare.yaml`: AR vs JEPA on equal terms, and the
claims made about them tested.

For every seed and data condition (e.g. with and without unpredictable nuisance), each objective is
pretrained from its own config with the same backbone, data, optimiser and number of steps (checked
before anything runs: a difference is an error naming it). Then every probe stage reads the frozen
encoders: a classification probe on every checkpoint the pretraining saved (accuracy against training
FLOPs), a pixel decoder on the last, the AR models' rollouts; the same probes read a randomly
initialised encoder of the same architecture (the floor). Results go to the output directory:
results.csv (every number), results.md (accuracy table with intervals, FLOPs, wall time, decoder and
rollout tables, and the claims table: arjepa_pl.evaluation.claims), accuracy_vs_flops.png, and a W&B
run (offline without a key).

Every run is an ordinary `python -m arjepa_pl fit` (or `predict`) in its own directory (the commands
are printed and kept in commands.txt, their wall and CPU time in timings.jsonl), so a run is
reproducible by hand, resumes from its last checkpoint when the comparison is restarted, and is
skipped once it is complete. `--stage` and `--only` split the work, e.g. one SLURM array task per run
and a last job for the report; `--dry_run` prints the plan with a time estimate from measured costs
(arjepa_pl.evaluation.compare_costs).
"""

import inspect
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Optional, Sequence
from unittest.mock import patch

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from arjepa_pl.evaluation.claims import ClaimRoles, claims_context
from arjepa_pl.evaluation.compare_costs import estimate
from arjepa_pl.evaluation.compare_exec import JobRunner
from arjepa_pl.evaluation.compare_plan import (
    OPTIMIZER_KEYS,
    RANDOM_INIT,
    RUN_SUMMARY,
    Condition,
    Job,
    Pretraining,
    ProbeStage,
    Run,
    check_names,
    check_run_arguments,
    choose_checkpoints,
    command_line,
    config_checkpoint_every,
    data_args,
    data_prefix,
    extra_checkpoints,
    fit_command,
    job_done,
    objective_args,
    plain,
    planned_steps,
    saved_checkpoints,
    unfinished,
    with_seed,
)
from arjepa_pl.evaluation.report import collect, write_report

# What must be identical across the objectives' resolved configs for the comparison to be fair.
MUST_MATCH = ("model.init_args.encoder", "data", "trainer.max_steps", "trainer.accumulate_grad_batches",
              "trainer.precision", "trainer.devices", "trainer.num_nodes")

__all__ = ["Condition", "Pretraining", "ProbeStage", "check_fairness", "compare", "main", "resolved_config"]


class _Parsed(Exception):
    def __init__(self, config):
        self.config = config


def resolved_config(args: list[str]) -> Namespace:
    """The fit config these command-line args give, parsed and resolved but nothing instantiated."""
    from arjepa_pl.cli import ArJepaCLI

    class ParseOnly(ArJepaCLI):
        def before_instantiate_classes(self) -> None:
            raise _Parsed(self.config)

    try:
        with patch.object(sys, "argv", sys.argv[:1]):  # Lightning warns when it is given args and argv has some
            ParseOnly(args=args, run=False)
    except _Parsed as parsed:
        return parsed.config
    raise RuntimeError("unreachable: the CLI instantiated its classes")


def check_fairness(configs: dict[str, Namespace], extra_keys: tuple[str, ...] = (),
                   own_steps: Sequence[str] = ()) -> None:
    """Error listing every MUST_MATCH key, optimiser setting and `extra_keys` entry (dotted config keys a
    caller also needs equal) that differs between objectives; those in `own_steps` (objectives given
    their own steps on purpose) are left out of the steps' check."""
    names = list(configs)
    problems = []
    keys = list(MUST_MATCH) + [f"model.init_args.{k}" for k in OPTIMIZER_KEYS] + list(extra_keys)
    for key in keys:
        values = {name: plain(configs[name].get(key)) for name in names  # jsonargparse reads dotted keys
                  if not (key == "trainer.max_steps" and name in own_steps)}
        if any(v != next(iter(values.values())) for v in values.values()):
            problems.append(f"  {key}: " + "; ".join(f"{n}={json.dumps(v, default=str)}" for n, v in values.items()))
    if problems:
        raise ValueError("the objectives would not be compared on equal terms; these settings differ:\n"
                         + "\n".join(problems) + "\nset them in the comparison's pretrain_args / optimizer")


def compare(
    objectives: list[Pretraining],
    probes: list[ProbeStage],
    out_dir: str = "runs/compare",
    seeds: Sequence[int] = (0, 1, 2),
    steps: int = 300,
    checkpoint_every: Optional[int] = None,
    conditions: Optional[list[Condition]] = None,
    data: Optional[dict] = None,
    optimizer: Optional[dict] = None,
    pretrain_args: Sequence[str] = (),
    random_init_baseline: bool = True,
    keep_feature_cache: bool = False,
    claims: Optional[ClaimRoles] = None,
    launcher: Sequence[str] = (),
    executor: Literal["subprocess", "in_process"] = "subprocess",
    workers: int = 1,
    threads: Optional[int] = None,
    stage: Literal["all", "pretrain", "probe", "report"] = "all",
    only: Optional[list[str]] = None,
    dry_run: bool = False,
    costs: Optional[str] = None,
    wandb_project: Optional[str] = "arjepa_pl",
) -> Optional[Path]:
    """Pretrain every objective for every condition and seed, run every probe stage, write the results.

    Args:
        objectives: the objectives compared (name, pretraining config, own args, conditions).
        probes: the probe stages (name, kind probe/predict, config, args, checkpoints, objectives).
        out_dir: where runs and results go: OUT/<objective>/<condition>/seed<S>/<stage>/step<N>/.
        seeds: one pretraining per objective, condition and seed (>= 3 for a mean +- std worth reading).
        steps: optimizer steps of every pretraining (trainer.max_steps).
        checkpoint_every: also save a checkpoint every this many steps, for stages that probe along
            training (default: the pretraining configs' own checkpoints only).
        conditions: data variants (name, data options); default: one, the configs' own data.
        data: data module options of every run, pretraining and probes ("{seed}": the seed).
        optimizer: optimiser settings given to every objective (lr, start_lr, final_lr, warmup_steps,
            weight_decay, final_weight_decay, betas, eps).
        pretrain_args: command-line overrides for every pretraining run ("{seed}": the seed).
        random_init_baseline: also probe a randomly initialised encoder of the same architecture.
        keep_feature_cache: keep each run's cached probe features (<run>/feature_cache) after its probes.
        claims: which objectives, conditions and stages test which claim (arjepa_pl.evaluation.claims).
        launcher: put before every run's command, e.g. ["srun", "--ntasks-per-node=8"] inside a SLURM
            allocation (one task per GPU); empty: run it directly (Lightning starts its own processes).
        executor: "subprocess" (every run a fresh `python -m arjepa_pl`) or "in_process" (the runs one
            after another in this process: no start-up of an interpreter per run, for many short
            single-device runs; not with a launcher or several devices).
        workers: jobs run at a time (in_process: in that many spawned processes); a run's probes start
            when its pretraining is done.
        threads: torch threads per job (default: torch's; 1 with as many workers as cores).
        stage: "all"; or only "pretrain", "probe" (needs the pretrained runs) or "report".
        only: run only these runs ("vjepa", "vjepa/clean", "vjepa/clean/seed0"; "random_init" for the baseline).
        dry_run: print the plan, its commands and a time estimate, and check the configs; run nothing.
        costs: measured costs for the dry run's estimate (default: bench/results/compare_costs.json).
        wandb_project: W&B project of the results run (null: no W&B).
    """
    conditions = list(conditions or [Condition("")])
    check_run_arguments("compare", objectives, (RANDOM_INIT,), seeds, steps, optimizer,
                        [p.config for p in probes if p.config], own_steps=True)
    names = [o.name for o in objectives]
    check_names("condition", [c.name for c in conditions], (RANDOM_INIT,))
    check_names("probe stage", [p.name for p in probes], (RANDOM_INIT,))
    condition_names = {c.name for c in conditions}
    for o in objectives:
        if o.conditions is not None and not set(o.conditions) <= condition_names:
            raise ValueError(f"objective {o.name}: unknown conditions {sorted(set(o.conditions) - condition_names)}")
    for p in probes:
        if p.kind not in ("probe", "predict") or (p.kind == "probe") != (p.config is not None):
            raise ValueError(f"probe stage {p.name}: kind 'probe' needs a config, kind 'predict' none "
                             f"(got kind={p.kind!r}, config={p.config!r})")
        if p.objectives is not None and not set(p.objectives) <= set(names) | {RANDOM_INIT}:
            raise ValueError(f"probe stage {p.name}: unknown objectives {sorted(set(p.objectives) - set(names))}")
        for key, listed in (("conditions", p.conditions), ("along_conditions", p.along_conditions)):
            if listed is not None and not set(listed) <= condition_names:
                raise ValueError(f"probe stage {p.name}: unknown {key} {sorted(set(listed) - condition_names)}")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1 (or null), got {checkpoint_every}")
    if executor not in ("subprocess", "in_process"):
        raise ValueError(f"executor must be 'subprocess' or 'in_process', got {executor!r}")
    if executor == "in_process" and launcher:
        raise ValueError(f"executor 'in_process' runs every run in this process: it cannot use launcher "
                         f"{list(launcher)}")
    in_process = executor == "in_process"
    if workers < 1 or (threads is not None and threads < 1):
        raise ValueError(f"workers and threads must be >= 1, got workers={workers}, threads={threads}")
    out = Path(out_dir)
    python = [*launcher, sys.executable, "-m", "arjepa_pl"]
    optimizer_args = [f"--model.init_args.{k}={json.dumps(v)}" for k, v in (optimizer or {}).items()]
    by_name = {o.name: o for o in objectives}
    by_condition = {c.name: c for c in conditions}

    def steps_of(run: Run) -> int:
        objective = by_name.get(run.objective)  # None: the random encoder, which is not trained
        return objective.steps_or(steps) if objective else steps

    def options(run: Run) -> dict:
        return {**(data or {}), **by_condition[run.condition].data}

    def pretrain_data(run: Run) -> list[str]:
        return data_args("data.init_args.", options(run), run.seed)

    def pretrain_command(run: Run) -> list[str]:
        extra = [extra_checkpoints(checkpoint_every, run.directory / "checkpoints")] if checkpoint_every else []
        return fit_command(python, by_name[run.objective], run, steps, pretrain_args, optimizer_args,
                           pretrain_data(run), extra)

    runs = [Run(o.name, seed, out / o.name / c.name / f"seed{seed}", c.name) for seed in seeds for c in conditions
            for o in objectives if o.conditions is None or c.name in o.conditions]
    baselines = [Run(RANDOM_INIT, seed, out / RANDOM_INIT / c.name / f"seed{seed}", c.name)
                 for seed in seeds for c in conditions] if random_init_baseline else []

    # Fairness first: in each condition, every objective's resolved config (first seed's) must agree.
    resolved = {}
    for c in conditions:
        in_condition = {r.objective: r for r in runs if r.condition == c.name and r.seed == seeds[0]}
        configs = {name: resolved_config(pretrain_command(run)[len(python) + 1:-1])
                   for name, run in in_condition.items()}
        check_fairness(configs, own_steps=[name for name in configs if by_name[name].steps])
        resolved.update({name: config for name, config in configs.items() if name not in resolved})
    if in_process and any((config.get("trainer.devices") not in (1, "1")) or
                          (config.get("trainer.num_nodes") or 1) > 1 for config in resolved.values()):
        raise ValueError("executor 'in_process' runs on one device; these runs use several (trainer.devices / "
                         "num_nodes): use executor 'subprocess'")
    encoder = plain(resolved[names[0]].get("model.init_args.encoder"))
    random_encoder = ["--model.init_args.encoder_checkpoint=null", f"--model.init_args.encoder={json.dumps(encoder)}"]
    every = checkpoint_every or config_checkpoint_every(resolved[names[0]])

    probe_prefix = {p.name: data_prefix(p.config) for p in probes if p.config is not None}

    def stage_command(job: Job) -> list[str]:
        run, stage_ = job.run, job.stage
        assert stage_ is not None, "a stage job has its stage"
        if stage_.kind == "predict" or stage_.config is None:
            objective = by_name[run.objective]
            return [*python, "predict", *objective_args(objective, run.seed, pretrain_args, optimizer_args,
                                                        pretrain_data(run)), *with_seed(stage_.args, run.seed),
                    f"--trainer.default_root_dir={job.directory}", f"--ckpt_path={job.checkpoint}"]
        encoder_args = random_encoder if run.objective == RANDOM_INIT else \
            [f"--model.init_args.encoder_checkpoint={job.checkpoint}"]
        cache = [f"--data.init_args.cache_dir={run.directory / 'feature_cache'}"] \
            if probe_prefix[stage_.name] != "data.init_args." else []
        return [*python, "fit", "--config", stage_.config, *with_seed(stage_.args, run.seed),
                *data_args(probe_prefix[stage_.name], options(run), run.seed), *encoder_args, *cache,
                f"--seed_everything={run.seed}", f"--trainer.default_root_dir={job.directory}", RUN_SUMMARY,
                "--ckpt_path=last"]

    def stage_jobs(run: Run) -> list[Job]:
        jobs = []
        for stage_ in probes:
            applies = (stage_.objectives is None and (run.objective != RANDOM_INIT or stage_.kind == "probe")) \
                or (stage_.objectives is not None and run.objective in stage_.objectives)
            if not applies or (stage_.conditions is not None and run.condition not in stage_.conditions):
                continue
            if run.objective == RANDOM_INIT:
                chosen: dict[int, Optional[Path]] = {0: None}
            elif dry_run and not (run.directory / "checkpoints").is_dir():
                chosen = {s: run.directory / f"checkpoints/step{s:06d}.ckpt"
                          for s in planned_steps(stage_.for_condition(run.condition), every, steps_of(run))}
            else:
                saved = saved_checkpoints(run.directory / "checkpoints")
                if checkpoint_every and saved:  # along training: the comparison's cadence, not the config's
                    saved = {s: p for s, p in saved.items() if s % checkpoint_every == 0 or s == max(saved)}
                chosen = dict(choose_checkpoints(stage_.for_condition(run.condition), saved, steps_of(run)))
                if not chosen:
                    raise FileNotFoundError(f"{run.name}: no checkpoint in {run.directory / 'checkpoints'}: "
                                            "pretrain it first (--stage pretrain)")
            jobs += [Job(stage_.kind, run, run.directory / stage_.name / f"step{step:06d}", stage_, step, checkpoint)
                     for step, checkpoint in chosen.items()]
        return jobs

    def selected(run: Run) -> bool:
        return not only or any(run.name == o or run.name.startswith(o + "/") for o in only)

    # The probe configs are checked now too, not after hours of pretraining.
    probe_configs = {}
    for p in probes:
        if p.kind == "probe":
            check = Job("probe", Run(RANDOM_INIT, seeds[0], out / "check", conditions[0].name), out / "check", p)
            probe_configs[p.name] = resolved_config(stage_command(check)[len(python) + 1:-1])

    pretrain_jobs = [Job("pretrain", run, run.directory) for run in runs if selected(run)]
    if dry_run:
        planned = pretrain_jobs + [job for run in runs + baselines if selected(run) for job in stage_jobs(run)]
        print(estimate(planned, steps_of, costs, workers), flush=True)
        for job in planned:
            print(f"$ {command_line(pretrain_command(job.run) if job.kind == 'pretrain' else stage_command(job))}")
        return None

    pending: dict[str, int] = {}

    def clean_up(run: Run) -> None:
        if not keep_feature_cache:
            shutil.rmtree(run.directory / "feature_cache", ignore_errors=True)

    def stage_todo(run: Run) -> list[Job]:
        todo = []
        for job in stage_jobs(run):
            if job_done(job, steps_of(job.run)):
                print(f"[compare] {job.name}: done already")
            else:
                todo.append(job)
        pending[run.name] = len(todo)
        if not todo:
            clean_up(run)
        return todo

    def finished(job: Job) -> list[Job]:
        if not job_done(job, steps_of(job.run)):
            raise unfinished(job.directory)
        if job.kind == "pretrain":
            return stage_todo(job.run) if stage == "all" else []
        pending[job.run.name] -= 1
        if pending[job.run.name] == 0:
            clean_up(job.run)
        return []

    initial: list[Job] = []
    if stage in ("all", "pretrain"):
        for job in pretrain_jobs:
            if not job_done(job, steps_of(job.run)):
                initial.append(job)
                continue
            print(f"[compare] {job.name}: pretrained already")
            initial += stage_todo(job.run) if stage == "all" else []
    if stage == "probe":
        initial += [job for run in runs if selected(run) for job in stage_todo(run)]
    if stage in ("all", "probe"):
        initial += [job for run in baselines if selected(run) for job in stage_todo(run)]
    runner = JobRunner(out, executor, workers, threads)
    try:
        runner.run(initial, lambda job: pretrain_command(job.run) if job.kind == "pretrain" else stage_command(job),
                   finished)
    finally:
        runner.close()

    if stage not in ("all", "report"):
        return None
    records = collect(runs, baselines, [job for run in runs + baselines for job in stage_jobs(run)])
    context = claims_context(claims, probe_configs, resolved)
    own = {o.name: o.steps for o in objectives if o.steps}
    return write_report(records, out, steps=steps, own_steps=own, claims=claims, context=context,
                        wandb_project=wandb_project)


def harness_main(function: Callable[..., Optional[Path]], command: str, description: str, config: str,
                 argv: Optional[list[str]]) -> None:
    """`python -m arjepa_pl COMMAND --config CONFIG`: `function`'s arguments from a YAML config and the
    command line (compare, plan_benchmark); it runs, then says how long it took and where its report is."""
    parser = ArgumentParser(prog=f"python -m arjepa_pl {command}", description=description,
                            parser_mode="omegaconf+")
    parser.add_argument("--config", action=ActionConfigFile, help=f"a {command} config ({config})")
    parser.add_function_arguments(function)
    init = parser.instantiate_classes(parser.parse_args(argv))
    start = time.time()
    report = function(**{name: init[name] for name in inspect.signature(function).parameters})
    if report is not None:
        print(f"[{command}] done in {(time.time() - start) / 60:.1f} min: {report}")


def main(argv: Optional[list[str]] = None) -> None:
    harness_main(compare, "compare", __doc__.split("\n\n")[0], "configs/compare.yaml", argv)
