"""W&B logging: offline by itself and quickly, one W&B run per run directory, and a fit whose metrics,
config and media can be read back from the offline run. No test reaches the network: runs are offline,
and the one that starts without WANDB_MODE points W&B at a local socket."""

import math
import re
import shlex
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from arjepa_pl.callbacks.media import write_media
from arjepa_pl.cli import ArJepaCLI
from arjepa_pl.loggers import RUN_ID_FILE, WandbLogger, choose_mode, has_api_key, pinned_run_id
from wandb_offline import offline_runs, read_offline_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    """No WANDB_MODE, no key in the environment, an empty netrc file."""
    netrc = tmp_path / "netrc"
    netrc.write_text("")
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    return netrc


@pytest.fixture
def silent_server():
    """A local port that accepts connections and never answers: a W&B server that hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


def test_no_key_means_offline_without_any_network_call(no_credentials, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    mode, why = choose_mode(None, connect_timeout=5)
    assert mode == "offline" and "no API key" in why


def test_key_is_found_in_env_or_netrc(no_credentials, monkeypatch):
    assert not has_api_key("https://api.wandb.ai")
    no_credentials.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    assert has_api_key("https://api.wandb.ai")
    assert not has_api_key("https://wandb.example.org")  # keys are per host
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert has_api_key("https://wandb.example.org")


def test_explicit_choices_win(no_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert choose_mode(True, 5)[0] == "offline"
    assert choose_mode(False, 5) == ("online", None)  # forced: no check
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert choose_mode(None, 5)[0] == "offline"


def test_invalid_key_and_a_hanging_server_go_offline_quickly(no_credentials, silent_server, tmp_path, monkeypatch,
                                                              caplog):
    monkeypatch.setenv("WANDB_API_KEY", "not-a-real-key-" + "0" * 25)
    monkeypatch.setenv("WANDB_BASE_URL", silent_server)
    logger = WandbLogger(save_dir=str(tmp_path), connect_timeout=2.0)
    start = time.monotonic()
    run = logger.experiment
    elapsed = time.monotonic() - start
    logger.finalize("success")
    assert elapsed < 10, f"took {elapsed:.1f} s to give up on W&B"
    assert logger.mode == "offline"
    assert [p.name.endswith(run.id) for p in offline_runs(tmp_path)] == [True]
    assert any("did not answer within 2 s" in r.getMessage() and "wandb sync" in r.getMessage() for r in caplog.records)


def test_run_id_is_pinned_in_the_run_directory(tmp_path):
    first = pinned_run_id(tmp_path)
    assert (tmp_path / RUN_ID_FILE).read_text().strip() == first
    assert pinned_run_id(tmp_path) == first
    assert pinned_run_id(tmp_path, "chosen1") == "chosen1"  # an explicit id wins, and is pinned
    assert pinned_run_id(tmp_path) == "chosen1"


def test_media_files_are_written_and_logged_to_wandb(tmp_path):
    logger = WandbLogger(save_dir=str(tmp_path / "run"), offline=True)
    video = np.random.default_rng(0).integers(0, 255, (5, 31, 33, 3), dtype=np.uint8)  # odd sides: padded for H.264
    picture = np.linspace(0, 1, 20 * 10).reshape(20, 10)  # float greyscale
    written = write_media({"rollout": video, "confusion": picture}, tmp_path / "media", step=7, loggers=[logger])
    run_dir = logger.experiment.dir
    logger.finalize("success")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == ["media/step000007/confusion.png",
                                                                          "media/step000007/rollout.mp4"]
    import av
    with av.open(str(tmp_path / "media/step000007/rollout.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 5 and frames[0].shape == (32, 34, 3)
    assert list(Path(run_dir, "media/videos").rglob("*.mp4")) and list(Path(run_dir, "media/images").rglob("*.png"))
    with pytest.raises(ValueError, match="'bad'"):
        write_media({"bad": np.zeros((2, 3, 4, 5, 6))}, tmp_path / "media", step=8)


def test_documented_logging_commands_configure_the_logger(tmp_path):
    docs = (REPO / "docs/logging.md").read_text()
    section = docs.split("## Weights & Biases", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    commands = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()
                if line.startswith("python -m arjepa_pl fit") and "--trainer.logger.project" in line]
    assert len(commands) == 1
    args = shlex.split(commands[0])[4:]  # after `python -m arjepa_pl fit`: run=False takes no subcommand
    logger = ArJepaCLI(args=[*args, "--trainer.default_root_dir", str(tmp_path)], run=False).trainer.loggers[-1]
    assert isinstance(logger, WandbLogger) and Path(logger.save_dir) == tmp_path
    init = logger._wandb_init
    assert (init["project"], init["entity"], init["name"], init["tags"]) == ("my-world-models", "my-team", "vjepa-demo",
                                                                          ["vjepa", "demo"])


def _fit(run_dir: Path, *extra: str) -> None:
    ArJepaCLI(args=[
        "fit", "--config", str(REPO / "configs/vjepa.yaml"), "--trainer.default_root_dir", str(run_dir),
        "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "2", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.logger.init_args.tags", "[test, tiny]", "--trainer.logger.init_args.notes", "from the tests",
        "--data.train_clips", "32", "--data.val_clips", "16", "--data.test_clips", "16", "--data.crop_size", "32",
        "--data.frames_per_clip", "4", "--data.batch_size", "2", "--data.num_workers", "0",
        "--model.init_args.encoder.init_args.embed_dim", "32", "--model.init_args.encoder.init_args.depth", "1",
        "--model.init_args.encoder.init_args.num_heads", "2", "--model.init_args.predictor_embed_dim", "16",
        "--model.init_args.predictor_depth", "1", "--model.init_args.predictor_num_heads", "2", *extra])


EXPECTED = ["train/loss", "val/loss", "train/lr", "train/weight_decay", "train/ema_momentum", "train/grad_norm",
            "train/context_tokens_mask0", "train/target_tokens_mask0", "train/context_tokens_mask1",
            "train/target_tokens_mask1", "perf/step_time", "perf/clips_per_sec", "perf/tokens_per_sec",
            "perf/data_wait", "perf/tflops", "perf/peak_rss_gib"]


@pytest.mark.slow
def test_fit_logs_metrics_config_and_media_offline_and_resumes_the_same_run(tmp_path):
    run_dir = tmp_path / "run"
    _fit(run_dir, "--trainer.max_steps", "4")
    (first,) = offline_runs(run_dir)
    run = read_offline_run(first)

    for key in EXPECTED:
        values = run.values(key)
        assert values and all(math.isfinite(v) for v in values), (key, values)
    assert 0 <= min(run.values("perf/data_wait")) and max(run.values("perf/data_wait")) < 1
    assert max(run.values("trainer/global_step")) == 4
    # The resolved config, with the logger's fields from the config.
    assert run.config["trainer"]["max_steps"] == 4
    assert run.config["model"]["init_args"]["encoder"]["init_args"]["embed_dim"] == 32
    assert (run.project, run.tags, run.notes) == ("arjepa_pl", ["test", "tiny"], "from the tests")
    # Media at the first step and at the end (every 100 steps in the config), as files and on W&B.
    for step in (1, 4):
        for name in ("masks0.png", "masks1.png"):
            assert (run_dir / "media" / f"step{step:06d}" / name).is_file()
    assert sorted(p.name for p in (run_dir / "media").iterdir()) == ["step000001", "step000004"]
    logged = run.values("media/masks1")
    assert len(logged) == 2 and all((first / "files" / entry["filenames"][0]).is_file() for entry in logged)

    # Resuming in the same directory continues the same W&B run.
    _fit(run_dir, "--trainer.max_steps", "6", "--ckpt_path", str(run_dir / "checkpoints/last.ckpt"))
    runs = offline_runs(run_dir)
    assert len(runs) == 2
    resumed = read_offline_run(runs[1])
    assert resumed.id == run.id == (run_dir / RUN_ID_FILE).read_text().strip()
    assert min(resumed.values("trainer/global_step")) > 4
