"""Which process of a DDP run this is, and what follows from it: the implementation, the status it reports,
where its termination line goes."""

from __future__ import annotations

from pathlib import Path

import pytest
from tooltune_api import TERMINATION_LOG_ENV
from tooltune_api.models import parse_spec
from tooltune_trainer import backends, pod, ranks, recipe

TORCHRUN_RANK_1_OF_4 = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}


def test_a_process_alone_is_rank_0_of_1() -> None:
    alone = ranks.from_env({})
    assert (alone.rank, alone.world_size, alone.is_main, alone.distributed, alone.nodes) == (
        0,
        1,
        True,
        False,
        1,
    )


def test_torchruns_variables_give_the_rank_and_the_shape() -> None:
    worker = ranks.from_env(TORCHRUN_RANK_1_OF_4)
    assert (worker.rank, worker.local_rank, worker.world_size, worker.nodes) == (1, 1, 4, 2)
    assert worker.distributed and not worker.is_main


@pytest.mark.parametrize("forced", ["", "unsloth", "transformers"])
def test_several_processes_always_train_with_transformers_and_say_why(
    forced: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(backends.BACKEND_IMPL_ENV, forced)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert backends.backend_impl("cuda") == backends.TRANSFORMERS
    assert backends.impl_reason("cuda") == (
        "2 training processes (one per GPU) train with transformers + peft (QLoRA through bitsandbytes) "
        "under DDP: the installed Unsloth trains on one GPU only"
    )
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert backends.backend_impl("cuda") == (forced or backends.UNSLOTH)
    assert backends.impl_reason("cuda") is None


def test_the_effective_batch_is_per_device_times_processes_times_accumulation() -> None:
    batch = {"batchSize": 4, "gradientAccumulationSteps": 2, "learningRate": 2e-5}
    spec = parse_spec({"baseModel": "m", "dataset": {"train": "t.jsonl"}, "output": {"uri": "s3://b/o/"},
                       "hyperparameters": batch})  # fmt: skip
    status = recipe.training_status(spec, ranks.from_env(TORCHRUN_RANK_1_OF_4), "transformers", "why")
    assert status == {
        "implementation": "transformers", "implementationReason": "why", "nodes": 2, "processesPerNode": 2,
        "worldSize": 4, "perDeviceBatchSize": 4, "gradientAccumulationSteps": 2, "effectiveBatchSize": 32,
        "learningRate": 2e-5,
    }  # fmt: skip


def test_a_worker_writes_its_termination_line_to_its_own_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(tmp_path / "termination-log"))
    pod.finish(pod.SUCCEEDED, "alone")
    assert (tmp_path / "termination-log").read_text() == "succeeded: alone"
    monkeypatch.setenv(pod.RANK_MESSAGES_ENV, str(tmp_path))
    monkeypatch.setenv("RANK", "3")
    pod.finish(pod.INVALID, "line 2: bad JSON")
    assert (tmp_path / "rank-3").read_text() == "invalid: line 2: bad JSON"
    assert (tmp_path / "termination-log").read_text() == "succeeded: alone"  # the launcher's to write
