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
"""

import importlib
import sys
from typing import Optional, Sequence

import lightning.pytorch as L
import yaml
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from arjepa_pl.callbacks.defaults import add_run_callbacks
from arjepa_pl.checkpoints import RandomState, resolve_ckpt_path, use_atomic_checkpoint_io
from arjepa_pl.slurm import SlurmRequeue
from arjepa_pl.strategies import FSDP2Strategy  # noqa: F401  (registers --trainer.strategy fsdp2)


class SaveAndLogConfig(SaveConfigCallback):
    """config.yaml in the run directory (Lightning's), and the same resolved config as the W&B run's config."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if loggers:
            config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
            for logger in loggers:
                logger.log_hyperparams(config)


class ArJepaCLI(LightningCLI):
    def __init__(self, args: Optional[list[str]] = None, run: bool = True, **kwargs):
        super().__init__(
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=SaveAndLogConfig,
            # Requeued SLURM jobs write config.yaml into the same run directory again.
            save_config_kwargs={"overwrite": True},
            # Every subcommand parses the config files, so each needs the mode, not just the root parser.
            parser_kwargs={"parser_mode": "omegaconf+",
                           **{name: {"parser_mode": "omegaconf+"} for name in self.subcommands()}},
            # Objectives own their optimiser and per-step schedules.
            auto_configure_optimizers=False,
            # Appended to the configured callbacks: exact resume and safe pre-emption in every run.
            trainer_defaults={"callbacks": [RandomState(), SlurmRequeue()]},
            args=args,
            run=run,
            **kwargs,
        )

    def _instantiate_trainer(self, config: dict, callbacks: list) -> L.Trainer:
        # Every run's progress bar, model summary, final validation and end-of-fit summary, unless configured.
        return super()._instantiate_trainer(config, add_run_callbacks(config, callbacks))

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        use_atomic_checkpoint_io(trainer)
        return trainer

    def _resolve_checkpoint_args(self) -> None:
        config = self.config_init[self.subcommand]
        if "ckpt_path" in config:
            config["ckpt_path"] = resolve_ckpt_path(self.trainer, config["ckpt_path"])
        if config.get("weights_only") is None and "weights_only" in config:
            config["weights_only"] = True

    before_fit = before_validate = before_test = before_predict = _resolve_checkpoint_args


# Commands beyond Lightning's subcommands: module whose main(argv) runs them, and what they do.
EXTRA_COMMANDS = {
    "compare": ("arjepa_pl.evaluation.compare",
                "pretrain objectives on equal terms, probe each frozen encoder, write the table"),
    "export": ("arjepa_pl.interop.export",
               "write a checkpoint's encoder as a plain state dict with its rebuild config"),
    "summary": ("arjepa_pl.summary", "a run's key numbers from its metrics.csv, and a picture of its curves"),
}


def main(args: Optional[Sequence[str]] = None) -> None:
    """Entry point; `args` None reads sys.argv."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in EXTRA_COMMANDS:
        importlib.import_module(EXTRA_COMMANDS[argv[0]][0]).main(argv[1:])
        return
    if argv and argv[0] in ("-h", "--help"):
        print("other commands:\n" + "".join(f"  {name:<9} {text}\n" for name, (_, text) in EXTRA_COMMANDS.items()))
    ArJepaCLI(args=None if args is None else argv)  # None: Lightning reads sys.argv itself
