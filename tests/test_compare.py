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

from arjepa_pl.compare import check_fairness, resolved_config
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
    assert "| vjepa | 300 | 0.300 | 1000.0 | 2.0 ± 0.0 | 0.5 ± 0.0 |" in text
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
