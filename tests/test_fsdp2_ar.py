"""FSDP2 for the autoregressive objectives and the probes, as 2 gloo processes on the CPU (subprocesses
of the CLI): AR video and AR tokens shard their encoder and head like V-JEPA and train like one process
with the same global batch, with the online probe reading the sharded encoder; a frozen probe trains
its heads under FSDP2 like one process."""

import csv
import json
from pathlib import Path

import pytest
import torch

from tests.dist_helpers import load_weights, max_abs_diff, run_cli, video_data

pytestmark = pytest.mark.slow

STEPS = 3
TOLERANCE = 1e-5  # reduction order differs between 1 and 2 processes
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
         "--trainer.accelerator", "cpu"]
# The test demo set's labels are shape * 4 + direction (3 shapes).
TASKS = [{"name": "shape", "num_classes": 3, "divisor": 4}, {"name": "direction", "num_classes": 4, "modulo": 4}]


def callbacks(run_dir: Path, objective: bool) -> str:
    """A last.ckpt; for an objective also the shard report and the online probe (every step)."""
    checkpoint = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(run_dir / "checkpoints"), "save_last": True, "save_top_k": 0}}
    probe = {"class_path": "arjepa_pl.callbacks.OnlineProbe", "init_args": {"tasks": TASKS, "every_n_steps": 1}}
    report = {"class_path": "tests.dist_helpers.ShardReport", "init_args": {"path": str(run_dir / "shards.json")}}
    return json.dumps([checkpoint, report, probe] if objective else [checkpoint])


def fit(run_dir: Path, devices: int, config: str, manifests, *extra: str, objective: bool = True):
    """A short fit of `config` with a global batch of 4 on `devices` processes (FSDP2 when 2), validated
    once at the end, on the test demo set; returns the run's logged metrics (rank 0's CSV). An objective's
    config (ar_video.yaml: the moving-shapes benchmark) is switched to the video files; a probe's wraps them."""
    strategy = ["--trainer.strategy", "fsdp2_full"] if devices > 1 else []
    if objective:
        data = [*video_data(manifests.train, manifests.val), "--data.frame_step", "2", "--data.batch_size", str(4 // devices)]
        prefix = "--data."
    else:  # arjepa_pl.evaluation.FrozenFeatureData: the video data module is its `data`; the feature cache
        # (in the run's directory) is filled by the sharded encoder, every rank encoding in step.
        data = ["--data.data.train_manifest", str(manifests.train),
                "--data.data.val_manifest", str(manifests.val), "--data.data.batch_size", str(4 // devices)]
        prefix = "--data.data."
    data += [prefix + "num_workers", "0", prefix + "frames_per_clip", "8", prefix + "crop_size", "32"]
    run_cli(["--config", str(REPO / "configs" / config), *QUIET, *strategy, "--trainer.devices", str(devices),
             "--trainer.default_root_dir", str(run_dir), "--trainer.max_steps", str(STEPS),
             "--trainer.val_check_interval", str(STEPS), "--trainer.check_val_every_n_epoch", "1",
             "--trainer.limit_val_batches", "1",
             "--trainer.log_every_n_steps", "1", f"--trainer.callbacks={callbacks(run_dir, objective)}",
             "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
             "--trainer.logger.init_args.save_dir", str(run_dir), "--trainer.logger.init_args.name", "logs",
             *data, *extra])
    (metrics,) = run_dir.rglob("metrics.csv")
    with metrics.open() as f:
        return list(csv.DictReader(f))


def logged(rows: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


REPO = Path(__file__).resolve().parents[1]
TINY_AR = ["--model.init_args.encoder.init_args.embed_dim", "32", "--model.init_args.encoder.init_args.depth", "2",
           "--model.init_args.encoder.init_args.num_heads", "2", "--model.init_args.rollout_context_frames", "4",
           "--model.init_args.warmup_steps", "1"]


@pytest.mark.parametrize("config,extra", [
    ("ar_video.yaml", []),
    ("ar_video_tokens.yaml", ["--model.init_args.num_codes", "32", "--model.init_args.tokenizer_clips", "8",
                              "--model.init_args.tokenizer_iters", "3"]),
], ids=["ar_video", "ar_video_tokens"])
def test_ar_objectives_shard_with_fsdp2_like_one_process(tmp_path, demo_manifests, config, extra):
    single = fit(tmp_path / "single", 1, config, demo_manifests, *TINY_AR, *extra)
    sharded = fit(tmp_path / "fsdp2", 2, config, demo_manifests, *TINY_AR, *extra)
    one, two = (load_weights(tmp_path / run / "checkpoints" / "last.ckpt") for run in ("single", "fsdp2"))
    assert json.loads((tmp_path / "fsdp2" / "shards.json").read_text()) == {
        "co_sharded": None, "dtensor": True, "local_fraction": 0.5, "world_size": 2}
    assert max_abs_diff(one, two) < TOLERANCE
    assert logged(sharded, "val/loss") == pytest.approx(logged(single, "val/loss"), abs=1e-4)
    # The online probe read the sharded encoder every step and was evaluated.
    for task in ("shape", "direction"):
        assert len(logged(sharded, f"online_probe/{task}/acc")) == 1


def test_a_frozen_probe_trains_its_heads_under_fsdp2_like_one_process(tmp_path, demo_manifests):
    """Attentive heads with a self-attention block each (a container of heads, each its own FSDP2
    root) on a frozen encoder (sharded too, read through its forward)."""
    probe = ["--model.init_args.encoder.init_args.embed_dim", "32", "--model.init_args.encoder.init_args.depth", "2",
             "--model.init_args.encoder.init_args.num_heads", "2", "--model.init_args.layers", "[0, 1]",
             "--model.init_args.self_attn_blocks", "1", "--trainer.max_epochs", "-1"]
    single = fit(tmp_path / "single", 1, "probe_attentive.yaml", demo_manifests, *probe, objective=False)
    sharded = fit(tmp_path / "fsdp2", 2, "probe_attentive.yaml", demo_manifests, *probe, objective=False)
    one, two = (load_weights(tmp_path / run / "checkpoints" / "last.ckpt") for run in ("single", "fsdp2"))
    assert any(k.startswith("heads.") and ".blocks.0." in k for k in two)
    # The sharded encoder filled the cache under the keys one process's encoder gives (the fingerprint
    # of the whole weights), with the same features.
    cached = {run: {p.name: torch.load(p) for p in (tmp_path / run / "feature_cache").glob("*.pt")}
              for run in ("single", "fsdp2")}
    assert cached["fsdp2"] and cached["fsdp2"].keys() == cached["single"].keys()
    for name, entry in cached["fsdp2"].items():
        for part, tensor in entry.items():
            assert torch.allclose(tensor.float(), cached["single"][name][part].float(), atol=1e-5), (name, part)
    assert max_abs_diff(one, two) < TOLERANCE
    assert logged(sharded, "val/loss") == pytest.approx(logged(single, "val/loss"), abs=1e-4)
