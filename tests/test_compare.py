"""The comparison harness: fairness checks, the report and its tables from records, the measured
costs and the dry run's estimate, and (slow) the whole pipeline end to end on a tiny budget through
the real CLI, claims table included."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from arjepa_pl.evaluation.compare import check_fairness, resolved_config
from arjepa_pl.evaluation.compare_costs import estimate, makespan, measure
from arjepa_pl.evaluation.compare_plan import (
    Job,
    Pretraining,
    ProbeStage,
    Run,
    check_run_arguments,
    choose_checkpoints,
    fit_command,
    planned_steps,
)
from arjepa_pl.evaluation.report import Record, markdown, write_report

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def probe(objective, seed, step, flops, direction, shape=0.5, condition="clean"):
    metrics = {"val/clips": 400.0, "fit_seconds": 30.0}
    for task, acc in (("direction", direction), ("shape", shape)):
        metrics.update({f"val/{task}/l1/top1": acc - 0.1, f"val/{task}/l3/top1": acc,
                        f"val/{task}/l3/top1_low": acc - 0.05, f"val/{task}/l3/top1_high": acc + 0.05})
    return Record(objective, condition, seed, "attentive", step, flops, metrics)


def test_report_tables_csv_and_accuracy_against_flops(tmp_path):
    records = [Record("vjepa", "clean", s, None, 300, 3e14, {"fit_seconds": 120.0, "val/loss": 0.5}) for s in (0, 1)]
    records += [probe("vjepa", s, step, 1e14 * step / 100, acc) for s, accs in ((0, (0.3, 0.6)), (1, (0.4, 0.8)))
                for step, acc in zip((100, 300), accs)]
    records += [probe("random_init", s, 0, 0.0, 0.25) for s in (0, 1)]
    records += [Record("vjepa", "clean", 0, "decoder", 300, 3e14, {"val/psnr": 20.0, "val/mse": 0.01, "val/ssim": 0.5})]
    text = markdown(records, steps=300, claims_lines=[])
    # the last checkpoint's last layer, mean ± std over seeds, (± mean Wilson half-width)
    assert "| clean | vjepa | 70.0 ± 14.1 (±5.0) | 70.0 ± 14.1 (l3) | 50.0 ± 0.0 (±5.0) | 50.0 ± 0.0 (l3) |" in text
    assert "| clean | random_init | 25.0 ± 0.0 (±5.0) |" in text
    assert "on 400 evaluation clips" in text
    assert "| clean | vjepa | 300 | 300.0 | 1000.0 | 2.0 ± 0.0 | 1.0 ± 0.0 | 0.5000 ± 0.0000 | — |" in text
    assert "| clean | vjepa | decoder | 20.00 ± 0.00 | 0.0100 ± 0.0000 | 0.50 ± 0.00 |" in text
    report = write_report(records, tmp_path, steps=300)
    assert report.read_text() == text
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert {(r["stage"], r["step"]) for r in rows if r["objective"] == "vjepa"} >= {("attentive", "100"), ("pretrain", "300")}
    assert (tmp_path / "accuracy_vs_flops.png").read_bytes()[:4] == b"\x89PNG"


def test_stage_checkpoint_choice_and_planned_steps(tmp_path):
    saved = {100: Path("probe-step000100.ckpt"), 200: Path("probe-step000200.ckpt"), 300: Path("step000300.ckpt")}
    assert list(choose_checkpoints(ProbeStage("p", config="x"), saved, 300)) == [300]
    assert list(choose_checkpoints(ProbeStage("p", config="x", checkpoints="all"), saved, 300)) == [100, 200, 300]
    with pytest.raises(FileNotFoundError, match=r"steps \[150\]"):
        choose_checkpoints(ProbeStage("p", config="x", checkpoints=[100, 150]), saved, 300)
    assert planned_steps(ProbeStage("p", config="x", checkpoints="all"), 100, 250) == [100, 200, 250]
    assert planned_steps(ProbeStage("p", config="x"), 100, 250) == [250]
    along = ProbeStage("p", config="x", checkpoints="all", along_conditions=["clean"])
    assert list(choose_checkpoints(along.for_condition("clean"), saved, 300)) == [100, 200, 300]
    assert list(choose_checkpoints(along.for_condition("noisy"), saved, 300)) == [300]
    assert planned_steps(along.for_condition("noisy"), 100, 250) == [250]


def test_costs_are_measured_from_a_comparison_and_give_the_estimate(tmp_path):
    (tmp_path / "vjepa/seed0").mkdir(parents=True)
    (tmp_path / "vjepa/seed0/summary.json").write_text(json.dumps({"global_step": 100, "fit_seconds": 50.0}))
    timings = [{"job": "vjepa/seed0", "kind": "pretrain", "stage": None, "objective": "vjepa", "exit": 0,
                "wall_seconds": 60.0, "cpu_seconds": 96.0, "loadavg_start": [1.0], "loadavg_end": [3.0]},
               {"job": "vjepa/seed0/linear/step100", "kind": "probe", "stage": "linear", "objective": "vjepa", "exit": 0,
                "wall_seconds": 20.0, "cpu_seconds": 30.0, "loadavg_start": [2.0], "loadavg_end": [2.0]}]
    (tmp_path / "timings.jsonl").write_text("".join(json.dumps(t) + "\n" for t in timings))
    costs = measure(str(tmp_path))
    assert costs["startup_seconds"] == 10.0 and costs["pretrain_seconds_per_step"]["vjepa"] == 0.5
    assert costs["pretrain_cpu_seconds_per_step"]["vjepa"] == pytest.approx(96.0 * 50 / 60 / 100)
    assert costs["stage_seconds"]["linear"] == 20.0 and costs["loadavg_1min"]["max"] == 3.0
    path = tmp_path / "costs.json"
    path.write_text(json.dumps(costs))
    run = Run("vjepa", 0, tmp_path)
    jobs = [Job("pretrain", run, tmp_path), Job("probe", run, tmp_path, ProbeStage("linear", config="x"), 300),
            Job("probe", run, tmp_path, ProbeStage("decoder", config="x"), 300)]
    text = estimate(jobs, lambda run: 300, str(path))
    assert "1 pretraining runs, 2 probe / predict jobs" in text and "x pretrain vjepa            300 steps" in text
    # CPU: 10 + 300 x 0.8 + 30 = 280 s; wall at the load measured: 10 + 300 x 0.5 + 20 = 180 s
    assert "5 CPU-minutes; with 1 worker(s) on an idle machine ~5 min" in text and "measured ~3 min" in text
    assert "no measured cost for ['decoder']" in text
    assert "1 x pretrain vjepa (300 steps)" in estimate(jobs, lambda run: 300, str(tmp_path / "missing.json"))
    other = Run("vjepa", 1, tmp_path)
    both = [Job("pretrain", run, tmp_path), Job("pretrain", other, tmp_path),
            Job("probe", run, tmp_path, ProbeStage("linear", config="x"), 300)]
    seconds = {id(both[0]): 250.0, id(both[1]): 250.0, id(both[2]): 30.0}
    assert makespan(both, seconds, 1) == 530.0 and makespan(both, seconds, 2) == 280.0  # the probe waits for its run


def test_fairness_check_names_every_difference():
    base = ["--trainer.max_steps=10", "--model.init_args.lr=1e-3"]  # the comparison sets one optimiser for all
    jepa = resolved_config(["--config", str(REPO / "configs/vjepa.yaml"), *base])
    ar = resolved_config(["--config", str(REPO / "configs/ar_video.yaml"), *base])
    check_fairness({"vjepa": jepa, "ar": ar})  # the quick-start configs agree
    wider = resolved_config(["--config", str(REPO / "configs/ar_video.yaml"), *base,
                             "--model.init_args.encoder.init_args.embed_dim=96", "--data.batch_size=4",
                             "--model.init_args.lr=0.01"])
    with pytest.raises(ValueError) as error:
        check_fairness({"vjepa": jepa, "ar": wider})
    message = str(error.value)
    assert "model.init_args.encoder" in message and "data:" in message and "model.init_args.lr" in message
    assert "trainer.max_steps" not in message
    longer = resolved_config(["--config", str(REPO / "configs/ar_video.yaml"), *base, "--trainer.max_steps=20"])
    with pytest.raises(ValueError, match="trainer.max_steps"):
        check_fairness({"vjepa": jepa, "ar": longer})
    check_fairness({"vjepa": jepa, "ar": longer}, own_steps=["ar"])  # an objective given its own steps on purpose


def test_own_steps_only_where_the_harness_allows_them():
    ablation = Pretraining("sg", "configs/vjepa.yaml", steps=100)
    run = Run("sg", 0, Path("out/sg/seed0"))
    assert "--trainer.max_steps=100" in fit_command(["python"], ablation, run, 600, [], [])
    assert "--trainer.max_steps=600" in fit_command(["python"], Pretraining("v", "configs/vjepa.yaml"), run, 600, [], [])
    check_run_arguments("compare", [ablation], (), [0], 600, None, [], own_steps=True)
    with pytest.raises(ValueError, match="same steps; remove its steps"):
        check_run_arguments("plan_benchmark", [ablation], (), [0], 600, None, [])
    with pytest.raises(ValueError, match="steps must be >= 1"):
        check_run_arguments("compare", [Pretraining("sg", "configs/vjepa.yaml", steps=0)], (), [0], 600, None, [],
                            own_steps=True)


def tiny_comparison(out: Path, demo) -> dict:
    """V-JEPA, its stop-grad ablation and the AR token model, tiny models, 2 steps, one seed: every stage
    kind (a probe along training, the decoder, rollouts) and the inputs of three claims (the nuisance
    claim needs a second data condition: tested on records in test_claims.py)."""
    tiny = ["--model.init_args.encoder.init_args.embed_dim=32", "--model.init_args.encoder.init_args.depth=2",
            "--model.init_args.encoder.init_args.num_heads=2", "--trainer.limit_val_batches=1",
            "--trainer.val_check_interval=2", "--trainer.logger=false",
            "--data=data_modules.VideoDataModule"]  # the test demo set for all (vjepa.yaml: the moving-shapes benchmark)
    predictor = ["--model.init_args.predictor_embed_dim=16", "--model.init_args.predictor_depth=1",
                 "--model.init_args.predictor_num_heads=2"]
    probe = ["--trainer.max_epochs=1", "--trainer.check_val_every_n_epoch=1", "--trainer.logger=false"]
    return {
        "out_dir": str(out), "seeds": [0], "steps": 2, "checkpoint_every": 1, "executor": "in_process", "workers": 2,
        "threads": 1,
        "data": {"train_manifest": str(demo.train), "val_manifest": str(demo.val), "num_workers": 0,
                 "frames_per_clip": 8, "frame_step": 2, "crop_size": 64, "hflip": False, "batch_size": 4, "seed": "{seed}"},
        "objectives": [{"name": "vjepa", "config": "configs/vjepa.yaml", "args": ["--model.init_args.mask_seed={seed}", *predictor]},
                       {"name": "vjepa_sg", "config": "configs/vjepa.yaml",
                        "args": ["--model.init_args.teacher=stop_grad", *predictor], "steps": 1},  # its own steps
                       {"name": "ar_tokens", "config": "configs/ar_video_tokens.yaml",
                        "args": ["--model.init_args.tokenizer_iters=1", "--model.init_args.tokenizer_clips=4",
                                 "--model.init_args.num_codes=16", "--model.init_args.rollout_context_frames=4"]}],
        "optimizer": {"lr": 1e-3, "warmup_steps": 1},
        "pretrain_args": tiny,
        "probes": [{"name": "linear", "config": "configs/probe_linear.yaml", "checkpoints": "all",
                    "args": [*probe, "--model.init_args.layers=[0, 1]"]},
                   {"name": "decoder", "config": "configs/probe_decoder.yaml", "objectives": ["vjepa", "random_init"],
                    "args": [*probe, "--model.init_args.width=16", "--model.init_args.num_heads=2"]},
                   {"name": "rollout", "kind": "predict", "objectives": ["ar_tokens"],
                    "args": ["--trainer.limit_predict_batches=1", "--trainer.logger=false"]}],
        "claims": {"jepa": "vjepa", "ar": "ar_tokens", "likelihood": "ar_tokens", "collapse_ablation": "vjepa_sg",
                   "probe": "linear", "decoder": "decoder", "rollout": "rollout"},
        "wandb_project": None,
    }


@pytest.mark.slow
def test_compare_runs_end_to_end_with_the_claims_table_and_resumes(tmp_path, demo_manifests):
    """Through `python -m arjepa_pl compare`: the accuracy, cost, decoder and rollout tables, the claims
    table, accuracy against FLOPs from checkpoints along training, every number in the CSV; a second
    call finds every run complete and only reports."""
    out = tmp_path / "out"
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(tiny_comparison(out, demo_manifests)))
    command = [sys.executable, "-m", "arjepa_pl", "compare", "--config", str(path)]
    done = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = (out / "results.md").read_text()
    for row in ("| — | vjepa |", "| — | vjepa_sg |", "| — | ar_tokens |", "| — | random_init |",
                "| — | vjepa | decoder |", "| — | random_init | decoder |", "| — | ar_tokens | rollout |"):
        assert row in table, row
    claims = table.split("Claims")[1]
    assert claims.count("\n| ") == 5  # header + 4 claims
    assert "**not testable here**: the comparison has no nuisance condition" in claims
    assert "**supported**: an exact, normalised likelihood" in claims  # bits/dim measured on held-out clips
    assert claims.count("**inconclusive**: one seed per arm") == 2  # collapse and generation: numbers, no verdict
    assert "RankMe" in claims and "rollout PSNR" in claims and "decoder on random_init" in claims
    rows = list(csv.DictReader(open(out / "results.csv")))
    linear = {(r["step"], float(r["train_flops"])) for r in rows if r["objective"] == "vjepa" and r["stage"] == "linear"}
    assert len(linear) == 2 and sorted(linear)[0][1] < sorted(linear)[1][1]  # probed along training, FLOPs growing
    assert any(r["metric"] == "val/bits_per_dim" and float(r["value"]) > 0 for r in rows)
    assert any(r["metric"] == "features/l1/rankme" for r in rows)
    assert (out / "accuracy_vs_flops.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "vjepa/seed0/feature_cache").exists()  # removed once its probes were done
    timings = [json.loads(line) for line in (out / "timings.jsonl").read_text().splitlines()]
    assert json.loads((out / "vjepa_sg/seed0/summary.json").read_text())["global_step"] == 1
    assert "pretrained for 2 steps (vjepa_sg 1)" in table
    assert len(timings) == 3 + 6 + 2 + 1 and all(t["in_process"] and t["cpu_seconds"] > 0 for t in timings)

    # `validate` of a trained probe (the documented command) gives the accuracies its fit ended with.
    probe_dir = out / "vjepa/seed0/linear/step000002"
    validate = [sys.executable, "-m", "arjepa_pl", "validate", "--config", "configs/probe_linear.yaml",
                f"--data.data.train_manifest={demo_manifests.train}", f"--data.data.val_manifest={demo_manifests.val}",
                "--data.data.frames_per_clip=8", "--data.data.num_workers=0", "--trainer.logger=false",
                "--model.init_args.layers=[0, 1]",
                f"--model.init_args.encoder_checkpoint={out / 'vjepa/seed0/checkpoints/last.ckpt'}",
                f"--trainer.default_root_dir={tmp_path / 'validate'}", "--trainer.callbacks+=arjepa_pl.callbacks.RunSummary",
                f"--ckpt_path={probe_dir / 'checkpoints/last.ckpt'}"]
    checked = subprocess.run(validate, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0, checked.stderr[-3000:]
    fitted = json.loads((probe_dir / "summary.json").read_text())["metrics"]
    validated = json.loads((tmp_path / "validate/summary.json").read_text())
    assert validated["stage"] == "validate"
    for key in ("val/shape/l1/top1", "val/direction/l0/top1", "val/direction/l1/top1_low"):
        assert validated["metrics"][key] == pytest.approx(fitted[key], abs=1e-6), key

    again = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("already") == 3 + 9 and "$ " not in again.stdout
    assert (out / "results.md").read_text() == table


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("compare*.yaml")), ids=lambda p: p.name)
def test_every_compare_config_checks_out_in_a_dry_run(config, tmp_path):
    """Every command of the config parses, the objectives are comparable, and the plan is printed."""
    done = subprocess.run([sys.executable, "-m", "arjepa_pl", "compare", "--config", str(config), "--dry_run=true",
                           f"--out_dir={tmp_path}"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert len(yaml.safe_load(config.read_text())["seeds"]) >= 3
    plan = next(line for line in done.stdout.splitlines() if line.startswith("[compare] plan:"))
    runs, jobs = (int(n) for n in re.match(r"\[compare\] plan: (\d+) pretraining runs, (\d+) probe", plan).groups())
    assert done.stdout.count("$ ") == runs + jobs
    assert not (tmp_path / "results.md").exists()


def test_mistyped_compare_key_is_an_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "arjepa_pl", "compare", "--config", "configs/compare.yaml", "--seedz=[1]"],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "seedz" in done.stderr
