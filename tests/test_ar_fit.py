"""The three autoregressive configs end to end through the CLI: a short fit lowers the loss and logs the
likelihood metrics, `predict` writes rollouts (or text samples) and scores them."""

import csv
import json
import math
import re
import shlex
from pathlib import Path

import pytest
import torch

from arjepa_pl.cli import ArJepaCLI
from tests.dist_helpers import video_data

REPO = Path(__file__).resolve().parents[1]
# Lightning's CSV logger alone instead of the configs' CSV + W&B pair (tests/test_wandb.py covers W&B): no
# W&B start-up. A logger given on the command line starts from its own defaults: save_dir is the run's.
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
         "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.init_args.name", "logs"]


def quiet(run_dir: Path) -> list[str]:
    return [*QUIET, "--trainer.logger.init_args.save_dir", str(run_dir)]


def logged(run_dir: Path, key: str) -> list[float]:
    (metrics,) = run_dir.rglob("metrics.csv")
    with metrics.open() as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]


def small_video(config: str, run_dir: Path, demo_manifests, steps: int) -> list[str]:
    """The config on the test demo set's videos (ar_video.yaml's moving-shapes benchmark switched to
    them), 8 frames of 32x32 (4 steps of 4x4 tokens), a 2-layer encoder, validation twice on the same 8 clips."""
    return ["--config", str(REPO / "configs" / config), "--trainer.default_root_dir", str(run_dir), *quiet(run_dir),
            "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps // 2), "--trainer.limit_val_batches", "2",
            "--trainer.log_every_n_steps", "1", "--trainer.accelerator", "cpu",
            *video_data(demo_manifests.train, demo_manifests.val), "--data.frame_step", "2",
            "--data.frames_per_clip", "8", "--data.crop_size", "32", "--data.batch_size", "4", "--data.num_workers", "0",
            "--model.init_args.encoder.init_args.depth", "2", "--model.init_args.rollout_context_frames", "4",
            "--model.init_args.warmup_steps", "3"]


def readme_ar_commands() -> list[list[str]]:
    section = (REPO / "docs/autoregressive.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [shlex.split(line) for block in blocks for line in block.splitlines() if line.startswith("python -m arjepa_pl")]


def test_readme_ar_commands_are_the_configs_and_parse(tmp_path):
    commands = readme_ar_commands()
    for config in ("ar_video", "ar_video_tokens", "ar_text"):
        fit = [c for c in commands if c[3:6] == ["fit", "--config", f"configs/{config}.yaml"]]
        pred = [c for c in commands if c[3:6] == ["predict", "--config", f"configs/{config}.yaml"]]
        assert len(fit) == len(pred) == 1, config
        cli = ArJepaCLI(args=fit[0][4:], run=False)  # parse and build, no data, no training
        # predict reads the checkpoint that fit writes.
        assert pred[0][6:] == ["--ckpt_path", f"{cli.trainer.default_root_dir}/checkpoints/last.ckpt"]
        assert isinstance(cli.model, torch.nn.Module)


def predict(run_dir: Path, extra: list[str]) -> None:
    ArJepaCLI(args=["predict", *extra, "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")])


@pytest.mark.slow
def test_ar_video_fits_and_rolls_out(tmp_path, demo_manifests):
    run_dir = tmp_path / "run"
    args = small_video("ar_video.yaml", run_dir, demo_manifests, steps=40)
    ArJepaCLI(args=["fit", *args])
    val, copy_last = logged(run_dir, "val/loss"), logged(run_dir, "val/copy_last_loss")
    assert len(val) == len(copy_last) == 2 and val[-1] < val[0], val
    assert val[-1] < copy_last[-1], (val, copy_last)  # predicts the next step better than copying the last frame
    # Rollout media while training (MediaLogger + ARVideo.media): after the first step and at the end.
    for step in ("step000001", "step000040"):
        media = run_dir / "logs" / "version_0" / "media" / step
        assert (media / "rollout.png").is_file() and (media / "rollout_video.mp4").is_file(), step
    predict(run_dir, args + ["--data.batch_size", "8"])
    rollouts = run_dir / "rollouts"
    assert len(list(rollouts.glob("clip*.png"))) == 8 and len(list(rollouts.glob("clip*.mp4"))) == 8
    report = json.loads((rollouts / "rollout_metrics.json").read_text())
    assert report["clips"] == 12 and report["context_frames"] == 4 and report["horizon_frames"] == 4
    for name in ("mse", "psnr", "ssim"):
        assert len(report["model"][name]) == len(report["copy_last"][name]) == 4
        assert all(math.isfinite(v) for v in report["model"][name] + report["copy_last"][name])
    assert sum(report["model"]["mse"]) < sum(report["copy_last"]["mse"]), report  # rollouts too


@pytest.mark.slow
def test_ar_video_tokens_fits_a_tokenizer_once_and_reports_bits_per_dim(tmp_path, demo_manifests):
    run_dir = tmp_path / "run"
    args = small_video("ar_video_tokens.yaml", run_dir, demo_manifests, steps=20) + [
        "--model.init_args.num_codes", "64", "--model.init_args.tokenizer_clips", "12", "--model.init_args.tokenizer_iters", "5"]
    ArJepaCLI(args=["fit", *args])
    tokenizer = run_dir / "tokenizer.pt"  # ${trainer.default_root_dir}/tokenizer.pt
    state = torch.load(tokenizer, weights_only=True)
    assert state["codebook"].shape == (64, 3 * 2 * 8 * 8) and state["stats"]["codes_used"] == 64
    losses, val = logged(run_dir, "train/loss"), logged(run_dir, "val/loss")
    assert losses[0] == pytest.approx(math.log(64), abs=0.3)  # untrained: about uniform over the codes
    assert val[0] < 0.8 * math.log(64) and val[-1] < val[0], val
    bits = logged(run_dir, "val/bits_per_dim")
    # bits/dim = NLL / (ln 2 * 384 values per token): ties the logged loss to the logged bits/dim.
    assert bits[-1] == pytest.approx(val[-1] / math.log(2) / 384, rel=0.05)
    assert 10 < logged(run_dir, "val/tokenizer_psnr")[-1] < 60
    assert 0 < logged(run_dir, "val/codebook_used")[-1] <= 1
    # A second run in the same directory reuses the saved tokenizer instead of fitting another.
    mtime = tokenizer.stat().st_mtime_ns
    ArJepaCLI(args=["fit", *args, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0"])
    assert tokenizer.stat().st_mtime_ns == mtime
    predict(run_dir, args)
    report = json.loads((run_dir / "rollouts" / "rollout_metrics.json").read_text())
    assert report["clips"] == 12 and len(report["model"]["psnr"]) == 4


@pytest.mark.slow
def test_ar_text_fits_and_samples(tmp_path):
    corpus = Path(json.__file__).parent.parent  # the standard library, as the config's default, but a slice:
    run_dir = tmp_path / "run"
    args = ["--config", str(REPO / "configs/ar_text.yaml"), "--trainer.default_root_dir", str(run_dir), *quiet(run_dir),
            "--trainer.max_steps", "30", "--trainer.val_check_interval", "10", "--trainer.limit_val_batches", "2",
            "--trainer.log_every_n_steps", "1", "--trainer.accelerator", "cpu",
            "--data.root", str(corpus / "json"), "--data.val_percent", "40", "--data.seq_len", "64",
            "--data.batch_size", "8", "--model.init_args.model.init_args.depth", "2",
            "--model.init_args.model.init_args.max_seq_len", "64", "--model.init_args.warmup_steps", "3"]
    ArJepaCLI(args=["fit", *args])
    val, ppl, bpb = logged(run_dir, "val/loss"), logged(run_dir, "val/perplexity"), logged(run_dir, "val/bits_per_byte")
    assert val[0] < 0.8 * math.log(256) and val[-1] < val[0], val
    assert ppl[-1] == pytest.approx(math.exp(val[-1]), rel=0.02)  # both over the same equal-sized batches
    assert bpb[-1] == pytest.approx(val[-1] / math.log(2), rel=0.02)
    predict(run_dir, args + ["--model.init_args.max_new_bytes", "40", "--data.prompts", '["def ", "x = "]'])
    text = (run_dir / "samples" / "samples_rank0.txt").read_text()
    assert text.count("=== prompt") == 2 and "\ndef " in text and "\nx = " in text
