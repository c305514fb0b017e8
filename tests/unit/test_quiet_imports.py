"""`tooltune run` and `tooltune train` print none of the import-time warnings a user cannot act on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHONPATH = os.pathsep.join(str(REPO / part) for part in ("api", "operator", "trainer-image", "."))
IMPORTS = "import transformers.quantizers.auto, peft"  # what imports torchao and bitsandbytes


def _stderr_of(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": PYTHONPATH}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stderr


def test_the_training_libraries_import_without_unactionable_warnings():
    quiet = _stderr_of(
        f"from tooltune_trainer.cli import _quiet_library_warnings; _quiet_library_warnings(); {IMPORTS}"
    )
    assert quiet == ""
    loud = _stderr_of(IMPORTS)  # the same imports without the filters: the warnings are real
    assert "Failed to load" in loud and "_pytree" in loud, loud
