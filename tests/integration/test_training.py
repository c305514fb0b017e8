"""Training the tiny model end to end with both backends: a few steps each, the same output layout.

The transformers run goes through `tooltune run` (a YAML with relative paths); the Unsloth run goes
through the pod entrypoint `tooltune train` in a subprocess, so Unsloth's patching of transformers
cannot leak into other tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tooltune_api import EXIT_INVALID, TERMINATION_LOG_ENV, WORKDIR_ENV
from transformers import TrainerCallback
from typer.testing import CliRunner

from tests.fixtures.tiny import tool_calling_dataset, write_jsonl

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PYTHONPATH = os.pathsep.join(str(REPO / part) for part in ("api", "operator", "trainer-image", "."))
SUBPROCESS_TIMEOUT = 600
# Files every final model directory has, whatever the backend (LoRA adapter + tokenizer + report).
LORA_LAYOUT = {
    "adapter_config.json",
    "adapter_model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "evaluation.json",
    "train_log.json",
    "loss_curve.png",
    "lineage.json",
}


def _spec(train: str, output: str, **hyperparameters) -> dict:
    return {
        "baseModel": "tooltune/tiny-llama",
        "dataset": {"train": train, "validationSplit": 0.2},
        "hyperparameters": {
            "epochs": 1,
            "batchSize": 8,
            "gradientAccumulationSteps": 1,
            "learningRate": 3e-3,
            "maxSeqLength": 256,
            "loggingSteps": 1,
            "lora": {"r": 8, "alpha": 16},
            **hyperparameters,
        },
        "checkpoints": {"everySteps": 2, "keep": 1},
        "evaluation": {"everySteps": 2, "maxExamples": 4},
        "output": {"uri": output},
        "resources": {"gpus": 0},
    }


def _contract(spec: dict) -> dict:
    return {
        "job": {"namespace": "test", "name": "tiny"},
        "spec": spec,
        "metricsPort": 0,
        "reportProgress": False,
    }


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _run_train_subprocess(contract: dict, tmp: Path, **env: str) -> subprocess.CompletedProcess:
    config = tmp / "contract.json"
    config.write_text(json.dumps(contract))
    environment = {
        **os.environ, "PYTHONPATH": PYTHONPATH, WORKDIR_ENV: str(tmp / "work"),
        TERMINATION_LOG_ENV: str(tmp / "termination-log"), **env,
    }  # fmt: skip
    code = "from tooltune_trainer.cli import app; app()"
    return subprocess.run(
        [sys.executable, "-c", code, "train", "--config", str(config)],
        env=environment, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT,
    )  # fmt: skip


@pytest.fixture(scope="module")
def transformers_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`tooltune run job.yaml` from another directory: transformers + peft, LoRA, merged weights."""
    root = tmp_path_factory.mktemp("transformers-run")
    (root / "job").mkdir()
    write_jsonl(root / "job" / "tasks.jsonl", tool_calling_dataset(40))
    job = {"apiVersion": "tooltune.dev/v1alpha1", "kind": "ToolTuneJob", "metadata": {"name": "tiny"},
           "spec": _spec("tasks.jsonl", "runs/tiny/")}  # fmt: skip
    job["spec"]["output"]["mergedWeights"] = True
    (root / "job" / "tooltunejob.yaml").write_text(yaml.safe_dump(job))
    from tooltune_trainer.cli import app

    cwd = Path.cwd()
    os.chdir(root)  # output.uri is relative to the working directory
    try:
        result = CliRunner().invoke(app, ["run", "job/tooltunejob.yaml", "--workdir", str(root / "work")])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return root / "runs" / "tiny", result.output


@pytest.fixture(scope="module")
def unsloth_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pod entrypoint with the Unsloth implementation forced on CPU, in its own process."""
    root = tmp_path_factory.mktemp("unsloth-run")
    data = write_jsonl(root / "tasks.jsonl", tool_calling_dataset(40))
    result = _run_train_subprocess(
        _contract(_spec(str(data), str(root / "out"))), root,
        TOOLTUNE_BACKEND_IMPL="unsloth", UNSLOTH_SKIP_TORCHVISION_CHECK="1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert (root / "termination-log").read_text().startswith("succeeded: ")
    return root / "out"


def test_tooltune_run_trains_lora_with_transformers_and_writes_the_layout(transformers_run):
    output, printed = transformers_run
    final = output / "final"
    assert _files(final) >= LORA_LAYOUT
    assert {"model.safetensors", "config.json"} <= _files(final / "merged")
    adapter = json.loads((final / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and adapter["lora_alpha"] == 16
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"}  # fmt: skip
    assert any(name.endswith("manifest.json") for name in _files(output / "checkpoints"))
    report = json.loads((final / "evaluation.json").read_text())
    metrics = report["metrics"]
    assert metrics["examples"] == 4
    for key in ("toolNameAccuracy", "argumentsExactMatch", "noCallRate"):
        assert 0.0 <= metrics[key] <= 1.0
    assert [test["prompt"] for test in report["smokeTests"]] == [
        "Create a task to review the quarterly report",
        "What tasks do I have due this week?",
        "Mark the budget task as complete",
    ]
    # A model trained 4 steps is wrong on nearly everything: every wrong answer says what kind it is.
    wrong_calls = round(metrics["expectedCalls"] * (1 - metrics["argumentsExactMatch"]))
    assert wrong_calls <= len(report["wrongAnswers"]) <= metrics["examples"]
    assert all(answer["errors"] for answer in report["wrongAnswers"])
    assert sum(report["errors"].values()) >= len(report["wrongAnswers"])
    history = json.loads((final / "train_log.json").read_text())
    assert [entry["step"] for entry in history if "loss" in entry] == [1, 2, 3, 4]
    assert "Run summary" in printed and "tool-name accuracy" in printed and "Smoke prompts" in printed
    assert "call when none was expected" in printed and "wrong answers by kind" in printed
    assert f"loss curve: {final / 'loss_curve.png'}" in printed  # it says where the picture is


def test_the_saved_adapter_loads_and_generates(transformers_run):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    final = transformers_run[0] / "final"
    model = AutoPeftModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Mark task_3 as complete"}], add_generation_prompt=True, tokenize=True,
        return_dict=True, return_tensors="pt",
    )  # fmt: skip
    output = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert output.shape[1] == prompt["input_ids"].shape[1] + 5 or tokenizer.eos_token_id in output[0].tolist()


def test_unsloth_backend_trains_on_cpu_and_writes_the_same_layout(transformers_run, unsloth_run):
    final = transformers_run[0] / "final"
    transformers_files = {name for name in _files(final) if not name.startswith("merged/")}
    assert _files(unsloth_run / "final") == transformers_files
    lineage = json.loads((unsloth_run / "final" / "lineage.json").read_text())
    assert lineage["metrics"]["steps"] == 4
    adapter = json.loads((unsloth_run / "final" / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and adapter["lora_alpha"] == 16


def test_full_fine_tune_saves_all_weights_instead_of_an_adapter(tmp_path):
    from tooltune_api.models import TrainerContract
    from tooltune_trainer import recipe

    data = write_jsonl(tmp_path / "tasks.jsonl", tool_calling_dataset(20))
    contract = TrainerContract.model_validate(
        _contract(_spec(str(data), str(tmp_path / "out"), fullFineTune=True))
    )
    result = recipe.run(contract, tmp_path / "work", print_logs=False)
    files = _files(tmp_path / "out" / "final")
    assert {"model.safetensors", "config.json", "tokenizer.json", "evaluation.json"} <= files
    assert not any(name.startswith("adapter_") for name in files)
    assert result.steps == 2 and result.train_loss is not None
    assert (tmp_path / "out" / "checkpoints" / "step-2" / "manifest.json").is_file()

    # A restarted pod resumes from the newest complete checkpoint: nothing is left to train.
    losses = _logged_losses(tmp_path / "out")
    resumed = recipe.run(contract, tmp_path / "work-restarted", print_logs=False)
    assert resumed.steps == 2 and _logged_losses(tmp_path / "out") == losses  # no step was trained again


def test_a_run_told_not_to_resume_replaces_an_earlier_longer_runs_checkpoints(tmp_path):
    """`tooltune run` without --resume into an output an earlier, longer run left checkpoints in: the new
    run's checkpoints are the newest (the old step-4 does not outrank them), and the old ones go."""
    from tooltune_api.models import TrainerContract
    from tooltune_trainer import recipe

    data = write_jsonl(tmp_path / "tasks.jsonl", tool_calling_dataset(20))
    longer = TrainerContract.model_validate(_contract(_spec(str(data), str(tmp_path / "out"), epochs=2)))
    assert recipe.run(longer, tmp_path / "work", print_logs=False).steps == 4
    shorter = TrainerContract.model_validate(_contract(_spec(str(data), str(tmp_path / "out"))))
    assert recipe.run(shorter, tmp_path / "work-again", print_logs=False, resume=False).steps == 2
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == ["step-2"]


def test_sigterm_checkpoints_the_current_step_and_the_next_run_resumes_there(tmp_path):
    """An eviction or preemption sends SIGTERM: the trainer saves the step it is on, uploads, and stops."""
    from tooltune_api.models import TrainerContract
    from tooltune_trainer import recipe
    from transformers import TrainerCallback

    class SigtermAtStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    data = write_jsonl(tmp_path / "tasks.jsonl", tool_calling_dataset(40))
    spec = _spec(str(data), str(tmp_path / "out"), batchSize=4)
    spec["checkpoints"] = {"everySteps": 100, "keep": 2}  # no scheduled checkpoint before the signal
    contract = TrainerContract.model_validate(_contract(spec))

    with pytest.raises(recipe.Terminated) as stopped:
        recipe.run(contract, tmp_path / "work", [SigtermAtStep()], print_logs=False)
    assert stopped.value.uploaded and stopped.value.step in (3, 4)  # the handler runs at the next bytecode
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler lived only while training
    checkpoints = tmp_path / "out" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [f"step-{stopped.value.step}"]
    assert (checkpoints / f"step-{stopped.value.step}" / "manifest.json").is_file()
    assert not (tmp_path / "out" / "final").exists()
    state = json.loads((checkpoints / f"step-{stopped.value.step}" / "trainer_state.json").read_text())
    before = [(entry["step"], entry["loss"]) for entry in state["log_history"] if "loss" in entry]

    result = recipe.run(contract, tmp_path / "work-next-pod", print_logs=False)
    after = _logged_losses(tmp_path / "out")
    # The next run starts after the saved step: the steps before it keep their losses, none is trained twice.
    assert result.steps == 8 and after[: len(before)] == before and len(before) == stopped.value.step
    assert [step for step, _ in after] == list(range(1, 9))


class StepsTrained(TrainerCallback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def test_a_changed_spec_never_resumes_a_checkpoint_made_from_the_old_one(tmp_path, k8s):
    """The user fixes the spec and re-applies with the same output URI: an unchanged source resumes, another
    LoRA shape or a full fine-tune starts from step 0, and says why in the log, the status and an Event."""
    from tooltune_api.models import TrainerContract
    from tooltune_trainer import recipe

    from tests.harness.emulator import EVENTS, TTJ

    data = write_jsonl(tmp_path / "tasks.jsonl", tool_calling_dataset(20))
    created = k8s.cluster.create(TTJ, {"apiVersion": "tooltune.dev/v1alpha1", "kind": "ToolTuneJob",
                                       "metadata": {"name": "tiny"}, "spec": _spec(str(data), "out")},
                                 namespace="test")  # fmt: skip

    seen: set[str] = set()

    def attempt(name: str, **hyperparameters) -> tuple[list[int], dict, list[tuple[str, str, str]]]:
        """One pod's run; the steps it trained, status.checkpoints, and its Events about resuming."""
        contract = _contract(_spec(str(data), str(tmp_path / "out"), **hyperparameters))
        contract["spec"]["evaluation"].update(maxExamples=1, smokePrompts=[])  # training is what matters here
        contract.update(reportProgress=True, progressIntervalSeconds=0)
        contract["job"]["uid"] = created["metadata"]["uid"]
        trained = StepsTrained()
        recipe.run(TrainerContract.model_validate(contract), tmp_path / name, [trained], print_logs=False)
        status = k8s.cluster.get(TTJ, "test", "tiny")["status"]["checkpoints"]
        new = [e for e in k8s.cluster.list(EVENTS, "test") if e["metadata"]["name"] not in seen]
        seen.update(e["metadata"]["name"] for e in new)
        about_resuming = ("CheckpointMismatch", "ResumedFromCheckpoint")
        return trained.steps, status, [(e["reason"], e["type"], e["message"]) for e in new
                                       if e["reason"] in about_resuming]  # fmt: skip

    steps, status, events = attempt("first")
    assert steps == [1, 2] and status["latestStep"] == 2 and "resumedFromStep" not in status and events == []

    steps, status, events = attempt("unchanged")
    assert steps == [] and status["resumedFromStep"] == 2 and "freshStartReason" not in status
    assert events == [("ResumedFromCheckpoint", "Normal", "resuming from checkpoint step-2")]

    modules = "down_proj,gate_proj,k_proj,o_proj,q_proj,up_proj,v_proj"
    steps, status, events = attempt("lora-r-4", lora={"r": 4, "alpha": 16})
    reason = (f"checkpoint step-2 was made from LoRA r=8 alpha=16 on {modules}; "
              f"this run has LoRA r=4 alpha=16 on {modules}: starting fresh")  # fmt: skip
    assert steps == [1, 2]  # from step 0
    assert status["freshStartReason"] == reason and "resumedFromStep" not in status
    assert events == [("CheckpointMismatch", "Warning", reason)]
    manifest = json.loads((tmp_path / "out" / "checkpoints" / "step-2" / "manifest.json").read_text())
    assert manifest["source"]["lora"]["r"] == 4  # the new run's checkpoint replaced the old one

    steps, status, events = attempt("full", fullFineTune=True)
    assert steps == [1, 2]
    assert status["freshStartReason"] == (
        f"checkpoint step-2 was made from LoRA r=4 alpha=16 on {modules}; this run has a full fine-tune: "
        "starting fresh"
    )


def _can_be_pid_1() -> bool:
    try:
        unshare = subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return unshare.returncode == 0


@pytest.mark.skipif(not _can_be_pid_1(), reason="running as PID 1 needs `unshare --pid` (root or userns)")
def test_as_a_containers_pid_1_the_trainer_still_ends_on_sigterm(tmp_path):
    """PID 1 ignores a signal it has no handler for: without one, every eviction would wait out the grace."""
    import socket

    import psutil

    silent = socket.socket()  # the dataset server accepts and never answers: the pod sits in its first stage
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    data = f"http://127.0.0.1:{silent.getsockname()[1]}/train.jsonl"
    config = tmp_path / "contract.json"
    config.write_text(json.dumps(_contract(_spec(data, str(tmp_path / "out")))))
    log = tmp_path / "trainer.log"
    env = {**os.environ, "PYTHONPATH": PYTHONPATH, WORKDIR_ENV: str(tmp_path / "work"),
           TERMINATION_LOG_ENV: str(tmp_path / "termination-log")}  # fmt: skip
    # util-linux's unshare leaves SIGTERM blocked in the child here ("sigprocmask unblock failed"), which no
    # container runtime does: unblock it, then exec the trainer, which stays PID 1.
    trainer_argv = [sys.executable, "-c", "from tooltune_trainer.cli import app; app()", "train", "--config",
                    str(config)]  # fmt: skip
    as_pid_1 = ("import os, signal, sys; signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM}); "
                "os.execv(sys.argv[1], sys.argv[1:])")  # fmt: skip
    with log.open("wb") as out:
        pod = subprocess.Popen(["unshare", "--pid", "--fork", sys.executable, "-c", as_pid_1, *trainer_argv],
                               env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT
        while "stage: fetch and validate data" not in log.read_text(errors="replace"):
            assert pod.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-2000:]
            time.sleep(0.2)
        (trainer,) = psutil.Process(pod.pid).children()  # PID 1 of its namespace
        trainer.send_signal(signal.SIGTERM)
        assert pod.wait(timeout=10) == 128 + signal.SIGTERM
    finally:
        pod.kill()
        silent.close()


def _logged_losses(output: Path) -> list[tuple[int, float]]:
    history = json.loads((output / "final" / "train_log.json").read_text())
    return [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]


def test_invalid_data_exits_2_with_the_line_in_the_termination_message(tmp_path, monkeypatch):
    from tooltune_trainer import recipe

    lines = [json.dumps(example) for example in tool_calling_dataset(10)]
    lines[1] = '{"messages": [{"role": "user", "content": "hi"}'  # cut off: not JSON
    data = tmp_path / "tasks.jsonl"
    data.write_text("\n".join(lines) + "\n")
    config = tmp_path / "contract.json"
    config.write_text(json.dumps(_contract(_spec(str(data), str(tmp_path / "out")))))
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(tmp_path / "termination-log"))
    monkeypatch.setenv(WORKDIR_ENV, str(tmp_path / "work"))

    assert recipe.main(config) == EXIT_INVALID
    message = (tmp_path / "termination-log").read_text()
    assert message.startswith("invalid: line 2: ") and "\n" not in message
    assert not (tmp_path / "out").exists()  # stopped before any training


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"output": {"uri": "OUT", "gguf": True}}, "invalid: output.gguf: GGUF export needs llama.cpp"),
        (
            {"hyperparameters": {"precision": "fp16"}},
            "invalid: hyperparameters.precision: fp16 needs a CUDA GPU",
        ),
        ({"dataset": {"train": "DATA", "validationSplit": 0.95}}, "invalid: dataset.validationSplit:"),
        ({"hyperparameters": {"maxSeqLength": 40}}, "invalid: line 1: "),
    ],
)
def test_settings_this_run_cannot_honour_exit_2_before_training(tmp_path, monkeypatch, change, reason):
    from tooltune_trainer import recipe

    data = write_jsonl(tmp_path / "tasks.jsonl", tool_calling_dataset(10))
    spec = _spec(str(data), str(tmp_path / "out"))
    for key, value in change.items():
        spec[key] = json.loads(json.dumps(value).replace('"OUT"', json.dumps(str(tmp_path / "out")))
                               .replace('"DATA"', json.dumps(str(data))))  # fmt: skip
    config = tmp_path / "contract.json"
    config.write_text(json.dumps(_contract(spec)))
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(tmp_path / "termination-log"))
    monkeypatch.setenv(WORKDIR_ENV, str(tmp_path / "work"))

    assert recipe.main(config) == EXIT_INVALID
    assert (tmp_path / "termination-log").read_text().startswith(reason)


def test_an_unreadable_contract_is_invalid_not_retryable(tmp_path, monkeypatch):
    from tooltune_trainer import recipe

    config = tmp_path / "contract.json"
    config.write_text(json.dumps({"job": {"namespace": "n", "name": "j"}, "spec": {"baseModel": "x"}}))
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(tmp_path / "termination-log"))
    assert recipe.main(config) == EXIT_INVALID
    message = (tmp_path / "termination-log").read_text()
    assert "contract.spec.dataset: is required" in message and "contract.spec.output: is required" in message
