"""Several GPUs in one pod: `tooltune train` with PET_NPROC_PER_NODE=<GPUs> starts torchrun, one worker per
GPU, DDP over NCCL, QLoRA (bitsandbytes 4-bit on each worker's own GPU) with transformers + peft.

Skipped unless at least two CUDA GPUs are visible (the CPU run of the same path, over gloo, is
tests/integration/test_ddp.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tooltune_api import TERMINATION_LOG_ENV, WORKDIR_ENV

from tests.fixtures.tiny import tool_calling_dataset, write_jsonl

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[2]
PYTHONPATH = os.pathsep.join(str(REPO / part) for part in ("api", "operator", "trainer-image", "."))


def _cuda_devices() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


requires_two_gpus = pytest.mark.skipif(
    _cuda_devices() < 2, reason=f"needs at least 2 CUDA GPUs ({_cuda_devices()} visible here)"
)


@requires_two_gpus
def test_one_process_per_gpu_trains_qlora_with_transformers_and_rank_0_saves(tmp_path, tool_calling_examples):
    from tooltune_trainer.tiny import TinyConfig, ensure_tiny_model

    gpus = _cuda_devices()
    source = ensure_tiny_model(
        tool_calling_examples, tmp_path, TinyConfig(hidden_size=256, intermediate_size=512)
    )
    data = write_jsonl(tmp_path / "tasks.jsonl", tool_calling_dataset(64))
    spec = {
        "baseModel": str(source),
        "dataset": {"train": str(data), "validationSplit": 0.25},
        "hyperparameters": {"epochs": 1, "batchSize": 2, "gradientAccumulationSteps": 1, "loadIn4bit": True,
                            "learningRate": 3e-3, "maxSeqLength": 256, "lora": {"r": 8, "alpha": 16}},
        "checkpoints": {"everySteps": 2, "keep": 100},  # step-2 stays
        "evaluation": {"everySteps": 2, "maxExamples": 2, "smokePrompts": []},
        "output": {"uri": str(tmp_path / "out")},
        "resources": {"gpus": gpus},
    }  # fmt: skip
    config = tmp_path / "contract.json"
    config.write_text(json.dumps({"job": {"namespace": "gpu", "name": "multi"}, "spec": spec,
                                  "metricsPort": 0, "reportProgress": False}))  # fmt: skip
    env = {**os.environ, "PYTHONPATH": PYTHONPATH, WORKDIR_ENV: str(tmp_path / "work"),
           TERMINATION_LOG_ENV: str(tmp_path / "termination-log"),
           "PET_NNODES": "1", "PET_NPROC_PER_NODE": str(gpus)}  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "tooltune_trainer", "train", "--config", str(config)],
                            env=env, capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert result.returncode == 0, result.stderr[-6000:]
    assert (tmp_path / "termination-log").read_text().startswith("succeeded: ")
    assert "train with transformers + peft (QLoRA through bitsandbytes) under DDP" in result.stderr
    lineage = json.loads((tmp_path / "out" / "final" / "lineage.json").read_text())
    assert lineage["training"]["worldSize"] == gpus
    assert lineage["training"]["effectiveBatchSize"] == 2 * gpus
    checkpoint = tmp_path / "out" / "checkpoints" / "step-2"
    assert {f"rng_state_{rank}.pth" for rank in range(gpus)} <= {p.name for p in checkpoint.iterdir()}
