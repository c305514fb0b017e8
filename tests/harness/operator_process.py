"""The operator as its own process (`python -m tooltune_operator`): a test can SIGKILL it like a lost node.

The process talks to the emulator through the kubeconfig, exactly as the Deployment talks to a cluster
through its service account. Its log goes to a file: an unread pipe fills up and blocks the operator.

It runs with only what the operator image installs importable (``operator_command``): Dockerfile.operator
installs pyproject.toml's base dependencies alone, and this venv has the trainer's and the tests' too. kopf
imports some libraries only if they are installed (the kubernetes client among them), so an operator run
here would otherwise load what it never has in its pod.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
PYTHONPATH = os.pathsep.join(str(REPO / part) for part in ("api", "operator", "trainer-image"))
STOP_TIMEOUT = 10
OWN = {"tooltune_api", "tooltune_operator", "tooltune_trainer"}


def base_dependencies(pyproject: Path = REPO / "pyproject.toml") -> set[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    return {canonicalize_name(Requirement(spec).name) for spec in project["dependencies"]}


def with_requirements(names: set[str]) -> set[str]:
    """The distributions and everything they require (without extras), as installed here."""
    closure, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in closure:
            continue
        closure.add(name)
        for spec in metadata.requires(name) or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return closure


def hidden_modules(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """Top-level modules installed here that the operator image has not: no distribution among the base
    dependencies of `pyproject` and what they require provides them."""
    allowed = with_requirements(base_dependencies(pyproject))
    return sorted(
        module
        for module, providers in metadata.packages_distributions().items()
        if module not in OWN and not {canonicalize_name(d) for d in providers} & allowed
    )


def as_in_the_image(pyproject: Path = REPO / "pyproject.toml") -> str:
    """Python code that makes the modules the operator image lacks unimportable (ImportError, as there)."""
    return f"import sys\nsys.modules.update(dict.fromkeys({hidden_modules(pyproject)!r}))\n"


def operator_command(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """`python -m tooltune_operator` with only what its image installs importable."""
    code = as_in_the_image(pyproject) + (
        "import runpy\nrunpy.run_module('tooltune_operator', run_name='__main__', alter_sys=True)\n"
    )
    return [sys.executable, "-c", code]


class OperatorProcess:
    def __init__(self, kubeconfig: Path, log_path: Path, env: dict[str, str] | None = None):
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "PYTHONPATH": PYTHONPATH,
            "TOOLTUNE_METRICS_PORT": "0",
            "TOOLTUNE_LIVENESS_ENDPOINT": "",
            **(env or {}),
        }
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> OperatorProcess:
        with self.log_path.open("ab") as log:
            log.write(f"---- start {self.starts + 1}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                operator_command(),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, no last status patch, like a lost node or an OOM kill."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT)

    def stop(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
