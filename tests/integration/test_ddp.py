"""Several GPUs in one pod, played on CPU: `tooltune train` with PET_NPROC_PER_NODE=2 starts torchrun, whose
two workers train the tiny model with DDP over gloo.

- Two processes at 4 examples × 2 accumulation steps each train like one process at 8 × 1: the same
  examples make each optimizer step (Accelerate shards the one seeded order of batches between the ranks),
  the gradients are all-reduced, and the loss is normalised by the tokens of the whole global batch. Only
  the order of float32 sums differs, so the training losses agree to 1e-4 (measured: 1e-7). The eval loss
  is the mean of per-batch means, and the batches differ (4 per rank against 8), so it only agrees to 2%.
- Only rank 0 writes: every write to storage and to the Kubernetes API is recorded with its rank in the
  workers themselves (tests/integration/ddp_spy/sitecustomize.py), against a real S3 server and the
  emulated API server. /metrics is served on a fixed port: a second rank serving it would fail to bind.
- A worker killed outright (out of memory) fails the pod with its own exit code and line; the next pod
  resumes from the newest complete checkpoint. SIGTERM to the pod's process (an eviction) checkpoints one
  step on both ranks and exits 143; the next pod resumes from that checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tooltune_api import TERMINATION_LOG_ENV, WORKDIR_ENV

from tests.fixtures.s3 import S3Server, free_port
from tests.fixtures.tiny import tool_calling_dataset, write_jsonl
from tests.harness.emulator import EVENTS, TTJ

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SPY = Path(__file__).parent / "ddp_spy"
TIMEOUT = 600
TRAIN_LOSS_RTOL = 1e-4
EVAL_LOSS_RTOL = 0.02


def _spec(train: str, output: str, **hyperparameters: Any) -> dict[str, Any]:
    return {
        "baseModel": "tooltune/tiny-llama",
        "dataset": {"train": train, "validationSplit": 0.2},
        "hyperparameters": {"epochs": 1, "learningRate": 3e-3, "maxSeqLength": 256, "loggingSteps": 1,
                            "lora": {"r": 8, "alpha": 16}, **hyperparameters},
        "checkpoints": {"everySteps": 2, "keep": 5},
        "evaluation": {"everySteps": 2, "maxExamples": 2, "smokePrompts": []},
        "output": {"uri": output},
        "resources": {"gpus": 0},
    }  # fmt: skip


def _start(tmp: Path, contract: dict[str, Any], processes: int, **env: str) -> subprocess.Popen[str]:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "contract.json").write_text(json.dumps(contract))
    pythonpath = [SPY, *(REPO / part for part in ("api", "operator", "trainer-image")), REPO]
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(map(str, pythonpath)),
        WORKDIR_ENV: str(tmp / "work"),
        TERMINATION_LOG_ENV: str(tmp / "termination-log"),
        "TOOLTUNE_SPY_LOG": str(tmp / "writes.jsonl"),
        **({"PET_NNODES": "1", "PET_NPROC_PER_NODE": str(processes)} if processes > 1 else {}),
        **env,
    }
    for name in ("PET_NNODES", "PET_NPROC_PER_NODE", "OMP_NUM_THREADS") if processes == 1 else ():
        environment.pop(name, None)
    command = [sys.executable, "-m", "tooltune_trainer", "train", "--config", str(tmp / "contract.json")]
    log = (tmp / "pod.log").open("w")
    return subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen[str], tmp: Path) -> tuple[int, str]:
    code = process.wait(TIMEOUT)
    return code, (tmp / "termination-log").read_text() if (tmp / "termination-log").exists() else ""


def _writes(tmp: Path) -> list[tuple[str | None, str]]:
    path = tmp / "writes.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(entry["rank"], entry["write"]) for entry in map(json.loads, lines)]


def _losses(history: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [(entry["step"], entry[key]) for entry in history if key in entry]


def _read_json(s3: S3Server, bucket: str, key: str) -> Any:
    return json.loads(s3.client().get_object(Bucket=bucket, Key=key)["Body"].read())


def test_two_processes_train_like_one_at_the_same_global_batch_and_only_rank_0_writes(
    tmp_path, k8s, s3_server: S3Server, s3_bucket: str, s3_env: dict[str, str]
) -> None:
    data = write_jsonl(tmp_path / "tasks.jsonl", tool_calling_dataset(40))
    storage = s3_server.settings().dump()
    runs = {"one": (1, {"batchSize": 8, "gradientAccumulationSteps": 1}),
            "two": (2, {"batchSize": 4 // 2, "gradientAccumulationSteps": 2})}  # fmt: skip
    started = {}
    for name, (processes, batch) in runs.items():
        created = k8s.cluster.create(TTJ, {"apiVersion": "tooltune.dev/v1alpha1", "kind": "ToolTuneJob",
                                           "metadata": {"name": name}, "spec": _spec(str(data), "out")},
                                     namespace="test")  # fmt: skip
        spec = {**_spec(str(data), f"s3://{s3_bucket}/{name}/", **batch), "storage": storage}
        job = {"namespace": "test", "name": name, "uid": created["metadata"]["uid"]}
        contract = {"job": job, "spec": spec, "metricsPort": free_port(), "reportProgress": True,
                    "progressIntervalSeconds": 3600}  # fmt: skip
        started[name] = _start(tmp_path / name, contract, processes, KUBECONFIG=str(k8s.kubeconfig))
        started[name].wait(TIMEOUT)  # one after the other: two cores
    for name in runs:
        code, line = _finish(started[name], tmp_path / name)
        assert code == 0, (tmp_path / name / "pod.log").read_text()[-6000:]
        assert line.startswith("succeeded: 4 steps, tool-name accuracy"), line
    # Each rank leaves the gloo group before it exits: one that does not can abort after reporting success.
    log = (tmp_path / "two" / "pod.log").read_text()
    assert "rank 0 left the process group" in log and "rank 1 left the process group" in log

    history = {name: _read_json(s3_server, s3_bucket, f"{name}/final/train_log.json") for name in runs}
    one, two = (_losses(history[name], "loss") for name in ("one", "two"))
    assert [step for step, _ in two] == [1, 2, 3, 4] == [step for step, _ in one]
    assert [loss for _, loss in two] == pytest.approx([loss for _, loss in one], rel=TRAIN_LOSS_RTOL)
    one_eval, two_eval = (_losses(history[name], "eval_loss") for name in ("one", "two"))
    assert [loss for _, loss in two_eval] == pytest.approx([loss for _, loss in one_eval], rel=EVAL_LOSS_RTOL)

    # Rank 0 alone uploaded, patched the status and wrote Events; each rank.s RNG state is in the checkpoint.
    writes = _writes(tmp_path / "two")
    assert {rank for rank, _ in writes} == {"0"}, writes
    assert {"status", "event", "storage.upload_many", "storage.write_bytes"} <= {kind for _, kind in writes}
    objects = {item["Key"] for item in s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]}
    step_4 = "two/checkpoints/step-4"
    assert {f"{step_4}/rng_state_0.pth", f"{step_4}/rng_state_1.pth", f"{step_4}/manifest.json",
            "two/final/adapter_model.safetensors"} <= objects  # fmt: skip

    # The user's view: how it trains, and the batch as they count it, in status, an Event and the lineage.
    training = k8s.cluster.get(TTJ, "test", "two")["status"]["training"]
    assert training == {
        "implementation": "transformers",
        "implementationReason": "2 training processes (one per GPU) train with transformers + peft under "
        "DDP: the installed Unsloth trains on one GPU only",
        "nodes": 1, "processesPerNode": 2, "worldSize": 2, "perDeviceBatchSize": 2,
        "gradientAccumulationSteps": 2, "effectiveBatchSize": 8, "learningRate": 3e-3,
    }  # fmt: skip
    assert k8s.cluster.get(TTJ, "test", "one")["status"]["training"]["effectiveBatchSize"] == 8
    events = [e for e in k8s.cluster.list(EVENTS, "test") if e["involvedObject"]["name"] == "two"]
    distributed = [e["message"] for e in events if e["reason"] == "DistributedTraining"]
    assert len(distributed) == 1 and "effective batch 8 = 2 per device × 2 process(es) × 2" in distributed[0]
    assert _read_json(s3_server, s3_bucket, "two/final/lineage.json")["training"] == training


def _kill_rank(pod: subprocess.Popen[str], rank: str) -> None:
    """SIGKILL one worker, as the OOM killer would (workers run in sessions of their own)."""
    import psutil

    worker = next(w for w in psutil.Process(pod.pid).children() if w.environ().get("RANK") == rank)
    worker.kill()


def _wait_for(path: Path, pod: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not path.exists() and pod.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"{path} never appeared"


def test_a_killed_rank_fails_the_pod_sigterm_stops_all_ranks_at_one_step_and_resume_continues(
    tmp_path,
) -> None:
    data = write_jsonl(tmp_path / "tasks.jsonl", tool_calling_dataset(40))
    spec = _spec(str(data), str(tmp_path / "out"), epochs=6, batchSize=2)  # 4 steps an epoch, 24 in all
    spec["checkpoints"] = {"everySteps": 4, "keep": 2}
    spec["evaluation"]["everySteps"] = 1000
    contract = {"job": {"namespace": "test", "name": "tiny"}, "spec": spec, "metricsPort": 0,
                "reportProgress": False}  # fmt: skip
    checkpoints = tmp_path / "out" / "checkpoints"

    # Rank 1 dies without a word (out of memory): rank 0's all-reduce fails too, the pod is rank 1's failure.
    pod = _start(tmp_path / "killed", contract, 2)
    _wait_for(checkpoints / "step-4" / "manifest.json", pod)
    _kill_rank(pod, "1")
    code, line = _finish(pod, tmp_path / "killed")
    assert code == 128 + signal.SIGKILL, (tmp_path / "killed" / "pod.log").read_text()[-6000:]
    assert line == "retryable: worker rank 1 exited with code 137 (SIGKILL)"
    kept = max(int(p.parent.name.removeprefix("step-")) for p in checkpoints.glob("step-*/manifest.json"))

    # The next pod resumes from the newest complete checkpoint; SIGTERM (an eviction) to its first process.
    pod = _start(tmp_path / "evicted", contract, 2)
    _wait_for(checkpoints / f"step-{kept + 4}" / "manifest.json", pod)
    pod.send_signal(signal.SIGTERM)  # as the kubelet does: to the container's first process, torchrun's agent
    code, line = _finish(pod, tmp_path / "evicted")
    log = (tmp_path / "evicted" / "pod.log").read_text()
    assert code == 128 + signal.SIGTERM, log[-6000:]
    assert f"resuming from {checkpoints / f'step-{kept}'}" in log
    assert line.startswith("terminated: terminated at step ") and line.endswith(
        ": its checkpoint is uploaded"
    )
    stopped = int(line.removeprefix("terminated: terminated at step ").split(":")[0])
    assert kept + 4 <= stopped < 24
    saved = checkpoints / f"step-{stopped}"
    assert {"manifest.json", "rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in saved.iterdir()}
    before = _losses(json.loads((saved / "trainer_state.json").read_text())["log_history"], "loss")

    code, line = _finish(_start(tmp_path / "next", contract, 2), tmp_path / "next")
    assert code == 0, (tmp_path / "next" / "pod.log").read_text()[-6000:]
    assert line.startswith("succeeded: 24 steps")
    assert f"resuming from {saved}" in (tmp_path / "next" / "pod.log").read_text()
    after = _losses(json.loads((tmp_path / "out" / "final" / "train_log.json").read_text()), "loss")
    assert [step for step, _ in after] == list(range(1, 25))  # no step trained twice, none lost
    assert after[: len(before)] == before and len(before) == stopped
