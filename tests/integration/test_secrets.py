"""Credentials reach the trainer pod and nowhere else.

A job runs with storage.credentialsSecret pointing at a Secret of recognisable fake values. The pod
checks that it received them (so the test cannot pass because nothing was delivered), then follows the
fake trainer's script. None of the values may appear in the pod's log, its termination message, the
Job or its ConfigMaps, the ToolTuneJob (spec or status) or any Event.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import kopf
import pytest
from tooltune_api import EXIT_OK
from tooltune_operator.kube import Kube
from tooltune_operator.settings import Settings

from tests.fakes.kube_status import StatusRecorder
from tests.fakes.openai_api import FakeOpenAI
from tests.fixtures.cluster import K8s
from tests.harness.emulator import CONFIGMAPS, EVENTS, JOBS, PODS, TTJ
from tests.harness.kopf_runner import KopfRunner
from tests.harness.kubelet import Kubelet
from tests.harness.waiting import wait_for
from tests.integration.test_openai_backend import QUICK, run_main, write_contract

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
    memo.kube = Kube(k8s.api)
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
            "spec": {
                "baseModel": f"script/{behaviour}",
                "dataset": {"train": "s3://bucket/train.jsonl"},
                "output": {"uri": "s3://bucket/out/"},
                "storage": {"endpoint": "http://s3.local:8333", "credentialsSecret": "s3-creds"},
                "resources": {"gpus": 0},
                "backoffLimit": 0,
            },
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
