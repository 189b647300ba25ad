"""`python -m arjepa_pl compare --config configs/compare.yaml`: AR vs JEPA on equal terms.

For every seed, each objective is pretrained from its own config with the same backbone, data,
optimiser and number of steps (checked before anything runs: a difference is an error naming it);
then the same frozen probe (one config, one set of tasks and layers) is trained on each pretrained
encoder, and on a randomly initialised encoder of the same architecture (the floor). The results
go to the output directory: results.csv (one row per objective, seed, task and layer), results.md
(mean +- std over seeds of the last and the best layer, training FLOPs counted with
torch.utils.flop_counter, wall time), results.png, and a W&B run (offline without a key).

Every run is an ordinary `python -m arjepa_pl fit` in its own directory (the commands are printed and
kept in commands.txt), so a run is reproducible by hand, resumes from its last checkpoint when the
comparison is restarted, and is skipped once its summary.json says it is complete. `--stage` and
`--only` split the work, e.g. one SLURM array task per run and a last job for the report.
"""

import inspect
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence
from unittest.mock import patch

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from arjepa_pl.checkpoints import find_resume_checkpoint
from arjepa_pl.evaluation.report import ProbeResult, write_report

SUMMARY = "summary.json"
RUN_SUMMARY = "--trainer.callbacks+=arjepa_pl.callbacks.RunSummary"
# What must be identical across the objectives' resolved configs for the comparison to be fair.
MUST_MATCH = ("model.init_args.encoder", "data", "trainer.max_steps", "trainer.accumulate_grad_batches",
              "trainer.precision", "trainer.devices", "trainer.num_nodes")
OPTIMIZER_KEYS = ("lr", "start_lr", "final_lr", "warmup_steps", "weight_decay", "final_weight_decay", "betas", "eps")


@dataclass
class Pretraining:
    """One objective of the comparison.

    Args:
        name: its name in the results.
        config: its pretraining config (python -m arjepa_pl fit --config CONFIG).
        args: extra command-line overrides for it alone; "{seed}" is replaced by the seed.
    """

    name: str
    config: str
    args: list[str] = field(default_factory=list)


@dataclass
class Run:
    objective: str
    seed: int
    directory: Path

    @property
    def name(self) -> str:
        return f"{self.objective}/seed{self.seed}"


def plain(value):
    """Namespaces -> dicts, recursively, for comparison and printing."""
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


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


def check_fairness(configs: dict[str, Namespace], extra_keys: tuple[str, ...] = ()) -> None:
    """Error listing every MUST_MATCH key, optimiser setting and `extra_keys` entry (dotted config keys a
    caller also needs equal) that differs between objectives."""
    names = list(configs)
    problems = []
    keys = list(MUST_MATCH) + [f"model.init_args.{k}" for k in OPTIMIZER_KEYS] + list(extra_keys)
    for key in keys:
        values = {name: plain(configs[name].get(key)) for name in names}  # jsonargparse reads dotted keys
        if any(v != values[names[0]] for v in values.values()):
            problems.append(f"  {key}: " + "; ".join(f"{n}={json.dumps(v, default=str)}" for n, v in values.items()))
    if problems:
        raise ValueError("the objectives would not be compared on equal terms; these settings differ:\n"
                         + "\n".join(problems) + "\nset them in the comparison's pretrain_args / optimizer")


def is_complete(directory: Path, stage: str, min_step: int = 0) -> bool:
    try:
        summary = json.loads((directory / SUMMARY).read_text())
    except (OSError, ValueError):
        return False
    return summary.get("stage") == stage and summary.get("global_step", 0) >= min_step


def require_complete(directory: Path, stage: str, min_step: int, dry_run: bool) -> None:
    """A run that exited without finishing (pre-empted: its SLURM job is being requeued) stops the
    comparison, which resumes it when started again."""
    if not dry_run and not is_complete(directory, stage, min_step):
        raise RuntimeError(f"{directory} exited before finishing (pre-empted?); start the comparison again "
                           "to resume it from its last checkpoint")


def execute(command: list[str], log_path: Path, record: Path, dry_run: bool) -> None:
    """Run one command with its output appended to log_path and the command line to `record`; an
    error names the command and shows the end of its log."""
    line = shlex.join(command)
    print(f"$ {line}", flush=True)
    if dry_run:
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(record, "a") as f:
        f.write(line + "\n")
    with open(log_path, "a") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    if code:
        tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise RuntimeError(f"command failed (exit {code}): {line}\n--- end of {log_path} ---\n{tail}")


def check_run_arguments(command: str, objectives: Sequence[Pretraining], reserved: Sequence[str],
                        seeds: Sequence[int], steps: int, optimizer: Optional[dict], evaluation_config: str) -> None:
    """What compare and plan_benchmark refuse before running anything: no objective, names that clash
    (with each other, with a baseline's `reserved` name, or holding '/', the run separator), seeds not
    distinct, no steps, an optimiser key the fairness check does not cover, a config that is not there."""
    if not objectives:
        raise ValueError(f"{command} needs at least one objective")
    names = [o.name for o in objectives]
    if len(set(names)) != len(names) or set(names) & set(reserved) or any("/" in n for n in names):
        raise ValueError(f"objective names must be distinct, without '/', and not {list(reserved)}: {names}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {list(seeds)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    unknown = set(optimizer or {}) - set(OPTIMIZER_KEYS)
    if unknown:
        raise ValueError(f"unknown optimizer keys {sorted(unknown)}; use {', '.join(OPTIMIZER_KEYS)}")
    for path in [evaluation_config] + [o.config for o in objectives]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"config not found: {path} (paths are relative to {os.getcwd()})")


def with_seed(args: Sequence[str], seed: int) -> list[str]:
    """Command-line arguments with every `{seed}` replaced by the run's seed."""
    return [a.replace("{seed}", str(seed)) for a in args]


def fit_command(python: list[str], objective: Pretraining, run: Run, steps: int, pretrain_args: Sequence[str],
                optimizer_args: Sequence[str]) -> list[str]:
    """One objective's run as `fit` (`python`: launcher and interpreter up to `-m arjepa_pl`): the shared
    arguments, the equal optimiser, the objective's own, then the run's seed, steps and directory,
    resuming from its checkpoint when it has one."""
    return [*python, "fit", "--config", objective.config, *with_seed(pretrain_args, run.seed), *optimizer_args,
            *with_seed(objective.args, run.seed), f"--seed_everything={run.seed}", f"--trainer.max_steps={steps}",
            f"--trainer.default_root_dir={run.directory}", RUN_SUMMARY, "--ckpt_path=last"]


def train_runs(tag: str, runs: Sequence[Run], command, out: Path, steps: int, dry_run: bool) -> None:
    """Trains each run that has not finished (its fit summary says so) with `command(run)`, one after
    the other, stopping at a run that exits unfinished (pre-empted)."""
    for run in runs:
        if is_complete(run.directory, "fit", steps):
            print(f"[{tag}] {run.name}: trained already ({run.directory / SUMMARY})")
            continue
        print(f"[{tag}] training {run.name}", flush=True)
        execute(command(run), run.directory / "fit.log", out / "commands.txt", dry_run)
        require_complete(run.directory, "fit", steps, dry_run)


def compare(
    objectives: list[Pretraining],
    probe_config: str,
    out_dir: str = "runs/compare",
    seeds: Sequence[int] = (0, 1, 2),
    steps: int = 300,
    optimizer: Optional[dict] = None,
    pretrain_args: Sequence[str] = (),
    probe_args: Sequence[str] = (),
    random_init_baseline: bool = True,
    launcher: Sequence[str] = (),
    stage: Literal["all", "pretrain", "probe", "report"] = "all",
    only: Optional[list[str]] = None,
    dry_run: bool = False,
    wandb_project: Optional[str] = "arjepa_pl",
) -> Optional[Path]:
    """Pretrain every objective for every seed, probe each frozen encoder, write the results.

    Args:
        objectives: the objectives compared (name, pretraining config, own extra args).
        probe_config: the probe every encoder gets (python -m arjepa_pl fit --config PROBE_CONFIG).
        out_dir: where runs and results go: OUT/<objective>/seed<S>/ (pretraining), .../probe/.
        seeds: one pretraining + probe per objective and seed (>= 3 for a mean +- std worth reading).
        steps: optimizer steps of every pretraining (trainer.max_steps).
        optimizer: optimiser settings given to every objective (lr, start_lr, final_lr, warmup_steps,
            weight_decay, final_weight_decay, betas, eps).
        pretrain_args: command-line overrides for every pretraining run ("{seed}": the seed).
        probe_args: command-line overrides for every probe run ("{seed}": the seed).
        random_init_baseline: also probe a randomly initialised encoder of the same architecture.
        launcher: put before every run's command, e.g. ["srun", "--ntasks-per-node=8"] inside a SLURM
            allocation (one task per GPU); empty: run it directly (Lightning starts its own processes).
        stage: "all"; or only "pretrain", "probe" (needs the pretrained runs) or "report".
        only: run only these runs ("vjepa" or "vjepa/seed0"; "random_init" for the baseline).
        dry_run: print the commands and check the configs; run nothing.
        wandb_project: W&B project of the results run (null: no W&B).
    """
    check_run_arguments("compare", objectives, ("random_init",), seeds, steps, optimizer, probe_config)
    names = [o.name for o in objectives]
    out = Path(out_dir)

    optimizer_args = [f"--model.init_args.{k}={json.dumps(v)}" for k, v in (optimizer or {}).items()]

    python = [*launcher, sys.executable, "-m", "arjepa_pl"]

    def pretrain_command(objective: Pretraining, run: Run) -> list[str]:
        return fit_command(python, objective, run, steps, pretrain_args, optimizer_args)

    # Fairness first: every objective's resolved config (seed 0's) must agree where it matters.
    resolved = {o.name: resolved_config(
                    pretrain_command(o, Run(o.name, seeds[0], out / o.name / "check"))[len(python) + 1:-1])
                for o in objectives}
    check_fairness(resolved)
    encoder = plain(resolved[names[0]].get("model.init_args.encoder"))
    random_encoder = ["--model.init_args.encoder_checkpoint=null", f"--model.init_args.encoder={json.dumps(encoder)}"]

    def probe_command(run: Run, encoder_args: list[str]) -> list[str]:
        return [*python, "fit", "--config", probe_config, *with_seed(probe_args, run.seed), *encoder_args,
                f"--seed_everything={run.seed}", f"--trainer.default_root_dir={run.directory / 'probe'}",
                RUN_SUMMARY, "--ckpt_path=last"]

    # The probe's config is checked now too, not after hours of pretraining.
    resolved_config(probe_command(Run("random_init", seeds[0], out / "check"), random_encoder)[len(python) + 1:-1])

    runs = [Run(o.name, seed, out / o.name / f"seed{seed}") for seed in seeds for o in objectives]
    baselines = ([Run("random_init", seed, out / "random_init" / f"seed{seed}") for seed in seeds]
                 if random_init_baseline else [])

    def selected(run: Run) -> bool:
        return not only or run.objective in only or run.name in only

    by_name = {o.name: o for o in objectives}
    if stage in ("all", "pretrain"):
        train_runs("compare", list(filter(selected, runs)), lambda run: pretrain_command(by_name[run.objective], run),
                   out, steps, dry_run)

    if stage in ("all", "probe"):
        for run in filter(selected, runs + baselines):
            probe_dir = run.directory / "probe"
            if is_complete(probe_dir, "fit"):
                print(f"[compare] {run.name}: probed already ({probe_dir / SUMMARY})")
                continue
            if run.objective == "random_init":
                encoder_args = random_encoder
            else:
                checkpoint = find_resume_checkpoint([run.directory / "checkpoints"])
                if checkpoint is None and not dry_run:
                    raise FileNotFoundError(f"{run.name}: no checkpoint in {run.directory / 'checkpoints'}: "
                                            "pretrain it first (--stage pretrain)")
                encoder_checkpoint = checkpoint or run.directory / "checkpoints/last.ckpt"
                encoder_args = [f"--model.init_args.encoder_checkpoint={encoder_checkpoint}"]
            print(f"[compare] probing {run.name}", flush=True)
            execute(probe_command(run, encoder_args), probe_dir / "fit.log", out / "commands.txt", dry_run)
            require_complete(probe_dir, "fit", 1, dry_run)

    if dry_run or stage not in ("all", "report"):
        return None
    results = []
    for run in runs + baselines:
        probe_summary = run.directory / "probe" / SUMMARY
        if not probe_summary.is_file():
            raise FileNotFoundError(f"{run.name} has no probe results ({probe_summary}): run its stages first")
        pretrain = json.loads((run.directory / SUMMARY).read_text()) if run.objective != "random_init" else {}
        results.append(ProbeResult.from_summaries(run.objective, run.seed, json.loads(probe_summary.read_text()),
                                                  pretrain))
    return write_report(results, out, steps=steps, wandb_project=wandb_project)


def main(argv: Optional[list[str]] = None) -> None:
    parser = ArgumentParser(prog="python -m arjepa_pl compare", description=__doc__.split("\n\n")[0],
                            parser_mode="omegaconf+")
    parser.add_argument("--config", action=ActionConfigFile, help="a comparison config (configs/compare.yaml)")
    parser.add_function_arguments(compare)
    init = parser.instantiate_classes(parser.parse_args(argv))
    start = time.time()
    report = compare(**{name: init[name] for name in inspect.signature(compare).parameters})
    if report is not None:
        print(f"[compare] done in {(time.time() - start) / 60:.1f} min: {report}")
