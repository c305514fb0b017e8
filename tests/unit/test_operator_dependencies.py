"""The operator image installs pyproject.toml's base dependencies alone (Dockerfile.operator): the operator
process must import nothing else, and never the trainer's libraries (torch, openai, ...)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
OWN = {"tooltune_api", "tooltune_operator", "tooltune_trainer"}
TRAINER_ONLY = {"torch", "transformers", "trl", "peft", "datasets", "openai", "boto3", "botocore", "unsloth"}


def base_dependencies() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
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


def distributions_of(modules: set[str]) -> dict[str, set[str]]:
    """Third-party top-level module → the distributions that provide it."""
    providers = metadata.packages_distributions()
    third_party = modules - set(sys.stdlib_module_names) - OWN
    return {module: {canonicalize_name(d) for d in providers.get(module, [])} for module in third_party}


def test_the_operator_process_imports_only_its_declared_dependencies():
    # Modules the import loads from a file under site-packages: not the interpreter's own or what .pth files
    # load at startup, nor a namespace package that an optional import leaves behind when it finds nothing
    # in it (the kubernetes client tries google.auth).
    code = (
        "import sys, json, sysconfig\n"
        "startup = set(sys.modules)\n"
        "import tooltune_operator.__main__, tooltune_operator.handlers\n"
        "where = (sysconfig.get_paths()['purelib'], sysconfig.get_paths()['platlib'])\n"
        "print(json.dumps(sorted({name.split('.')[0] for name, module in list(sys.modules.items())\n"
        "    if name not in startup and (getattr(module, '__file__', None) or '').startswith(where)})))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(REPO / d) for d in ("api", "operator"))}
    imported = set(json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                             text=True, check=True).stdout))  # fmt: skip
    assert not imported & TRAINER_ONLY, f"the operator imports {sorted(imported & TRAINER_ONLY)}"
    allowed = with_requirements(base_dependencies())
    strays = {module: dists for module, dists in distributions_of(imported).items() if not dists & allowed}
    assert not strays, f"imported by the operator but not among its dependencies: {strays}"


def test_the_operator_code_declares_what_it_imports_itself():
    """A library the operator's own code imports is a base dependency, not one it happens to get through
    another (kopf's or the kubernetes client's requirements may change)."""
    imported: set[str] = set()
    for source in [*(REPO / "operator").rglob("*.py"), *(REPO / "api").rglob("*.py")]:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    declared = base_dependencies()
    undeclared = {m: d for m, d in distributions_of(imported).items() if not d & declared}
    assert not undeclared, f"imported by operator/ or api/ but not declared in pyproject.toml: {undeclared}"
