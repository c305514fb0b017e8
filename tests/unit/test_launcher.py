"""`tooltune train` on several processes: when it hands over to torchrun, and what the pod says afterwards.

The hand-over runs torchrun for real with small worker scripts standing in for the trainer (the trainer
itself under torchrun: tests/integration/test_ddp.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from tooltune_api import TERMINATION_LOG_ENV
from tooltune_trainer import launcher, pod

from tests.harness.kubelet import PYTHONPATH_DIRS


@pytest.mark.parametrize(("env", "world_size"), [
    ({}, 1),
    ({"PET_NPROC_PER_NODE": "2"}, 2),
    ({"PET_NNODES": "3", "PET_NPROC_PER_NODE": "4"}, 12),
    ({"PET_NNODES": "1:2", "PET_NPROC_PER_NODE": "2"}, 4),  # elastic MIN:MAX: the most it may be
])  # fmt: skip
def test_the_shape_is_read_from_kubeflow_trainers_variables(env: dict[str, str], world_size: int) -> None:
    assert launcher.shape(env).world_size == world_size
    assert launcher.should_launch(env) == (world_size > 1)


def test_a_torchrun_worker_never_launches_again() -> None:
    env = {"PET_NPROC_PER_NODE": "2"}
    assert not launcher.should_launch({**env, "LOCAL_RANK": "0"})
    assert not launcher.should_launch({**env, "TORCHELASTIC_RUN_ID": "x"})


@pytest.mark.parametrize(("env", "named"), [
    ({"PET_NNODES": "two"}, "PET_NNODES='two'"),
    ({"PET_NPROC_PER_NODE": "many"}, "PET_NPROC_PER_NODE='many'"),
    ({"PET_NPROC_PER_NODE": "0"}, "must be at least 1"),
])  # fmt: skip
def test_unusable_variables_are_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(launcher.InvalidShape, match=named.replace("(", r"\(")):
        launcher.shape(env)


def test_tooltune_train_refuses_an_unusable_shape_as_invalid_config(tmp_path: Path) -> None:
    result = _run(["-m", "tooltune_trainer", "train"], tmp_path, {"PET_NPROC_PER_NODE": "many"})
    assert result.returncode == pod.EXIT_CODES[pod.INVALID]
    assert (tmp_path / "termination-log").read_text().startswith("invalid: PET_NPROC_PER_NODE='many'")


# A stand-in worker: reports ready, then does what WORKER_PLAN says for its rank.
WORKER = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    from tooltune_trainer import pod
    rank = os.environ["RANK"]
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    Path(os.environ["READY_DIR"], rank).touch()
    plan = dict(item.split("=") for item in os.environ["WORKER_PLAN"].split(","))[rank]
    if plan == "invalid":
        sys.exit(pod.finish(pod.INVALID, f"line 3 is not JSON (rank {rank})"))
    if plan == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    deadline = time.monotonic() + 60
    while not stop and time.monotonic() < deadline:
        time.sleep(0.05)
    if stop:
        time.sleep(0.5)  # its checkpoint
        sys.exit(pod.finish(pod.TERMINATED, f"terminated at step 7 (rank {rank})"))
    sys.exit(pod.finish(pod.SUCCEEDED, f"done (rank {rank})"))
""")
LAUNCH = "import sys; from tooltune_trainer import launcher; sys.exit(launcher.launch(sys.argv[1:]))"


def _env(tmp_path: Path, extra: dict[str, str]) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.pathsep.join(map(str, PYTHONPATH_DIRS)),
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
        TERMINATION_LOG_ENV: str(tmp_path / "termination-log"),
        "READY_DIR": str(tmp_path / "ready"),
        **extra,
    }


def _run(args: list[str], tmp_path: Path, extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], env=_env(tmp_path, extra), capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip


def _launch(tmp_path: Path, plan: str) -> subprocess.Popen[str]:
    (tmp_path / "ready").mkdir()
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    env = _env(tmp_path, {"PET_NPROC_PER_NODE": "2", "WORKER_PLAN": plan})
    return subprocess.Popen([sys.executable, "-c", LAUNCH, sys.executable, str(worker)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip


def _finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    output, _ = process.communicate(timeout=120)
    return process.returncode, output


def test_the_first_failing_workers_exit_code_and_line_become_the_pods(tmp_path: Path) -> None:
    code, output = _finish(_launch(tmp_path, "0=succeed,1=invalid"))
    assert code == pod.EXIT_CODES[pod.INVALID], output
    assert (tmp_path / "termination-log").read_text() == "invalid: line 3 is not JSON (rank 1)"


def test_a_worker_that_dies_without_a_word_is_reported_by_rank_and_signal(tmp_path: Path) -> None:
    code, output = _finish(_launch(tmp_path, "0=succeed,1=killed"))
    assert code == 128 + signal.SIGKILL, output
    assert (tmp_path / "termination-log").read_text() == (
        "retryable: worker rank 1 exited with code 137 (SIGKILL)"
    )


def test_sigterm_reaches_every_worker_and_the_pod_says_what_rank_0_checkpointed(tmp_path: Path) -> None:
    process = _launch(tmp_path, "0=succeed,1=succeed")
    deadline = time.monotonic() + 90
    while len(list((tmp_path / "ready").iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)  # as the kubelet does: to the container's first process only
    code, output = _finish(process)
    assert code == pod.EXIT_CODES[pod.TERMINATED], output
    assert (tmp_path / "termination-log").read_text() == "terminated: terminated at step 7 (rank 0)"
    assert output.count("Sending process") == 2  # torchrun forwarded it to both workers
