"""The Docker image pins exact versions that satisfy pyproject.toml's ranges, for every dependency."""

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = (REPO / "docker" / "Dockerfile").read_text()


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def docker_pins() -> dict[str, Requirement]:
    pins = [Requirement(m) for m in re.findall(r'"?([A-Za-z0-9_.\-]+(?:\[[^\]]*\])?==[^\s"\\]+)"?', DOCKERFILE)]
    return {p.name.lower(): p for p in pins}


def test_every_dependency_is_pinned_within_its_range():
    pins = docker_pins()
    for dep in map(Requirement, pyproject()["dependencies"]):
        pin = pins.get(dep.name.lower())
        assert pin is not None, f"{dep.name} is a dependency in pyproject.toml but is not pinned in docker/Dockerfile"
        (spec,) = pin.specifier
        assert spec.operator == "==", pin
        assert dep.specifier.contains(spec.version, prereleases=True), (
            f"docker/Dockerfile pins {pin}, outside pyproject.toml's {dep}")
        assert dep.extras <= pin.extras, f"{pin} lacks the extras of {dep}"
    assert set(pins) == {Requirement(d).name.lower() for d in pyproject()["dependencies"]}, "pins of non-dependencies"


def test_python_non_root_user_and_entrypoint():
    (python,) = re.findall(r"^FROM python:(\d+\.\d+)", DOCKERFILE, re.M)
    assert SpecifierSet(pyproject()["requires-python"]).contains(python + ".0")
    users = re.findall(r"^USER (\S+)", DOCKERFILE, re.M)
    assert users and users[-1] not in ("root", "0")
    assert 'ENTRYPOINT ["python", "-m", "arjepa_pl"]' in DOCKERFILE
