import pytest

from arjepa_pl import quiet
from data_modules import ensure_demo_videos


def pytest_configure(config):
    quiet.install()  # pytest dropped the package's warning filters with the collection's (see quiet.py)


@pytest.fixture(scope="session")
def demo_manifests(tmp_path_factory):
    """A small demo set (one clip per class in each split), generated once per test session."""
    return ensure_demo_videos(tmp_path_factory.mktemp("demo"), num_train=12, num_val=12, num_frames=32, size=64)


@pytest.fixture(autouse=True)
def wandb_offline(tmp_path_factory, monkeypatch):
    """No test reaches W&B (the configs log to it by default): runs are offline, and W&B's own
    settings, cache and data folders stay out of the home directory."""
    root = tmp_path_factory.getbasetemp() / "wandb-home"
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(root / var.lower()))
