"""scripts/kind-e2e.sh end to end with stand-ins for docker, kind, kubectl and helm.

The stand-ins record every call and answer as a cluster would (the job's phase comes from the test); S3 is a
real SeaweedFS and the operator's metrics a real HTTP endpoint on localhost. This checks the script's order
of steps, the arguments it passes, its result checks and its clean-up, without docker or a cluster.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.fixtures.s3 import S3Server, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "kind-e2e.sh"
JOB = "tiny-cpu"
SUCCEEDED_METRICS = f'tooltune_job_phase{{namespace="default",name="{JOB}",phase="Succeeded"}} 1.0\n'

# Each stand-in appends "tool args..." to $CALLS and answers what the script asks.
FAKE = {
    "docker": 'echo "docker $*" >>"$CALLS"\n',
    "kind": """echo "kind $*" >>"$CALLS"
if [[ $1 == create ]]; then
  while (($#)); do [[ $1 == --kubeconfig ]] && echo "apiVersion: v1" >"$2"; shift; done
fi
""",
    "helm": 'echo "helm $*" >>"$CALLS"\n',
    "kubectl": """echo "kubectl $*" >>"$CALLS"
case "$*" in
  *port-forward*) exec sleep 300 ;;
  *"{.status.phase}"*) echo "$FAKE_PHASE" ;;
  *"{.status.progress.step}"*) echo 12 ;;
  *"{.status.checkpoints.latestUri}"*) echo "s3://models/tiny-cpu/checkpoints/step-20/" ;;
  *"get pods"*) ;;
  *) echo "ok" ;;
esac
""",
}


@pytest.fixture
def fake_tools(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKE.items():
        path = bin_dir / name
        path.write_text("#!/usr/bin/env bash\n" + body)
        path.chmod(0o755)
    return bin_dir


@pytest.fixture
def operator_metrics() -> Iterator[tuple[int, list[str]]]:
    """A /metrics endpoint on localhost; the list holds the text it serves."""
    text = [SUCCEEDED_METRICS]

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = text[0].encode()
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], text
    server.shutdown()


@pytest.fixture
def trained_output(s3_server: S3Server) -> S3Server:
    """What a finished tiny-cpu run leaves in S3: a complete checkpoint and the final model."""
    s3 = s3_server.client()
    for bucket in ("datasets", "models"):
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
            s3.create_bucket(Bucket=bucket)
    for key in ("tiny-cpu/checkpoints/step-20/manifest.json", "tiny-cpu/final/lineage.json"):
        s3.put_object(Bucket="models", Key=key, Body=b"{}")
    return s3_server


def run_script(
    fake_tools: Path, tmp_path: Path, s3: S3Server, metrics_port: int, phase: str
) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "PATH": f"{fake_tools}:{os.environ['PATH']}",
        "CALLS": str(tmp_path / "calls.log"),
        "FAKE_PHASE": phase,
        "PYTHON": sys.executable,
        "KUBECTL": str(fake_tools / "kubectl"),
        "HELM": str(fake_tools / "helm"),
        "S3_PORT": str(urlparse(s3.endpoint).port),
        "METRICS_PORT": str(metrics_port),
        "TRAINER_METRICS_PORT": str(free_port()),
        "E2E_TIMEOUT": "20",
        "AWS_ACCESS_KEY_ID": "e2e",
        "AWS_SECRET_ACCESS_KEY": "e2e",
    }
    result = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )
    return result.returncode, result.stdout, result.stderr


def calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls.log").read_text().splitlines()


def test_a_succeeding_run_does_every_step_in_order_and_deletes_the_cluster(
    fake_tools: Path, tmp_path: Path, trained_output: S3Server, operator_metrics: tuple[int, list[str]]
) -> None:
    code, out, err = run_script(fake_tools, tmp_path, trained_output, operator_metrics[0], "Succeeded")
    assert code == 0, err
    assert out.strip().endswith("e2e: PASSED")
    log = calls(tmp_path)

    def index(fragment: str) -> int:
        found = [i for i, line in enumerate(log) if fragment in line]
        assert found, f"no call with {fragment!r} in:\n" + "\n".join(log)
        return found[0]

    steps = [
        "docker build -f Dockerfile.operator -t tooltune/operator:e2e",
        "docker build -f Dockerfile.trainer --target cpu -t tooltune/trainer:e2e-cpu",
        "kind create cluster --name tooltune-e2e",
        "kind load docker-image --name tooltune-e2e tooltune/operator:e2e tooltune/trainer:e2e-cpu",
        "kubectl apply -f tests/e2e/seaweedfs.yaml",
        "helm install tooltune charts/tooltune --namespace tooltune-system",
        "kubectl apply -n default -f manifests/examples/s3-credentials.yaml",
        "kubectl apply -n default -f manifests/examples/tiny-cpu.yaml",
        "{.status.phase}",
        "port-forward -n tooltune-system service/tooltune-metrics",
        "kind delete cluster --name tooltune-e2e",
    ]
    positions = [index(step) for step in steps]
    assert positions == sorted(positions), "steps ran out of order"
    helm = log[index("helm install")]
    for setting in (
        "operator.image.tag=e2e",
        "trainer.image.repository=tooltune/trainer",
        "trainer.image.tag=e2e-cpu",
    ):
        assert setting in helm
    uploaded = trained_output.client().get_object(Bucket="datasets", Key="task_api_tool_calling.jsonl")
    assert uploaded["Body"].read() == (ROOT / "examples/task-api/task_api_tool_calling.jsonl").read_bytes()


def test_a_failed_job_fails_the_run_with_diagnostics_and_still_deletes_the_cluster(
    fake_tools: Path, tmp_path: Path, trained_output: S3Server, operator_metrics: tuple[int, list[str]]
) -> None:
    code, _, err = run_script(fake_tools, tmp_path, trained_output, operator_metrics[0], "Failed")
    assert code != 0
    assert f"e2e: FAILED: job {JOB} ended Failed" in err
    log = calls(tmp_path)
    assert any(line.startswith(f"kubectl describe tooltunejob {JOB}") for line in log), "no diagnostics"
    assert log[-1] == "kind delete cluster --name tooltune-e2e"


def test_operator_metrics_without_the_job_fail_the_run(
    fake_tools: Path, tmp_path: Path, trained_output: S3Server, operator_metrics: tuple[int, list[str]]
) -> None:
    port, text = operator_metrics
    text[0] = SUCCEEDED_METRICS.replace("Succeeded", "Running")
    code, _, err = run_script(fake_tools, tmp_path, trained_output, port, "Succeeded")
    assert code != 0
    assert f"operator metrics do not report {JOB} as Succeeded" in err
