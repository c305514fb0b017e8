"""The operator image installs pyproject.toml's base dependencies alone (Dockerfile.operator): the operator
process must need nothing else, and never load the trainer's libraries (torch, openai, the kubernetes client,
...) nor boto3, which only the CLI uses."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name

from tests.harness.operator_process import OWN, as_in_the_image, base_dependencies, hidden_modules

REPO = Path(__file__).resolve().parents[2]
NOT_IN_THE_IMAGE = {"torch", "transformers", "trl", "peft", "datasets", "openai", "unsloth", "kubernetes"}
NOT_IMPORTED = {"boto3", "botocore"}  # installed for the CLI; seconds and megabytes the operator never needs


def distributions_of(modules: set[str]) -> dict[str, set[str]]:
    """Third-party top-level module → the distributions that provide it."""
    providers = metadata.packages_distributions()
    third_party = modules - set(sys.stdlib_module_names) - OWN
    return {module: {canonicalize_name(d) for d in providers.get(module, [])} for module in third_party}


def test_the_operator_runs_on_its_base_dependencies_alone():
    """In a process where every other module installed here raises ImportError, as in the image
    (``as_in_the_image``, as ``operator_command`` runs it for the soak test and the scale benchmark), the
    operator's modules import, and load neither boto3 nor anything of the trainer's."""
    hidden = set(hidden_modules())
    assert hidden >= NOT_IN_THE_IMAGE, f"the operator image would install {sorted(NOT_IN_THE_IMAGE - hidden)}"
    # Modules loaded from a file under site-packages: not the interpreter's own or what .pth files load.
    code = as_in_the_image() + (
        "import json, sysconfig\n"
        "startup = set(sys.modules)\n"
        "import tooltune_operator.__main__, tooltune_operator.handlers\n"
        "where = (sysconfig.get_paths()['purelib'], sysconfig.get_paths()['platlib'])\n"
        "print(json.dumps(sorted({name.split('.')[0] for name, module in list(sys.modules.items())\n"
        "    if name not in startup and (getattr(module, '__file__', None) or '').startswith(where)})))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(REPO / d) for d in ("api", "operator"))}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"the operator needs more than its base dependencies:\n{result.stderr}"
    imported = set(json.loads(result.stdout))
    assert not imported & NOT_IMPORTED, f"the operator imports {sorted(imported & NOT_IMPORTED)}"


def test_the_operator_code_declares_what_it_imports_itself():
    """A library the operator's own code imports is a base dependency, not one it happens to get through
    another (kopf's requirements may change)."""
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
