"""Configuration mistakes through the real CLI: each is a few lines on stderr naming the key and the value,
no traceback, exit status 2, and a run directory left untouched (no config.yaml, no W&B run, no checkpoint).

The cases run as `arjepa_pl.cli.main(argv)` in children forked from one process that imported the CLI
once (tests/cli_batch.py), two at a time: a subprocess per case would import torch and Lightning
~40 times.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.dist_helpers import REPO, cli_env, video_data

VJEPA = str(REPO / "configs/vjepa.yaml")
# configs/vjepa.yaml (the moving-shapes benchmark), small enough to build in a moment (the mistakes are
# added to it).
TINY = ["--model.init_args.encoder.init_args.embed_dim", "32", "--model.init_args.encoder.init_args.depth", "1",
        "--model.init_args.encoder.init_args.num_heads", "2", "--model.init_args.predictor_embed_dim", "16",
        "--model.init_args.predictor_depth", "1", "--model.init_args.predictor_num_heads", "2",
        "--data.frames_per_clip", "8", "--data.crop_size", "32", "--data.num_workers", "0", "--trainer.max_steps", "50"]


def case(id, args, key, value=None, files=None, base=True, command="fit", video=False, manifest=True):
    """One mistake: the CLI arguments after the base ones ({tmp}: this case's folder), the key and value
    stderr must name, and files to write first ({name: text}). video: on video files (VideoDataModule,
    with the test demo set's training manifest unless not `manifest`) instead of the config's benchmark."""
    return dict(id=id, args=args, key=key, value=value, files=files or {}, base=base, command=command,
                video=video, manifest=manifest)


YAML_TYPO = Path(VJEPA).read_text().replace("predictor_depth:", "predictor_detph:")
YAML_BROKEN = "trainer:\n  max_steps: 3\n  limit_val_batches: [1, 2\nmodel:\n  class_path: x\n"
# The benchmark's labels pack its factors in mixed radix (shape: label // 128, 4 values): an online probe task over them.
ONLINE_PROBE = ("trainer:\n  callbacks:\n    - class_path: arjepa_pl.callbacks.OnlineProbe\n"
                "      init_args:\n        tasks: {tasks}\n")

CASES = [
    # values refused by the objects' constructors
    case("batch_size", ["--data.batch_size", "-2"], "data.init_args.batch_size", "-2"),
    case("train_clips", ["--data.train_clips", "0"], "data.init_args.train_clips", "0"),
    case("nuisance", ["--data.nuisance", "fog"], "data.init_args.nuisance", "fog"),
    case("frame_step", ["--data.frame_step", "0"], "data.init_args.frame_step", "0", video=True),
    case("crop_scale", ["--data.crop_scale", "[0.5, 1.5]"], "data.init_args.crop_scale", "1.5", video=True),
    case("num_workers", ["--data.num_workers", "-1"], "data.init_args.num_workers", "-1"),
    case("mix_weights", ["--data.mix_weights", "[1, 2]"], "data.init_args.mix_weights", "[1.0, 2.0]", video=True),
    case("lr", ["--model.init_args.lr=-1e-3"], "model.init_args.lr", "-0.001"),
    case("start_lr", ["--model.init_args.start_lr", "-1"], "model.init_args.start_lr", "-1"),
    case("eps", ["--model.init_args.eps", "0"], "model.init_args.eps", "0"),
    case("betas", ["--model.init_args.betas", "[0.9, 1.0]"], "model.init_args.betas", "[0.9, 1.0]"),
    case("weight_decay", ["--model.init_args.final_weight_decay", "-0.1"], "model.init_args.final_weight_decay",
         "-0.1"),
    case("ema", ["--model.init_args.ema_momentum", "[0.5, 1.5]"], "model.init_args.ema_momentum", "1.5"),
    case("mask_scale", ["--model.init_args.masks", "[{num_blocks: 8, spatial_scale: [0.15, 1.5]}]"],
         "model.init_args.masks[0].spatial_scale", "1.5"),
    case("encoder_heads", ["--model.init_args.encoder.init_args.embed_dim", "33"],
         "model.init_args.encoder.init_args.embed_dim", "33"),
    case("predictor_heads", ["--model.init_args.predictor_embed_dim", "15"], "model.init_args.predictor_embed_dim",
         "15"),
    case("probe_task", ["--config", "{tmp}/tasks.yaml"], "trainer.callbacks[0].init_args.tasks[0].num_classes", "1",
         files={"tasks.yaml": ONLINE_PROBE.format(tasks="[{name: shape, num_classes: 1}]")}),
    case("wandb", ["--trainer.logger.init_args.offline", "true", "--trainer.logger.init_args.log_model", "true"],
         "trainer.logger[1].init_args.log_model", "True"),  # the config's second logger: W&B
    # types and choices refused by the parser
    case("max_steps_type", ["--trainer.max_steps", "abc"], "trainer.max_steps", "abc"),
    case("loss_choice", ["--model.init_args.loss", "l3"], "model.init_args.loss", "l3"),
    case("short_videos", ["--data.short_videos", "truncate"], "data.init_args.short_videos", "truncate", video=True),
    # mistyped names
    case("typo_cli", ["--trainer.max_stepz", "5"], "trainer.max_stepz", "5"),
    case("typo_yaml", [], "model.init_args.predictor_detph", "did you mean predictor_depth",
         files={"typo.yaml": YAML_TYPO}, base=False),
    case("typo_class", ["--data.class_path", "data_modules.VideoDataModul"], "data.class_path", "VideoDataModule"),
    case("typo_command", [], "subcommand", "fot", command="fot"),
    # YAML syntax, missing files
    case("yaml_syntax", ["--config", "{tmp}/broken.yaml"], "broken.yaml:4:6", "YAML syntax",
         files={"broken.yaml": YAML_BROKEN}),
    case("config_missing", ["--config", "{tmp}/nowhere.yaml"], "config", "nowhere.yaml"),
    case("manifest_missing", ["--data.train_manifest", "{tmp}/nowhere.csv"], "data.init_args.train_manifest",
         "nowhere.csv", video=True, manifest=False),
    case("manifest_empty", ["--data.train_manifest", "{tmp}/empty.csv"], "data.init_args.train_manifest", "empty.csv",
         files={"empty.csv": "\n"}, video=True, manifest=False),
    case("manifest_fields", ["--data.val_manifest", "{tmp}/bad.csv"], "data.init_args.val_manifest", "bad.csv:2",
         files={"bad.csv": "a.mp4 0\nb.mp4 1 extra\n"}, video=True),
    case("manifest_label", ["--data.val_manifest", "{tmp}/label.csv"], "data.init_args.val_manifest", "'cat'",
         files={"label.csv": "a.mp4 cat\n"}, video=True),
    case("ckpt_missing", ["--ckpt_path", "{tmp}/nowhere.ckpt"], "ckpt_path", "nowhere.ckpt"),
    case("ckpt_corrupt", ["--ckpt_path", "{tmp}/corrupt.ckpt"], "ckpt_path", "corrupt.ckpt",
         files={"corrupt.ckpt": "not a checkpoint"}),
    # what only the CLI sees: one object against another, and the machine
    case("clip_frames", ["--data.frames_per_clip", "7"], "data.init_args.frames_per_clip", "7"),
    case("clip_crop", ["--data.crop_size", "36"], "data.init_args.crop_size", "36"),
    case("warmup", ["--model.init_args.warmup_steps", "80", "--model.init_args.total_steps", "50"],
         "model.init_args.warmup_steps", "80"),
    case("task_classes", ["--config", "{tmp}/tasks.yaml"], "trainer.callbacks[0].init_args.tasks[0].num_classes", "2",
         files={"tasks.yaml": ONLINE_PROBE.format(tasks="[{name: shape, num_classes: 2, divisor: 128}]")}),
    case("accelerator", ["--trainer.accelerator", "gpu"], "trainer.accelerator", "gpu"),
    # the run directory: busy, not writable
    case("busy", [], "in use by another run", "pid {pid}", files={"run/run.lock": "{lock}"}),
    case("checkpoints_file", [], "checkpoints", "a file of that name is in the way", files={"run/checkpoints": "x"}),
    case("under_file", ["--trainer.default_root_dir", "{tmp}/file/run"], "{tmp}/file/run", "Not a directory",
         files={"file": "x"}),
]


def argv_of(spec: dict, tmp: Path, manifests) -> list[str]:
    config = ["--config", str(tmp / "typo.yaml")] if not spec["base"] else ["--config", VJEPA, *TINY]
    run = ["--trainer.default_root_dir", str(tmp / "run")]
    data = (video_data(manifests.train) if spec["manifest"] else ["--data=data_modules.VideoDataModule"]) if spec["video"] else []
    args = [a.replace("{tmp}", str(tmp)) for a in spec["args"]]
    return [spec["command"], *config, *run, *data, *args]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, demo_manifests):
    """Every case run once, through the CLI, in one batch: {id: (status, stderr, case folder)}."""
    root = tmp_path_factory.mktemp("mistakes")
    lock = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now", "command": "pytest"})
    batch = []
    for spec in CASES:
        tmp = root / spec["id"]
        for name, text in spec["files"].items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text.replace("{lock}", lock))
        tmp.mkdir(exist_ok=True)
        batch.append({"id": spec["id"], "argv": argv_of(spec, tmp, demo_manifests), "cwd": str(REPO)})
    # Not user mistakes: a mistake under ARJEPA_DEBUG=1, and a bug. Both show their traceback.
    for id, args, env in (("debug", ["--data.batch_size", "-2"], {"ARJEPA_DEBUG": "1"}),
                          ("bug", ["--trainer.callbacks+=tests.dist_helpers.BuggyCallback"], {})):
        (root / id).mkdir()
        spec = case(id, args, "")
        batch.append({"id": id, "argv": argv_of(spec, root / id, demo_manifests), "cwd": str(REPO), "env": env})
    (root / "cases.json").write_text(json.dumps(batch))
    started = time.monotonic()
    subprocess.run([sys.executable, str(REPO / "tests" / "cli_batch.py"), str(root / "cases.json"),
                    str(root / "results.json"), "--jobs", "2"], env=cli_env(), check=True, timeout=600)
    print(f"\n{len(batch)} CLI runs in {time.monotonic() - started:.1f} s")
    results = json.loads((root / "results.json").read_text())
    return {k: (v["status"], Path(v["stderr"]).read_text(), root / k) for k, v in results.items()}


def test_enough_mistakes_are_covered():
    assert len(CASES) >= 25 and len({c["id"] for c in CASES}) == len(CASES)


# The batch costs ~37 CPU-seconds (43 CLI runs, two at a time): the slow tier.
@pytest.mark.slow
@pytest.mark.parametrize("spec", CASES, ids=[c["id"] for c in CASES])
def test_mistake_is_a_short_keyed_message_and_nothing_is_written(spec, outcomes):
    status, stderr, tmp = outcomes[spec["id"]]
    tail = "\n".join(stderr.strip().splitlines()[-6:])
    assert status == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert spec["key"].replace("{tmp}", str(tmp)) in tail, tail
    if spec["value"]:
        assert spec["value"].replace("{pid}", str(os.getpid())) in tail, tail
    run = tmp / "run"
    if run.is_dir():  # untouched: only what the case put there
        placed = sorted(Path(name).name for name in spec["files"] if name.startswith("run/"))
        assert sorted(p.name for p in run.iterdir()) == placed
    assert not list(tmp.rglob("config.yaml")) and not list(tmp.rglob("wandb*"))
    assert not list(tmp.rglob("*.ckpt*")) or spec["id"] == "ckpt_corrupt"


@pytest.mark.slow
def test_arjepa_debug_shows_the_traceback(outcomes):
    status, stderr, _ = outcomes["debug"]
    assert status == 1 and "Traceback" in stderr
    assert "ConfigError: data.init_args.batch_size = -2" in stderr


@pytest.mark.slow
def test_a_bug_is_not_dressed_up_as_a_user_mistake(outcomes):
    status, stderr, _ = outcomes["bug"]
    assert status == 1 and "Traceback" in stderr and "RuntimeError: a bug in a constructor" in stderr


def test_accelerator_check_on_a_machine_with_one_gpu(monkeypatch):
    """The machine check where a GPU exists (there is none here: CUDA's answers are stubbed)."""
    from jsonargparse import Namespace
    from lightning.pytorch.accelerators import CUDAAccelerator

    from arjepa_pl.errors import ConfigError
    from arjepa_pl.validation import check_accelerator

    monkeypatch.setattr(CUDAAccelerator, "is_available", staticmethod(lambda: True))
    monkeypatch.setattr(CUDAAccelerator, "auto_device_count", staticmethod(lambda: 1))
    check_accelerator(Namespace(accelerator="gpu", devices=1))
    check_accelerator(Namespace(accelerator="cuda", devices="auto"))
    with pytest.raises(ConfigError, match=r"trainer.devices = 2\n  this machine has 1 gpu device"):
        check_accelerator(Namespace(accelerator="gpu", devices=2))
    with pytest.raises(ConfigError, match="trainer.devices"):
        check_accelerator(Namespace(accelerator="gpu", devices=[0, 1]))
