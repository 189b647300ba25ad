"""The loss without W&B: the CSV logger every config carries (continued by resumed runs) and
`python -m arjepa_pl summary RUN_DIR` (key numbers and a picture of the curves)."""

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from arjepa_pl.cli import main
from arjepa_pl.loggers import CSVLogger
from arjepa_pl.summary import better, read_metrics, summarize, summary_text


def _log(run_dir, rows):
    logger = CSVLogger(save_dir=str(run_dir))
    for step, metrics in rows:
        logger.log_metrics(metrics, step=step)
    logger.finalize("success")
    return logger


def test_csv_logger_writes_the_run_directory_file_and_a_resumed_run_continues_it(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "directory exists and is not empty" warning
        logger = _log(tmp_path, [(9, {"train/loss": 1.0, "train/lr": 1e-4}), (19, {"train/loss": 0.8})])
        assert logger.log_dir == str(tmp_path)
        (tmp_path / "checkpoints").mkdir()  # a run directory is never empty on resume
        # Resumed from a checkpoint at step 15: steps 19 and 29 are logged (again), and a new metric.
        _log(tmp_path, [(19, {"train/loss": 0.7}), (29, {"train/loss": 0.6, "val/loss": 0.9})])
    series = read_metrics(tmp_path)
    assert series["train/loss"] == [(9, 1.0), (19, 0.7), (29, 0.6)]  # the value logged last wins
    assert series["val/loss"] == [(29, 0.9)] and series["train/lr"] == [(9, 1e-4)]
    assert len(series["time"]) == 3 and series["time"][0][1] > 1.7e9  # Unix time of each row
    assert not (tmp_path / "hparams.yaml").exists()  # config.yaml holds the configuration


def test_which_way_is_better():
    assert [better(k) for k in ("train/loss", "val/bits_per_byte", "online_probe/shape/acc", "val/shape/l5/top1",
                                "val/tokenizer_psnr", "train/lr", "collapse/target_rankme")] == \
        ["min", "min", "max", "max", "max", None, None]


@pytest.fixture
def run_dir(tmp_path):
    _log(tmp_path, [(0, {"collapse/target_rankme": 35.0}), (9, {"train/loss": 0.9, "train/lr": 1e-4, "epoch": 0,
                                                                  "perf/clips_per_sec": 20.0}),
                    (19, {"train/loss": 0.5, "train/lr": 1e-3, "epoch": 1, "perf/clips_per_sec": 30.0}),
                    (19, {"val/loss": 0.6, "online_probe/shape/acc": 0.5}),
                    (25, {"collapse/target_rankme": 25.0, "collapse/context_rankme": 9.0}),
                    (29, {"train/loss": 0.55, "train/lr": 5e-4, "epoch": 2, "perf/clips_per_sec": 25.0}),
                    (29, {"val/loss": 0.65, "online_probe/shape/acc": 0.25})])
    (tmp_path / "config.yaml").write_text("trainer:\n  max_steps: 30\n")
    (tmp_path / "summary.json").write_text(json.dumps({"global_step": 30, "fit_seconds": 120.0, "train_clips": 240}))
    return tmp_path


def test_summary_gives_steps_time_throughput_and_last_and_best_of_each_metric(run_dir):
    text = summary_text(run_dir, read_metrics(run_dir))
    head, speed, header, *rows = text.splitlines()
    assert head == f"{run_dir}: step 30 / 30, 2.0 min of fit"
    assert speed == "throughput: 25 clips/s while training (median), 2 clips/s over the whole fit"
    assert header.split() == ["metric", "last", "(step)", "best", "(step)"]
    table = {row.split()[0]: row.split()[1:] for row in rows if not row.startswith("RankMe")}
    assert table["train/loss"] == ["0.55", "(29)", "0.5", "(19)"]
    assert table["val/loss"] == ["0.65", "(29)", "0.6", "(19)"]
    assert table["online_probe/shape/acc"] == ["0.25", "(29)", "0.5", "(19)"]
    assert list(table)[:2] == ["train/loss", "val/loss"] and "train/lr" not in table
    assert rows[-1] == "RankMe, step 0 -> 25: context 9 -> 9, target 35 -> 25"


def test_summary_command_prints_the_numbers_and_draws_the_curves(run_dir, capsys):
    main(["summary", str(run_dir)])
    out = capsys.readouterr().out
    assert "train/loss" in out and f"curves: {run_dir / 'curves.png'}" in out
    picture = np.asarray(Image.open(run_dir / "curves.png"))
    assert picture.shape[1] > 4 * picture.shape[0] / 2  # four panels side by side: loss, lr, probe, RankMe
    assert (picture[..., :3] < 128).any()  # something is drawn


def test_summary_of_a_run_without_metrics_says_where_they_would_be(tmp_path, capsys):
    assert "no metrics.csv" in summarize(tmp_path, picture=False)
    with pytest.raises(SystemExit) as exit_:
        main(["summary", str(tmp_path / "nowhere")])
    assert exit_.value.code == 2 and "no run directory" in capsys.readouterr().err
