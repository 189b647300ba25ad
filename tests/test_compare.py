"""The comparison harness: fairness checks, the report from run summaries, and (slow) the whole
pipeline end to end on a tiny budget through the real CLI."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from arjepa_pl.evaluation.compare import check_fairness, resolved_config
from arjepa_pl.evaluation.report import ProbeResult, markdown, summarise, write_report

REPO = Path(__file__).resolve().parents[1]


def probe_summary(shape_l1, shape_l5, direction_l5):
    return {"stage": "fit", "global_step": 10, "fit_seconds": 30.0, "metrics": {
        "val/shape/l1/top1": shape_l1, "val/shape/l5/top1": shape_l5, "val/direction/l5/top1": direction_l5,
        "val/direction/l5/top5": 1.0, "val/loss": 0.3, "train/loss": 0.2}}


def test_report_means_stds_best_layers_and_files(tmp_path):
    pretrain = {"stage": "fit", "global_step": 300, "fit_seconds": 120.0, "train_flops": 3e14}
    results = [ProbeResult.from_summaries("vjepa", 0, probe_summary(0.9, 0.8, 0.5), pretrain),
               ProbeResult.from_summaries("vjepa", 1, probe_summary(0.7, 0.6, 0.7), pretrain),
               ProbeResult.from_summaries("random_init", 0, probe_summary(0.4, 0.3, 0.25), {})]
    table = summarise(results)
    assert table["shape"]["vjepa"]["last"] == [0.8, 0.6] and table["shape"]["vjepa"]["best_layer"] == 1
    assert table["shape"]["vjepa"]["best"] == [0.9, 0.7]
    text = markdown(results, steps=300)
    assert "| vjepa | 60.0 ± 14.1 | 60.0 ± 14.1 (l5) | 70.0 ± 14.1 | 80.0 ± 14.1 (l1) |" in text  # tasks sorted
    assert "| vjepa | 300 | 300.0 | 1000.0 | 2.0 ± 0.0 | 0.5 ± 0.0 |" in text
    assert "| random_init | 25.0 ± 0.0 | 25.0 ± 0.0 (l5) | 30.0 ± 0.0 | 40.0 ± 0.0 (l1) |" in text
    report = write_report(results, tmp_path, steps=300, wandb_project=None)
    assert report.read_text() == text
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert len(rows) == 9 and {r["objective"] for r in rows} == {"vjepa", "random_init"}
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no val/<task>/l<layer>/top1"):
        ProbeResult.from_summaries("x", 0, {"metrics": {"val/loss": 1.0}}, {})


def test_fairness_check_names_every_difference(demo_manifests):
    base = ["--data.train_manifest", str(demo_manifests.train), "--trainer.max_steps=10"]
    jepa = resolved_config(["--config", str(REPO / "configs/vjepa.yaml"), *base])
    ar = resolved_config(["--config", str(REPO / "configs/ar_video.yaml"), *base])
    check_fairness({"vjepa": jepa, "ar": ar})  # the demo configs agree
    wider = resolved_config(["--config", str(REPO / "configs/ar_video.yaml"), *base,
                             "--model.init_args.encoder.init_args.embed_dim=96", "--data.batch_size=4",
                             "--model.init_args.lr=0.01"])
    with pytest.raises(ValueError) as error:
        check_fairness({"vjepa": jepa, "ar": wider})
    message = str(error.value)
    assert "model.init_args.encoder" in message and "data:" in message and "model.init_args.lr" in message
    assert "trainer.max_steps" not in message


@pytest.mark.slow
def test_compare_runs_end_to_end_and_resumes(tmp_path, demo_manifests):
    """Two objectives and the random baseline on a tiny budget through `python -m arjepa_pl compare`:
    the table, CSV and plot are written; a second call finds every run complete and only reports."""
    data = [f"--data.init_args.train_manifest={demo_manifests.train}", f"--data.init_args.val_manifest={demo_manifests.val}",
            "--data.init_args.num_workers=0", "--data.init_args.frames_per_clip=8", "--data.init_args.batch_size=4",
            "--trainer.logger=false"]
    config = {
        "out_dir": str(tmp_path / "out"), "seeds": [0], "steps": 2,
        "objectives": [{"name": "vjepa", "config": "configs/vjepa.yaml", "args": ["--model.init_args.mask_seed={seed}"]},
                       {"name": "ar_tokens", "config": "configs/ar_video_tokens.yaml",
                        "args": ["--model.init_args.tokenizer_iters=1", "--model.init_args.tokenizer_clips=4",
                                 "--model.init_args.num_codes=16"]}],
        "optimizer": {"lr": 1e-3, "warmup_steps": 1},
        "pretrain_args": data + ["--data.init_args.seed={seed}", "--trainer.limit_val_batches=1"],
        "probe_config": "configs/probe_linear.yaml",
        "probe_args": data + ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2",
                              "--trainer.check_val_every_n_epoch=1"],
        "wandb_project": None,
    }
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "arjepa_pl", "compare", "--config", str(path)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "out"
    table = (out / "results.md").read_text()
    for name in ("vjepa", "ar_tokens", "random_init"):
        assert f"| {name} |" in table
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {(r["objective"], r["task"]) for r in rows} >= {("vjepa", "shape"), ("ar_tokens", "direction"), ("random_init", "shape")}
    assert all(0.0 <= float(r["top1"]) <= 1.0 for r in rows)
    flops = {r["objective"]: float(r["pretrain_flops"]) for r in rows if r["pretrain_flops"]}
    assert flops["vjepa"] > 0 and flops["ar_tokens"] > 0
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "vjepa/seed0/summary.json").read_text())
    assert summary["global_step"] == 2 and summary["stage"] == "fit"

    # `validate` of a trained probe (the README's command) gives the accuracies its fit ended with.
    probe_dir = out / "vjepa/seed0/probe"
    validate = [sys.executable, "-m", "arjepa_pl", "validate", "--config", "configs/probe_linear.yaml", *data,
                "--trainer.limit_val_batches=2", f"--model.init_args.encoder_checkpoint={out / 'vjepa/seed0/checkpoints/last.ckpt'}",
                f"--trainer.default_root_dir={tmp_path / 'validate'}", "--trainer.callbacks+=arjepa_pl.callbacks.RunSummary",
                f"--ckpt_path={probe_dir / 'checkpoints/last.ckpt'}"]
    checked = subprocess.run(validate, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0, checked.stderr[-3000:]
    fitted = json.loads((probe_dir / "summary.json").read_text())["metrics"]
    validated = json.loads((tmp_path / "validate/summary.json").read_text())
    assert validated["stage"] == "validate"
    for key in ("val/shape/l5/top1", "val/direction/l1/top1"):
        assert validated["metrics"][key] == pytest.approx(fitted[key], abs=1e-6), key

    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("already") == 5 and "$ " not in again.stdout  # 2 pretrainings + 3 probes skipped
    assert (out / "results.md").read_text() == table


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("compare*.yaml")), ids=lambda p: p.name)
def test_every_compare_config_checks_out_in_a_dry_run(config, tmp_path):
    """Every pretraining and probe command of the config parses, and the objectives are comparable."""
    done = subprocess.run([sys.executable, "-m", "arjepa_pl", "compare", "--config", str(config), "--dry_run=true",
                           f"--out_dir={tmp_path}"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    seeds = yaml.safe_load(config.read_text())["seeds"]
    assert len(seeds) >= 3
    assert done.stdout.count("$ ") == 3 * len(seeds) + 4 * len(seeds)  # 3 pretrainings and 4 probes per seed
    assert not (tmp_path / "results.md").exists()


def test_mistyped_compare_key_is_an_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "arjepa_pl", "compare", "--config", "configs/compare.yaml", "--seedz=[1]"],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "seedz" in done.stderr
