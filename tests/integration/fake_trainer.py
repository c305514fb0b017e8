"""A stand-in for `tooltune train` in operator tests: it reads the real contract and follows a script.

The script is the contract's baseModel (`script/<behaviour>`), so each test picks what its pod does:

    script/succeed       report progress through the real StatusReporter, then exit 0
    script/invalid-data  write a one-line reason to the termination log and exit 2
    script/gate-failed   report progress and a missed evaluation gate, end as the trainer does (pod.finish)
    script/crash         exit 1 (retryable)
    script/run           report progress, then keep running until killed

Real training is exercised by the trainer's own tests and the end-to-end storage test; here the
operator's behaviour is under test, and a pod that finishes in a second keeps these tests fast.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tooltune_api.models import TrainerContract
from tooltune_trainer import pod
from tooltune_trainer.telemetry import StatusReporter


def main() -> int:
    contract = TrainerContract.model_validate_json(Path(os.environ["TOOLTUNE_CONFIG"]).read_text())
    behaviour = contract.spec.base_model.removeprefix("script/")
    termination = Path(os.environ.get("TOOLTUNE_TERMINATION_LOG", "/dev/termination-log"))
    if behaviour == "invalid-data":
        termination.write_text("train.jsonl:3: assistant calls 'delete_task', which is not in tools\n")
        return 2
    if behaviour == "crash":
        return 1
    reporter = StatusReporter(contract)
    reporter.update(progress={"step": 0, "totalSteps": 30, "percent": 0.0})
    reporter.flush()
    time.sleep(0.5)
    reporter.update(progress={"step": 30, "totalSteps": 30, "percent": 100.0, "trainLoss": 0.4321})
    reporter.flush()
    if behaviour == "run":
        time.sleep(120)
    if behaviour == "gate-failed":
        message = "evaluation gate failed: toolNameAccuracy 0.5 < 0.9 (atLeast 0.9)"
        reporter.update(evaluation={"toolNameAccuracy": 0.5, "gate": {"passed": False, "message": message},
                                    "promoted": False})  # fmt: skip
        reporter.flush()
        return pod.finish(pod.GATE_FAILED, f"{message}; the model is kept at s3://b/o/final")
    return 0


if __name__ == "__main__":
    sys.exit(main())
