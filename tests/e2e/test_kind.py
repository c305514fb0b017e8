"""End to end on kind: scripts/kind-e2e.sh builds the images, installs the chart and runs the tiny job.

The run itself needs docker (with a reachable daemon) and kind, and is skipped, with the reason, where
they are missing. The script's own checks below run everywhere.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "kind-e2e.sh"
E2E_TIMEOUT_SECONDS = 3600  # image builds (torch, transformers) dominate a cold run


def docker_problem() -> str | None:
    """Why the e2e run cannot happen here, or None."""
    for tool in ("docker", "kind"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    if info.returncode != 0:
        return "the Docker daemon is not reachable (docker info fails)"
    return None


@pytest.mark.e2e
@pytest.mark.slow
def test_tiny_job_succeeds_on_kind() -> None:
    problem = docker_problem()
    if problem:
        pytest.skip(f"kind end-to-end run needs docker and kind: {problem}")
    result = subprocess.run(
        ["bash", str(SCRIPT)], cwd=ROOT, capture_output=True, text=True, timeout=E2E_TIMEOUT_SECONDS
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    assert "e2e: PASSED" in result.stdout


# ---------------------------------------------------------------- the script, without a cluster


def test_script_names_only_files_that_exist() -> None:
    text = SCRIPT.read_text()
    named = set(re.findall(r"\b((?:tests|manifests|charts|examples)/[\w./-]+|Dockerfile\.\w+)", text))
    assert named, "the script names no repository files"
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert not missing, f"scripts/kind-e2e.sh names missing files: {missing}"


def test_script_applies_the_job_it_waits_for() -> None:
    text = SCRIPT.read_text()
    job = re.search(r"^readonly JOB=(\S+)$", text, re.MULTILINE)
    output = re.search(r"^readonly OUTPUT_URI=(\S+)$", text, re.MULTILINE)
    dataset = re.search(r"^readonly DATASET_URI=(\S+)$", text, re.MULTILINE)
    assert job and output and dataset
    example = yaml.safe_load((ROOT / "manifests" / "examples" / f"{job[1]}.yaml").read_text())
    assert example["metadata"]["name"] == job[1]
    assert example["spec"]["output"]["uri"] == output[1]
    assert example["spec"]["dataset"]["train"] == dataset[1]
    assert example["spec"]["resources"]["gpus"] == 0, "kind has no GPU: the e2e job must train on CPU"
    seaweed = list(yaml.safe_load_all((ROOT / "tests" / "e2e" / "seaweedfs.yaml").read_text()))
    service = next(d for d in seaweed if d["kind"] == "Service")
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    endpoint = f"http://{name}.{namespace}:{service['spec']['ports'][0]['port']}"
    assert example["spec"]["storage"]["endpoint"] == endpoint


def test_script_stops_with_a_clear_message_without_docker(tmp_path: Path) -> None:
    """With no docker on PATH it fails at once, naming what is missing, and creates nothing."""
    bash = shutil.which("bash")
    assert bash
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "mktemp", "rm", "printf"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    env = {**os.environ, "PATH": str(bin_dir)}
    result = subprocess.run([bash, str(SCRIPT)], capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode != 0
    assert "docker not found" in result.stderr
