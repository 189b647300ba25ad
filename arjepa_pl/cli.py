"""`python -m arjepa_pl fit|validate|test|predict --config FILE [--key value ...]`, and the commands
that are not one Trainer call: `compare` (pretrain several objectives, probe them, tabulate) and
`export` (a checkpoint's encoder as a plain state dict), each with its own parser.

One LightningCLI serves every objective: the model and the data module are chosen by `class_path`
in the YAML. Config files and command-line overrides are merged first and OmegaConf interpolations
(`${trainer.default_root_dir}`) resolved after, so overriding one key updates everything derived
from it. A key the chosen classes do not accept is an error naming it.

Checkpoints are written atomically, `--ckpt_path last` resumes from the newest checkpoint of the run
(or starts fresh, saying so), loading is weights_only unless `--weights_only false`, every rank's RNG
state is saved, and under SLURM a pre-emption signal checkpoints and requeues at a step boundary
(arjepa_pl.checkpoints, arjepa_pl.slurm).

Fail fast, fail clearly, lose nothing: a configuration mistake is a few lines naming the key and exit
status 2, found before anything is written (arjepa_pl.config_errors, arjepa_pl.validation); a run
directory has one owner (arjepa_pl.run_lock); a non-finite loss stops the run before it reaches the
weights (arjepa_pl.callbacks.nonfinite); SIGTERM / Ctrl-C save at a step boundary and exit 143 / 130
(arjepa_pl.signals). What the user sees: arjepa_pl.errors and docs/running_jobs.md.
"""

import importlib
import sys
from argparse import ArgumentError
from typing import Optional, Sequence

import lightning.pytorch as L
import yaml
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from arjepa_pl import config_errors, signals, validation
from arjepa_pl.callbacks.defaults import add_run_callbacks
from arjepa_pl.callbacks.nonfinite import ensure_nonfinite_guard
from arjepa_pl.checkpoints import (
    CheckpointLoadError,
    RandomState,
    resolve_ckpt_path,
    use_atomic_checkpoint_io,
    wrap_load_errors,
)
from arjepa_pl.errors import ConfigError, reported
from arjepa_pl.run_lock import RunLock, launched_as_rank_zero, run_lock_for
from arjepa_pl.signals import SaveOnSignal
from arjepa_pl.strategies import FSDP2Strategy  # noqa: F401  (registers --trainer.strategy fsdp2)


class SaveAndLogConfig(SaveConfigCallback):
    """config.yaml in the run directory (Lightning's), and the same resolved config as the W&B run's config."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if loggers:
            config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
            for logger in loggers:
                logger.log_hyperparams(config)


PARSER_KWARGS = {"parser_mode": "omegaconf+", "exit_on_error": False}


class ArJepaCLI(LightningCLI):
    _run_lock: Optional[RunLock] = None  # held from before a fit starts until it ends

    def __init__(self, args: Optional[list[str]] = None, run: bool = True, **kwargs):
        super().__init__(
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=SaveAndLogConfig,
            # Requeued SLURM jobs write config.yaml into the same run directory again.
            save_config_kwargs={"overwrite": True},
            # Every subcommand parses the config files, so each needs the mode, not just the root parser; parse
            # errors are raised (not printed with the usage) so that they become a short keyed message.
            parser_kwargs={**PARSER_KWARGS, **{name: PARSER_KWARGS for name in self.subcommands()}},
            # Objectives own their optimiser and per-step schedules.
            auto_configure_optimizers=False,
            # Appended to the configured callbacks: exact resume, and a checkpoint at a step boundary on
            # SIGTERM, Ctrl-C and SLURM pre-emption, in every run.
            trainer_defaults={"callbacks": [RandomState(), SaveOnSignal()]},
            args=args,
            run=run,
            **kwargs,
        )

    def _instantiate_trainer(self, config: dict, callbacks: list) -> L.Trainer:
        # Every run's progress bar, model summary, final validation and end-of-fit summary, unless configured.
        return super()._instantiate_trainer(config, add_run_callbacks(config, callbacks))

    # -- a mistake is a short message naming its key (arjepa_pl.config_errors) ------------------------
    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as e:
            parsers = [parser, *getattr(self, "_subcommand_parsers", {}).values()]
            keys = [a.dest for p in parsers for a in p._actions]
            argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, (dict, Namespace)) else []
            raise config_errors.from_parse_error(str(e), argv, keys) from None

    def _parse_ckpt_path(self) -> None:
        # Lightning reads the hyper-parameters of --ckpt_path here, before anything else: a file that does
        # not load is an error naming it, like at every other load.
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        try:
            wrap_load_errors(str(ckpt_path), super()._parse_ckpt_path)
        except CheckpointLoadError as e:
            raise ConfigError("ckpt_path", str(ckpt_path), str(e).split(": ", 1)[-1]) from e

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as e:
            error = config_errors.from_constructor_error(e, self._config(), L.Trainer)
            if error is None and "Union subtypes" in str(e):
                error = config_errors.from_list_item_error(self._config(), L.Trainer)
            if error is None:
                raise
            raise error from e

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        validation.check_accelerator(self._config().get("trainer") or Namespace())
        trainer = super().instantiate_trainer(**kwargs)
        use_atomic_checkpoint_io(trainer)
        ensure_nonfinite_guard(trainer)
        return trainer

    def _config(self) -> Namespace:
        """The parsed config of the subcommand (all of it without one)."""
        return self.config.get(str(self.subcommand), self.config)

    # -- before anything is written or started ------------------------------------------------------
    def _before_run(self) -> None:
        validation.check_run(self.model, self.datamodule, self.trainer, self._config(), fit=self.subcommand == "fit")
        if self.subcommand == "fit" and launched_as_rank_zero():
            self._run_lock = run_lock_for(self.trainer).acquire()
        self._resolve_checkpoint_args()

    before_fit = before_validate = before_test = before_predict = _before_run

    def _resolve_checkpoint_args(self) -> None:
        config = self.config_init[self.subcommand]
        if "ckpt_path" in config:
            config["ckpt_path"] = resolve_ckpt_path(self.trainer, config["ckpt_path"])
        if config.get("weights_only") is None and "weights_only" in config:
            config["weights_only"] = True

    def _run_subcommand(self, subcommand: str) -> None:
        self._run_lock = None
        try:
            super()._run_subcommand(subcommand)
        except SystemExit:
            # A run stopped by SIGTERM / Ctrl-C (after its checkpoint) exits 143 / 130 on every rank, and
            # so does a Ctrl-C before the training steps (after which Lightning exits with status 1).
            status = signals.exit_status(self.trainer)
            if status is None:
                raise
            sys.exit(status)
        finally:
            if self._run_lock is not None:
                self._run_lock.release()


# Commands beyond Lightning's subcommands: module whose main(argv) runs them, and what they do.
EXTRA_COMMANDS = {
    "compare": ("arjepa_pl.evaluation.compare",
                "pretrain objectives on equal terms, probe each frozen encoder, write the table"),
    "export": ("arjepa_pl.interop.export",
               "write a checkpoint's encoder as a plain state dict with its rebuild config"),
    "plan": ("arjepa_pl.planning.plan", "plan in two rooms with a world model (or the oracle, or random actions)"),
    "plan_benchmark": ("arjepa_pl.planning.benchmark", "train world models on equal terms, plan with each, tabulate"),
    "summary": ("arjepa_pl.summary", "a run's key numbers from its metrics.csv, and a picture of its curves"),
}


def main(args: Optional[Sequence[str]] = None) -> None:
    """Entry point; `args` None reads sys.argv."""
    argv = list(sys.argv[1:] if args is None else args)
    # User errors and named failures become a short message and their exit status (arjepa_pl.errors).
    command = argv[0] if argv and argv[0] in (*ArJepaCLI.subcommands(), *EXTRA_COMMANDS) else None
    with reported(command):
        if argv and argv[0] in EXTRA_COMMANDS:
            importlib.import_module(EXTRA_COMMANDS[argv[0]][0]).main(argv[1:])
            return
        if argv and argv[0] in ("-h", "--help"):
            print("other commands:\n" + "".join(f"  {name:<9} {text}\n" for name, (_, text) in EXTRA_COMMANDS.items()))
        ArJepaCLI(args=None if args is None else argv)  # None: Lightning reads sys.argv itself
