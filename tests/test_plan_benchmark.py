"""The planning benchmark: its config checks out in a dry run, its report from run summaries, and (slow)
a short fit + plan of each world model through the real CLI, with the baselines, that writes every
report and its media, then a rerun that only reports."""

import csv
import json
import os
from pathlib import Path

import pytest
import yaml

from arjepa_pl.evaluation.compare import Run
from arjepa_pl.planning.benchmark import benchmark_markdown, result_row, write_benchmark_report
from arjepa_pl.planning.plan import success_by_room

REPO = Path(__file__).resolve().parents[1]


def test_the_benchmark_config_checks_out_in_a_dry_run(tmp_path, capsys):
    from arjepa_pl.cli import main

    config = REPO / "configs/plan_benchmark.yaml"
    main(["plan_benchmark", "--config", str(config), "--dry_run=true", f"--out_dir={tmp_path}"])
    printed = capsys.readouterr().out
    seeds = yaml.safe_load(config.read_text())["seeds"]
    assert len(seeds) >= 3
    # 2 trainings and 2 + 2 plans per seed; the objectives' configs were checked for fairness first.
    assert printed.count("$ ") == 2 * len(seeds) + 4 * len(seeds)
    assert printed.count(" fit --config configs/ac_") == 2 * len(seeds) and "--world_model=oracle" in printed
    assert not (tmp_path / "results.md").exists()


def test_planning_untrained_runs_is_refused_before_anything_runs(tmp_path):
    from arjepa_pl.cli import main

    with pytest.raises(FileNotFoundError, match="not trained for 1000 steps yet: ac_jepa/seed0, ac_ar/seed0"):
        main(["plan_benchmark", "--config", str(REPO / "configs/plan_benchmark.yaml"), "--stage=plan",
              f"--out_dir={tmp_path}"])
    assert not list(tmp_path.iterdir())


def test_unfair_world_models_are_refused(tmp_path):
    from arjepa_pl.cli import main

    with pytest.raises(ValueError, match="predictor_depth"):
        main(["plan_benchmark", "--config", str(REPO / "configs/plan_benchmark.yaml"), "--dry_run=true",
              f"--out_dir={tmp_path}", "--objectives=[{name: a, config: configs/ac_jepa.yaml}, {name: b, config: "
              "configs/ac_ar.yaml, args: [--model.init_args.predictor_depth=5]}]"])


def test_the_report_gives_means_and_stds_over_seeds(tmp_path):
    def planned(success):
        return {"episodes": 50, "success_rate": success, "final_distance": 0.1, "steps": 6.0,
                "planning_seconds_per_action": 0.02, "planning_flops_per_action": 2e9, "eval_seconds": 120.0,
                **success_by_room([{"other_room": False, "success": True}, {"other_room": True, "success": success > 0.7},
                                   {"other_room": True, "success": False}])}

    trained = {"global_step": 1500, "train_flops": 4e13, "fit_seconds": 480.0}
    rows = [result_row(Run("ac_jepa", 0, tmp_path), planned(0.8), trained),
            result_row(Run("ac_jepa", 1, tmp_path), planned(0.6), trained),
            result_row(Run("random", 0, tmp_path), {**planned(0.1), "planning_flops_per_action": None}, {})]
    text = benchmark_markdown(rows, steps=1500)
    assert ("| ac_jepa | 70.0 ± 14.1 | 100.0 ± 0.0 | 25.0 ± 35.4 | 0.100 ± 0.000 | 6.0 ± 0.0 | 20.0 ± 0.0 | "
            "2.00 ± 0.00 | 40.0 ± 0.0 | 8.0 ± 0.0 | 2.0 ± 0.0 |") in text
    assert "| random | 10.0 ± 0.0 | 100.0 ± 0.0 | 0.0 ± 0.0 |" in text and "| — | — | — |" in text
    report = write_benchmark_report(rows, tmp_path, steps=1500)
    assert report.read_text() == text and (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list(csv.DictReader(open(tmp_path / "results.csv")))) == 3


def test_success_by_room_splits_the_episodes():
    rows = [{"other_room": o, "success": s} for o, s in ((True, True), (True, False), (True, False), (False, True))]
    assert success_by_room(rows) == {"success_rate_same_room": 1.0, "success_rate_other_room": 1 / 3}
    assert success_by_room(rows[:3])["success_rate_same_room"] is None  # no such episode: no rate


@pytest.mark.slow
def test_fit_and_plan_every_world_model_through_the_cli(tmp_path, capsys):
    """Both world models trained for 3 steps and planned with, beside random actions and the oracle:
    each planning run writes its report and media; the benchmark its table; a rerun only reports."""
    from arjepa_pl.cli import main

    data = [f"--data.init_args.data_dir={tmp_path / 'data'}", "--data.init_args.num_train=8",
            "--data.init_args.num_val=2",
            "--data.init_args.batch_size=4", "--data.init_args.num_workers=0", "--trainer.logger=false",
            "--trainer.limit_val_batches=1", "--trainer.val_check_interval=3"]
    small = ["--model.init_args.encoder.init_args.embed_dim=16", "--model.init_args.encoder.init_args.depth=1",
             "--model.init_args.encoder.init_args.num_heads=2", "--model.init_args.predictor_embed_dim=16",
             "--model.init_args.predictor_depth=1", "--model.init_args.predictor_num_heads=2"]
    config = {
        "out_dir": str(tmp_path / "out"), "seeds": [0], "steps": 3,
        "objectives": [{"name": "ac_jepa", "config": "configs/ac_jepa.yaml"},
                       {"name": "ac_ar", "config": "configs/ac_ar.yaml"}],
        "optimizer": {"lr": 1e-3, "warmup_steps": 1},
        "pretrain_args": data + small + ["--trainer.callbacks.every_n_steps=2"],
        "plan_config": "configs/plan_tworooms.yaml",
        "plan_args": ["--num_episodes=3", "--media_episodes=1", "--max_steps=4", "--wandb_project=null"],
        "wandb_project": None,
        "workers": 2, "threads": 1,  # a model's planning starts when its training ends, beside the other jobs
    }
    path = tmp_path / "plan_benchmark.yaml"
    path.write_text(yaml.safe_dump(config))
    cwd = os.getcwd()
    os.chdir(REPO)  # config paths are relative to the repository, as for a user
    try:
        main(["plan_benchmark", "--config", str(path)])
        out = tmp_path / "out"
        table = (out / "results.md").read_text()
        for name in ("ac_jepa", "ac_ar", "random", "oracle"):
            assert f"| {name} |" in table, table
            plan_dir = out / name / "seed0" / "plan"
            results = json.loads((plan_dir / "results.json").read_text())["summary"]
            assert results["episodes"] == 3 and 0.0 <= results["success_rate"] <= 1.0
            assert results["success_rate_other_room"] is not None  # 2 of the 3 episodes need the door
            media = sorted(p.suffix for p in (plan_dir / "media").iterdir())
            assert media == [".mp4", ".png"], media
        rows = {r["objective"]: r for r in csv.DictReader(open(out / "results.csv"))}
        assert float(rows["ac_jepa"]["train_flops"]) > 0 and float(rows["ac_ar"]["planning_flops_per_action"]) > 0
        assert (out / "ac_jepa/seed0/checkpoints/last.ckpt").is_file()
        capsys.readouterr()
        main(["plan_benchmark", "--config", str(path)])
        again = capsys.readouterr().out
        assert again.count("already") == 6 and "$ " not in again  # 2 trainings + 4 plans skipped
        assert (out / "results.md").read_text() == table
        # A run whose training falls short of the steps asked (here: its summary says 2 of 3) trains on, and
        # its planning results, from the shorter training, are set aside, not reported.
        summary_path = out / "ac_jepa/seed0/summary.json"
        summary_path.write_text(json.dumps({**json.loads(summary_path.read_text()), "global_step": 2}))
        main(["plan_benchmark", "--config", str(path), "--stage=pretrain", "--only=[ac_jepa]"])
        plan_dir = out / "ac_jepa/seed0/plan"
        assert (plan_dir / "results.json.stale").is_file() and not (plan_dir / "results.json").exists()
        assert json.loads(summary_path.read_text())["global_step"] == 3
    finally:
        os.chdir(cwd)
