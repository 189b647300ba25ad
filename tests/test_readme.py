"""The README's commands are the ones CI runs and the ones the tests exercise."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def quick_start_commands() -> list[str]:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_quick_start_is_exactly_two_commands():
    train, test = quick_start_commands()
    assert train.startswith("pip install torch==2.13.0 -e . && ") and "python -m arjepa_pl fit --config configs/vjepa.yaml" in train
    assert test.startswith('pip install torch==2.13.0 -e ".[test]" && ')


def test_ci_runs_the_readme_test_command_verbatim():
    _, test = quick_start_commands()
    assert test in (REPO / ".ci/run").read_text().splitlines()


@pytest.mark.slow
def test_readme_train_command_runs(tmp_path, demo_manifests):
    """The README's training command, as a user types it, shortened by overrides (the full 300-step
    run is what the README promises; CI has no time for it)."""
    train, _ = quick_start_commands()
    command = train.split(" && ", 1)[1].split()
    assert command[:2] == ["python", "-m"]
    overrides = ["--trainer.max_steps", "3", "--trainer.limit_val_batches", "2", "--trainer.val_check_interval", "3",
                 "--data.batch_size", "2", "--data.num_workers", "0", "--trainer.default_root_dir", str(tmp_path / "run"),
                 "--data.train_manifest", str(demo_manifests.train), "--data.val_manifest", str(demo_manifests.val),
                 "--trainer.enable_progress_bar", "false"]
    done = subprocess.run([sys.executable, *command[1:], *overrides], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
