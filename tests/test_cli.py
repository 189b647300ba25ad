"""The CLI: every config parses and instantiates, overrides work, mistyped keys are errors, and a
short fit of the quick-start config on a small moving-shapes benchmark trains (falling loss, checkpoint
written)."""

import csv
from pathlib import Path

import pytest
import torch

from arjepa_pl.cli import ArJepaCLI
from arjepa_pl.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
# configs/trainer/ holds hardware presets, used as a second --config after an experiment's.
PRESETS = sorted((REPO / "configs" / "trainer").glob("*.yaml"))
# compare*.yaml configure `python -m arjepa_pl compare`, not a Trainer: tests/test_compare.py checks them;
# plan*.yaml configure `python -m arjepa_pl plan` and the planning benchmark: tests/test_planning.py does.
CONFIGS = sorted(set((REPO / "configs").rglob("*.yaml")) - set(PRESETS) - set((REPO / "configs").glob("compare*.yaml"))
                 - set((REPO / "configs").glob("plan*.yaml")))
# Configs whose models are too big to build for real in a test: instantiated on the meta device.
LARGE = {"vjepa_vitl16.yaml", "vjepa2_vitl16.yaml", "vjepa2_vitl16_cooldown.yaml", "vjepa2_vitg16.yaml",
         "vjepa2_vitg16_cooldown.yaml", "vjepa2_probe_vitl16.yaml"}
# Configs written for GPU clusters: their hardware keys are swapped for one CPU process here.
ON_CPU = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "1", "--trainer.strategy", "auto",
          "--trainer.precision", "32-true"]


def build(args: list[str]) -> ArJepaCLI:
    return ArJepaCLI(args=args, run=False)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses_and_instantiates(config, tmp_path, demo_manifests):
    args = ["--config", str(config), *ON_CPU, "--trainer.default_root_dir", str(tmp_path)]
    if "class_path: data_modules.VideoDataModule" in config.read_text():  # video data: the small test demo set
        wrapped = "arjepa_pl.evaluation.FrozenFeatureData" in config.read_text()  # probes: the feature cache's data
        args += ["--data.data.train_manifest" if wrapped else "--data.train_manifest", str(demo_manifests.train)]
    if config.name in LARGE:
        with torch.device("meta"):
            cli = build(args)
    else:
        cli = build(args)
    assert isinstance(cli.model, torch.nn.Module)
    assert sum(p.numel() for p in cli.model.parameters()) > 0
    assert cli.datamodule is not None


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_trainer_preset_applies_over_an_experiment_config(preset, tmp_path):
    from arjepa_pl.strategies import FSDP2Strategy

    # The strategy and precision are built for real (on the CPU, one device); the rest of the
    # experiment's config is kept.
    cli = build(["--config", str(REPO / "configs/vjepa.yaml"), "--config", str(preset), "--trainer.accelerator", "cpu",
                 "--trainer.devices", "1", "--trainer.default_root_dir", str(tmp_path)])
    text = preset.read_text()
    assert cli.model.encoder.depth == 4 and cli.datamodule.crop_size == 64
    assert ("precision: bf16-mixed" in text) == (cli.trainer.precision == "bf16-mixed")
    if "FSDP2Strategy" in text:
        assert isinstance(cli.trainer.strategy, FSDP2Strategy)
        assert cli.model.activation_checkpointing and cli.model.compile_blocks
    elif "strategy:" in text:
        assert type(cli.trainer.strategy).__name__ == "DDPStrategy"
    else:  # lean.yaml: the callbacks alone, the experiment's hardware kept
        names = [type(c).__name__ for c in cli.trainer.callbacks]
        assert "OnlineProbe" not in names and "CollapseMonitor" not in names and "MediaLogger" not in names
        assert Path(cli.trainer.checkpoint_callback.dirpath) == tmp_path / "checkpoints"


def test_paper_recipe_is_the_paper_recipe(tmp_path, demo_manifests):
    with torch.device("meta"):
        cli = build(["--config", str(REPO / "configs/vjepa_vitl16.yaml"), *ON_CPU,
                     "--data.train_manifest", str(demo_manifests.train)])
    trainable = sum(p.numel() for n, p in cli.model.named_parameters() if n.startswith("encoder."))
    assert trainable / 1e6 == pytest.approx(303.9, abs=0.1)
    m = cli.model
    assert (m.lr, m.start_lr, m.final_lr, m.warmup_steps) == (6.25e-4, 2e-4, 1e-6, 12000)
    assert (m.weight_decay, m.final_weight_decay, m.ema_momentum) == (0.04, 0.4, (0.998, 1.0))
    assert [(c.num_blocks, c.spatial_scale) for c in m.masks] == [(8, (0.15, 0.15)), (2, (0.7, 0.7))]
    cfg = cli.config
    assert (cfg.data.init_args.frames_per_clip, cfg.data.init_args.frame_step, cfg.data.init_args.crop_size) == (16, 4, 224)
    assert cfg.trainer.max_steps == 90000
    assert "precision: bf16-mixed" in (REPO / "configs/vjepa_vitl16.yaml").read_text()  # overridden above for CPU


def test_documented_overrides_apply(tmp_path):
    run_dir = tmp_path / "elsewhere"
    cli = build(["--config", str(REPO / "configs/vjepa.yaml"), "--trainer.max_steps", "5", "--data.batch_size", "2",
                 "--data.num_workers", "0", "--data.train_clips", "64", "--data.nuisance", "dynamic",
                 "--data.frames_per_clip", "4", "--data.crop_size", "32", "--trainer.default_root_dir", str(run_dir)])
    dm, trainer = cli.datamodule, cli.trainer
    assert (dm.batch_size, dm.num_workers, dm.frames_per_clip, dm.crop_size) == (2, 0, 4, 32)
    assert dm.split_sizes["train"] == 64 and dm.nuisance.kind == "dynamic"
    assert trainer.max_steps == 5
    # Interpolations resolve after the override: checkpoints and logs follow the run directory.
    assert Path(trainer.checkpoint_callback.dirpath) == run_dir / "checkpoints"
    assert Path(trainer.logger.save_dir) == run_dir


@pytest.mark.parametrize(
    "args,key",
    [
        (["--trainer.max_stepz", "5"], "max_stepz"),
        (["--data.batch_sise", "2"], "batch_sise"),
        (["--model.init_args.encoder.init_args.embed_dimm", "8"], "embed_dimm"),
    ],
)
def test_mistyped_key_on_command_line_is_an_error(args, key):
    # A ConfigError naming the key; `python -m arjepa_pl` prints it in a few lines (tests/test_config_mistakes.py).
    with pytest.raises(ConfigError, match=key):
        build(["--config", str(REPO / "configs/vjepa.yaml"), *args])


def test_mistyped_key_in_config_file_is_an_error(tmp_path):
    text = (REPO / "configs/vjepa.yaml").read_text().replace("predictor_depth:", "predictor_detph:")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match="model.init_args.predictor_detph") as error:
        build(["--config", str(bad)])
    assert error.value.hint == "did you mean predictor_depth?"


# The moving-shapes benchmark of the quick-start configs, small: 32 training clips of 4 frames of 32x32.
SMALL_SHAPES = ["--data.train_clips", "32", "--data.val_clips", "16", "--data.test_clips", "16", "--data.crop_size", "32",
                "--data.frames_per_clip", "4"]


def _logged(run_dir: Path, key: str) -> list[float]:
    (metrics,) = run_dir.rglob("metrics.csv")
    with metrics.open() as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]


@pytest.mark.slow
def test_short_fit_lowers_the_loss_and_checkpoints(tmp_path):
    run_dir = tmp_path / "run"
    # Lightning's CSV logger alone instead of the config's CSV + W&B pair (tests/test_wandb.py reads W&B's files): no
    # W&B start-up. A logger given on the command line starts from its own defaults: save_dir is the run's.
    # `--trainer.callbacks.every_n_steps` sets the last callback's: the collapse monitor measures every 5 steps.
    cli = ArJepaCLI(args=["fit", "--config", str(REPO / "configs/vjepa.yaml"), "--trainer.default_root_dir", str(run_dir),
                          "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.init_args.name", "logs",
                          "--trainer.logger.init_args.save_dir", str(run_dir),
                          "--trainer.max_steps", "40", "--trainer.val_check_interval", "20", "--trainer.log_every_n_steps", "1",
                          "--trainer.limit_val_batches", "2", "--trainer.enable_progress_bar", "false",
                          *SMALL_SHAPES, "--data.batch_size", "4", "--data.num_workers", "2",
                          "--model.init_args.warmup_steps", "5", "--trainer.callbacks.every_n_steps", "5"])
    losses = _logged(run_dir, "train/loss")
    assert len(losses) == 40
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:5]) / 5, losses
    assert len(_logged(run_dir, "val/loss")) == 2
    for key in ("train/lr", "train/weight_decay", "train/ema_momentum", "train/context_tokens_mask0",
                "train/target_tokens_mask1"):
        assert _logged(run_dir, key), key
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "logs" / "version_0" / "config.yaml").is_file()
    # A healthy run: the collapse monitor measured 8 times (steps 0, 5, ..., 35) and stayed quiet
    # (tests/test_collapse.py shows it firing on a deliberately collapsing run).
    (monitor,) = [c for c in cli.trainer.callbacks if type(c).__name__ == "CollapseMonitor"]
    assert len(_logged(run_dir, "collapse/target_rankme")) == 8
    assert monitor.alarm is None, monitor.history
    # The online probe (every batch) trained and was evaluated at both validations, on the five factors.
    for task in ("shape", "colour", "direction", "speed", "location"):
        assert len(_logged(run_dir, f"online_probe/{task}/acc")) == 2, task
