import pytest

from data_modules import ensure_demo_videos


@pytest.fixture(scope="session")
def demo_manifests(tmp_path_factory):
    """A small demo set (one clip per class in each split), generated once per test session."""
    return ensure_demo_videos(tmp_path_factory.mktemp("demo"), num_train=12, num_val=12, num_frames=32, size=64)
