"""The README's commands are the ones CI runs and the ones the tests exercise."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from arjepa_pl.cli import main

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
def test_readme_train_command_runs_and_its_loss_is_readable_without_wandb(tmp_path, capsys):
    """The README's training command, as a user types it, shortened by overrides (the full 600-step
    run is what the README promises; CI has no time for it); then the README's `summary` command on
    its run directory prints the loss and draws the curves."""
    train, _ = quick_start_commands()
    command = train.split(" && ", 1)[1].split()
    assert command[:2] == ["python", "-m"]
    overrides = ["--trainer.max_steps", "3", "--trainer.limit_val_batches", "2", "--trainer.val_check_interval", "3",
                 "--data.batch_size", "2", "--data.num_workers", "0", "--trainer.default_root_dir", str(tmp_path / "run"),
                 "--trainer.enable_progress_bar", "false"]
    done = subprocess.run([sys.executable, *command[1:], *overrides], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "metrics.csv").is_file()
    assert f"{run}: step 3 / 3" in done.stdout and "train/loss" in done.stdout  # the end-of-fit summary
    (run / "curves.png").unlink()

    (summary,) = [block for block in re.findall(r"```bash\n(.*?)```", README, re.S) if " summary " in block]
    command = summary.split()
    assert command[:4] == ["python", "-m", "arjepa_pl", "summary"]
    main([*command[3:-1], str(run)])
    out = capsys.readouterr().out
    assert re.search(r"^train/loss +\d", out, re.M) and re.search(r"^val/loss +\d", out, re.M)
    assert f"curves: {run / 'curves.png'}" in out and (run / "curves.png").stat().st_size > 10_000


def code_map() -> str:
    section = README.split("## Map of the code", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```\n(.*?)```", section, re.S)[0]


@pytest.mark.parametrize("package", ["arjepa_pl", "data_modules"])
def test_the_code_map_names_every_module_and_nothing_else(package):
    """Every module and sub-package is on the README's map, and every name on the map exists."""
    text = code_map().split(f"{package}/\n", 1)[1].split("\n\n", 1)[0]
    text = text.split("\ndata_modules/", 1)[0]
    # The first column of each entry line (two-space indent): one or more comma-separated names.
    entries = [re.split(r"\s{2,}", line.strip())[0] for line in text.splitlines() if re.match(r"  \S", line)]
    names = {name.strip() for entry in entries for name in entry.split(",")}
    on_disk = {p.name + ("/" if p.is_dir() else "") for p in (REPO / package).iterdir()
               if (p.suffix == ".py" and p.stem not in ("__init__", "__main__")) or (p.is_dir() and (p / "__init__.py").exists())}
    assert names == on_disk, f"README map vs {package}/: missing {sorted(on_disk - names)}, stale {sorted(names - on_disk)}"


def test_no_source_file_is_over_400_lines():
    """Small files: a module that grows past ~400 lines is doing more than one job."""
    long = {str(p.relative_to(REPO)): n for package in ("arjepa_pl", "data_modules")
            for p in (REPO / package).rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"split these modules: {long}"
