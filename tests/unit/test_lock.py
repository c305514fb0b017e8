"""requirements.lock is current: it pins every dependency pyproject.toml declares, within its range,
and it is what this environment runs (so what passed the tests is what the images install)."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
INSTALLED_FIRST = {"torch"}  # pinned on its own and installed first, from the CPU or CUDA index


def locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = [project["dependencies"], *project["optional-dependencies"].values()]
    return [Requirement(spec) for group in groups for spec in group]


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    pins = locked()
    problems = []
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        if name in INSTALLED_FIRST:
            continue
        if name not in pins:
            problems.append(f"{requirement.name} is not in requirements.lock")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{requirement.name}=={pins[name]} is outside {requirement.specifier}")
    assert not problems, "regenerate with scripts/lock: " + "; ".join(problems)


def test_this_environment_runs_the_locked_versions() -> None:
    mismatched = []
    for name, version in locked().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            mismatched.append(f"{name} is locked but not installed")
            continue
        if installed != version:
            mismatched.append(f"{name}: locked {version}, installed {installed}")
    assert not mismatched, "; ".join(mismatched)


def test_torch_is_pinned_to_the_cpu_wheel_version_everywhere() -> None:
    torch = [r for r in declared() if canonicalize_name(r.name) == "torch"]
    assert torch and all(str(r.specifier) == "==2.13.0" for r in torch)
    assert "torch" not in locked()
