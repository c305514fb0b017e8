"""Credentials reach the trainer pod and nowhere else.

A job runs with storage.credentialsSecret pointing at a Secret of recognisable fake values. The pod
checks that it received them (so the test cannot pass because nothing was delivered), then follows the
fake trainer's script. None of the values may appear in the pod's log, its termination message, the
Job or its ConfigMaps, the ToolTuneJob (spec or status) or any Event.

The real trainer (`tooltune train` on the built-in tiny model) then runs against a SeaweedFS that checks
those same credentials: with them it trains, checkpoints and writes its model to the bucket; with a wrong
secret key it stops at once with "access denied". Either way no credential appears in its output, its
termination message, the files it wrote or any object in the bucket.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import kopf
import pytest
from tooltune_api import EXIT_INVALID, EXIT_OK
from tooltune_operator.settings import Settings

from tests.fakes.kube_status import StatusRecorder
from tests.fakes.openai_api import FakeOpenAI
from tests.fixtures.cluster import K8s, operator_kube, scripted_spec
from tests.fixtures.s3 import S3Server, started
from tests.fixtures.tiny import tool_calling_dataset
from tests.harness.emulator import CONFIGMAPS, EVENTS, JOBS, PODS, TTJ
from tests.harness.kopf_runner import KopfRunner
from tests.harness.kubelet import Kubelet
from tests.harness.waiting import wait_for
from tests.integration.test_openai_backend import QUICK, run_main, write_contract
from tests.integration.test_training import _contract, _run_train_subprocess, _spec

pytestmark = pytest.mark.integration

FAKE_TRAINER = Path(__file__).with_name("fake_trainer.py")
NS = "default"
ACCESS_KEY = "AKIACANARY7Q3ZK9LEAK"
SECRET_KEY = "canary-secret-Zx81vQ-must-never-be-printed"
CANARIES = [ACCESS_KEY, SECRET_KEY]

# The pod: fail unless the credentials arrived, then run the fake trainer as `tooltune train` would.
POD_PROGRAM = f"""
import os, runpy, sys
assert os.environ.get("AWS_ACCESS_KEY_ID") == {ACCESS_KEY!r}, "the access key did not reach the pod"
assert os.environ.get("AWS_SECRET_ACCESS_KEY") == {SECRET_KEY!r}, "the secret key did not reach the pod"
print("credentials received", flush=True)
runpy.run_path({str(FAKE_TRAINER)!r}, run_name="__main__")
"""


@pytest.fixture
def operator(k8s: K8s, tmp_path: Path, kopf_operator: Callable[..., KopfRunner]):  # type: ignore[no-untyped-def]
    node = Kubelet(
        k8s.cluster, tmp_path / "kubelet", executables={"tooltune": [sys.executable, "-c", POD_PROGRAM]}
    ).start()
    memo = kopf.Memo()
    memo.kube = operator_kube(k8s.api)
    memo.settings = Settings(
        trainer_image="tooltune/trainer:test", metrics_port=0, progress_interval_seconds=0
    )
    try:
        yield kopf_operator("tooltune_operator.handlers", memo=memo), node
    finally:
        node.stop()


@pytest.mark.parametrize(("behaviour", "phase"), [("succeed", "Succeeded"), ("invalid-data", "Failed")])
def test_storage_credentials_reach_the_pod_and_leak_nowhere(
    k8s: K8s, operator: tuple[KopfRunner, Kubelet], behaviour: str, phase: str
) -> None:
    _, node = operator
    k8s.cluster.create(
        "v1/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s3-creds", "namespace": NS},
            "stringData": {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY},
        },
        NS,
    )
    k8s.custom.create_namespaced_custom_object(
        "tooltune.dev",
        "v1alpha1",
        NS,
        "tooltunejobs",
        {
            "apiVersion": "tooltune.dev/v1alpha1",
            "kind": "ToolTuneJob",
            "metadata": {"name": "creds"},
            "spec": scripted_spec(
                behaviour,
                dataset={"train": "s3://bucket/train.jsonl"},
                output={"uri": "s3://bucket/out/"},
                storage={"endpoint": "http://s3.local:8333", "credentialsSecret": "s3-creds"},
                backoffLimit=0,
            ),
        },
    )
    wait_for(
        lambda: ((k8s.cluster.get(TTJ, NS, "creds") or {}).get("status") or {}).get("phase") == phase,
        timeout=30,
        what=phase,
        describe=lambda: (k8s.cluster.get(TTJ, NS, "creds") or {}).get("status"),
    )
    pods = [p for p in k8s.cluster.list(PODS, NS) if p["metadata"]["name"].startswith("creds-1")]
    assert pods, "the pod ran"
    logs = "".join(node.logs(p["metadata"]["name"]) for p in pods)
    assert "credentials received" in logs, logs

    places = {
        "pod logs": logs,
        "pods (incl. termination messages)": json.dumps(pods),
        "ToolTuneJob": json.dumps(k8s.cluster.get(TTJ, NS, "creds")),
        "Jobs": json.dumps(k8s.cluster.list(JOBS, NS)),
        "ConfigMaps": json.dumps(k8s.cluster.list(CONFIGMAPS, NS)),
        "Events": json.dumps(k8s.cluster.list(EVENTS, NS)),
    }
    for where, text in places.items():
        for canary in CANARIES:
            assert canary not in text, f"a credential leaked into {where}"
    env = k8s.cluster.get(JOBS, NS, "creds-1")["spec"]["template"]["spec"]["containers"][0]["env"]
    refs = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") for e in env}
    assert refs["AWS_ACCESS_KEY_ID"] == refs["AWS_SECRET_ACCESS_KEY"] == "s3-creds"


@pytest.fixture
def recorder() -> Iterator[StatusRecorder]:
    with StatusRecorder() as running:
        yield running


OPENAI_KEY = "sk-canary-openai-9Lq2Wn5-must-never-be-printed"


def test_the_openai_key_is_used_and_appears_in_no_output(
    recorder: StatusRecorder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with FakeOpenAI(api_key=OPENAI_KEY) as server:
        server.lifecycle = QUICK
        contract = write_contract(tmp_path, server)
        assert run_main(monkeypatch, tmp_path, contract, OPENAI_KEY, recorder) == EXIT_OK
        assert server.jobs_created == 1, "the key was accepted: the fake server refuses any other"
    out = capsys.readouterr()
    files = {str(p): p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()}
    files.pop(str(contract), None)
    places = {
        "stdout": out.out,
        "stderr": out.err,
        "logs": caplog.text,
        "status patches": json.dumps(recorder.patches),
        **files,  # termination log, workdir (report, lineage), kubeconfig
    }
    for where, text in places.items():
        assert OPENAI_KEY not in text, f"the OpenAI key leaked into {where}"


# ---------------------------------------------------------------- the real trainer, S3 with authentication

WRONG_SECRET_KEY = "canary-wrong-secret-Hq27Lm-must-never-be-printed"
REAL_CANARIES = [ACCESS_KEY, SECRET_KEY, WRONG_SECRET_KEY]
TRAIN_EXAMPLES = 12  # two training steps of batch 8, so one checkpoint at step 2
EVALUATED_EXAMPLES = 2  # generation dominates evaluation on a CPU
FAIL_FAST_SECONDS = (
    90  # the trainer's imports on a busy machine, then one refused request: no retries, no waits
)


@dataclass
class TrainerRun:
    code: int
    seconds: float
    output: str = field(repr=False)  # stdout and stderr
    termination: str
    files: dict[str, bytes] = field(repr=False)  # everything the trainer wrote locally, by path
    objects: dict[str, bytes] = field(repr=False)  # everything in the bucket afterwards, by key


@pytest.fixture(scope="module")
def canary_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS that accepts exactly the canary credentials."""
    yield from started(tmp_path_factory.mktemp("seaweedfs-canary"), {ACCESS_KEY: SECRET_KEY})


def run_real_trainer(server: S3Server, tmp: Path, secret_key: str) -> TrainerRun:
    """`tooltune train` with the credentials as the operator injects them, the job in a fresh bucket."""
    bucket = server.create_bucket("secrets")
    client = server.client()
    lines = "".join(json.dumps(example) + "\n" for example in tool_calling_dataset(TRAIN_EXAMPLES))
    client.put_object(Bucket=bucket, Key="data/train.jsonl", Body=lines.encode())
    spec = _spec(f"s3://{bucket}/data/train.jsonl", f"s3://{bucket}/runs/{uuid.uuid4().hex[:8]}/")
    spec["storage"] = server.settings(credentials_secret="s3-creds").dump()
    spec["evaluation"]["maxExamples"] = EVALUATED_EXAMPLES
    started_at = time.monotonic()
    done: subprocess.CompletedProcess[str] = _run_train_subprocess(
        _contract(spec), tmp, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=secret_key
    )
    seconds = time.monotonic() - started_at
    termination = tmp / "termination-log"
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]  # fmt: skip
    return TrainerRun(
        code=done.returncode,
        seconds=seconds,
        output=done.stdout + done.stderr,
        termination=termination.read_text() if termination.exists() else "",
        files={str(p): p.read_bytes() for p in tmp.rglob("*") if p.is_file() and p.name != "contract.json"},
        objects={key: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys},
    )


def assert_no_canary(run: TrainerRun) -> None:
    places = {"trainer output": run.output.encode(), "termination message": run.termination.encode()}
    places |= {f"local file {path}": data for path, data in run.files.items()}
    places |= {f"bucket object {key}": data for key, data in run.objects.items()}
    for where, data in places.items():
        for canary in REAL_CANARIES:
            assert canary.encode() not in data, f"a credential leaked into {where}"


@pytest.fixture(scope="module")
def trained_with_the_right_key(canary_s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> TrainerRun:
    return run_real_trainer(canary_s3, tmp_path_factory.mktemp("right-key"), SECRET_KEY)


@pytest.fixture(scope="module")
def refused_for_a_wrong_key(canary_s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> TrainerRun:
    return run_real_trainer(canary_s3, tmp_path_factory.mktemp("wrong-key"), WRONG_SECRET_KEY)


def test_the_real_trainer_trains_on_authenticated_s3_and_leaks_no_credential(
    trained_with_the_right_key: TrainerRun,
) -> None:
    run = trained_with_the_right_key
    assert run.code == EXIT_OK, run.output[-3000:]
    assert run.termination.startswith("succeeded: "), run.termination
    names = {key.split("/", 2)[-1] for key in run.objects}
    assert {"final/adapter_model.safetensors", "final/evaluation.json", "final/lineage.json"} <= names
    assert any(name.startswith("checkpoints/") and name.endswith("/manifest.json") for name in names), names
    lineage = json.loads(next(v for k, v in run.objects.items() if k.endswith("final/lineage.json")))
    assert "/data/train.jsonl" in json.dumps(lineage["datasets"]), (
        "the lineage names where the data came from"
    )
    assert_no_canary(run)
    print(
        f"\nreal trainer on authenticated S3: {run.seconds:.0f} s, {len(run.objects)} objects, no credential"
    )


def test_a_wrong_secret_key_stops_the_real_trainer_at_once_and_leaks_nothing(
    refused_for_a_wrong_key: TrainerRun,
) -> None:
    run = refused_for_a_wrong_key
    assert run.code != EXIT_OK
    assert "access denied (check the credentials in Secret s3-creds)" in run.termination, run.termination
    assert "/data/train.jsonl: access denied" in run.termination
    assert run.seconds < FAIL_FAST_SECONDS, f"took {run.seconds:.0f} s: retried or waited"
    assert "stage: load model" not in run.output, "stopped at the dataset, before loading the model"
    assert {key.split("/", 1)[0] for key in run.objects} == {"data"}, "wrote nothing to the bucket"
    assert_no_canary(run)
    print(f"\nwrong secret key: {run.seconds:.0f} s, termination message: {run.termination}")


def test_a_wrong_secret_key_is_not_retried(refused_for_a_wrong_key: TrainerRun) -> None:
    assert refused_for_a_wrong_key.code == EXIT_INVALID
