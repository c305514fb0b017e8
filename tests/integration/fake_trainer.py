"""A stand-in for `tooltune train` in operator tests: it reads the real contract and follows a script.

The script is the contract's baseModel (`script/<behaviour>`), so each test picks what its pod does:

    script/succeed       report progress through the real StatusReporter, then exit 0
    script/invalid-data  write a one-line reason to the termination log and exit 2
    script/gate-failed   report progress and a missed evaluation gate, end as the trainer does (pod.finish)
    script/crash         exit 1 (retryable)
    script/run           report progress, then keep running until killed

Real training is exercised by the trainer's own tests and the end-to-end storage test; here the
operator's behaviour is under test, and a pod that finishes in a second keeps these tests fast.

Run as a process (the test kubelet's ``executables``), or in the kubelet's own process (its ``scripts``:
`in_process`), where a thousand pods cost no interpreter each: the benchmarks run the operator's load
without the machine's. Either way the pod makes the same API calls, as its ServiceAccount: two status
patches through the trainer's client path (`telemetry.kubernetes_status_patch`).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tooltune_api.models import TrainerContract
from tooltune_trainer import pod
from tooltune_trainer.telemetry import Patch, StatusReporter, kubernetes_status_patch

PROGRESS_SECONDS = 0.5  # between the first and the last progress patch


async def play(contract: TrainerContract, termination: Path, patch: Patch | None = None) -> int:
    """The pod's script; ``patch`` None is the pod's own client (kubernetes_status_patch)."""
    behaviour = contract.spec.base_model.removeprefix("script/")
    if behaviour == "invalid-data":
        termination.write_text("train.jsonl:3: assistant calls 'delete_task', which is not in tools\n")
        return 2
    if behaviour == "crash":
        return 1
    reporter = await asyncio.to_thread(StatusReporter, contract, patch)
    await asyncio.to_thread(reporter.update, progress={"step": 0, "totalSteps": 30, "percent": 0.0})
    await asyncio.to_thread(reporter.flush)
    await asyncio.sleep(PROGRESS_SECONDS)
    final = {"step": 30, "totalSteps": 30, "percent": 100.0, "trainLoss": 0.4321}
    await asyncio.to_thread(reporter.update, progress=final)
    await asyncio.to_thread(reporter.flush)
    if behaviour == "run":
        await asyncio.sleep(120)
    if behaviour == "gate-failed":
        message = "evaluation gate failed: toolNameAccuracy 0.5 < 0.9 (atLeast 0.9)"
        reporter.update(evaluation={"toolNameAccuracy": 0.5, "gate": {"passed": False, "message": message},
                                    "promoted": False})  # fmt: skip
        await asyncio.to_thread(reporter.flush)
        return pod.finish(pod.GATE_FAILED, f"{message}; the model is kept at s3://b/o/final")
    return 0


def read_contract(env: Mapping[str, str]) -> TrainerContract:
    return TrainerContract.model_validate_json(Path(env["TOOLTUNE_CONFIG"]).read_text())


async def in_process(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """A pod of the test kubelet's ``scripts``: `play` with a client of the pod's own kubeconfig (its
    ServiceAccount), on the kubelet's event loop; every blocking call runs in a thread."""
    contract = read_contract(env)
    if contract.spec.base_model == "script/gate-failed":
        raise ValueError(
            "script/gate-failed runs as a process: pod.finish writes the process's termination log"
        )
    from kubernetes.config import new_client_from_config

    client = await asyncio.to_thread(new_client_from_config, config_file=env["KUBECONFIG"])
    try:
        patch = kubernetes_status_patch(contract, client)
        return await play(contract, Path(env["TOOLTUNE_TERMINATION_LOG"]), patch)
    finally:
        client.close()


def main() -> int:
    termination = Path(os.environ.get("TOOLTUNE_TERMINATION_LOG", "/dev/termination-log"))
    return asyncio.run(play(read_contract(os.environ), termination))


if __name__ == "__main__":
    sys.exit(main())
