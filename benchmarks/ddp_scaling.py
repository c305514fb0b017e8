"""DDP scaling on this machine's CPUs: `tooltune train` on 1 process against 2 (torchrun, gloo), at the same
global batch, side by side in one run.

Both train the Task API example (the built-in tiny model, full fine-tune, as examples/task-api trains it)
for one epoch with no evaluation or checkpoint inside the timed loop. 1 process trains at batch G; N processes
at G/N each, so every optimizer step sees the same G examples. Samples per second are the Trainer's
`train_samples_per_second` (global samples over the training loop's wall time, read from rank 0's log); the
whole command's time (torch imports, rendezvous, tiny model build, evaluation, save) is printed next to it.

    .venv/bin/python benchmarks/ddp_scaling.py [--processes 2] [--global-batch 16] [--repeats 1]

Three rows: 1 process with a thread per CPU, 1 process with one thread (what each DDP worker gets here),
and the DDP run; ratios are against the first. On 2 shared cores this measures what DDP costs, not a GPU
speed-up: the GPU expectation is written in docs/multi-gpu.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "api"), str(REPO / "trainer-image")]

from tooltune_api import TERMINATION_LOG_ENV, WORKDIR_ENV  # noqa: E402
from tooltune_trainer import recipe  # noqa: E402

DATA = REPO / "examples" / "task-api" / "task_api_tool_calling.jsonl"
JOB = REPO / "examples" / "task-api" / "tooltunejob.yaml"
NEVER = 10**6  # every-steps values that never trigger within one epoch


def contract(output: Path, per_device_batch: int) -> dict[str, Any]:
    job = recipe.contract_from_job_file(JOB, output)
    spec = job.spec.model_copy(deep=True)
    spec.dataset.train = str(DATA)
    spec.hyperparameters.epochs = 1
    spec.hyperparameters.batch_size = per_device_batch
    spec.hyperparameters.gradient_accumulation_steps = 1
    spec.checkpoints.every_steps = NEVER
    spec.evaluation.every_steps = NEVER
    spec.evaluation.max_examples = 1
    spec.evaluation.smoke_prompts = []
    spec.output.uri = str(output / "out")
    return job.model_copy(update={"spec": spec}).dump()


def run(processes: int, threads: int, global_batch: int, root: Path) -> dict[str, float]:
    root.mkdir(parents=True)
    (root / "contract.json").write_text(json.dumps(contract(root, global_batch // processes)))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(REPO / part) for part in ("api", "operator", "trainer-image")),
        WORKDIR_ENV: str(root / "work"),
        TERMINATION_LOG_ENV: str(root / "termination-log"),
    }
    for name in ("PET_NNODES", "PET_NPROC_PER_NODE"):
        env.pop(name, None)
    env["OMP_NUM_THREADS"] = str(threads)  # per process
    if processes > 1:
        env |= {"PET_NNODES": "1", "PET_NPROC_PER_NODE": str(processes)}
    started = time.monotonic()
    command = [sys.executable, "-m", "tooltune_trainer", "train", "--config", str(root / "contract.json")]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"{processes} process(es) failed:\n{result.stderr[-4000:]}")
    history = json.loads((root / "out" / "final" / "train_log.json").read_text())
    summary = next(entry for entry in history if "train_samples_per_second" in entry)
    return {
        "samples_per_second": summary["train_samples_per_second"],
        "train_seconds": summary["train_runtime"],
        "steps": history[-1]["step"],
        "command_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    if args.global_batch % args.processes:
        raise SystemExit("--global-batch must be a multiple of --processes")
    cpus = len(os.sched_getaffinity(0))
    # (processes, threads each): one process on every CPU, one process on one thread (what each DDP worker
    # gets), and the DDP run. The first ratio is the speed-up; the second, what DDP costs besides threads.
    each = max(1, cpus // args.processes)
    shapes = list(dict.fromkeys([(1, cpus), (1, each), (args.processes, each)]))
    results: dict[tuple[int, int], list[dict[str, float]]] = {shape: [] for shape in shapes}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):  # interleaved: load on the machine hits each alike
            for processes, threads in shapes:
                root = Path(tmp) / f"{processes}x{threads}-{repeat}"
                results[processes, threads].append(run(processes, threads, args.global_batch, root))
    rows = {shape: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            for shape, runs in results.items()}  # fmt: skip
    base = rows[shapes[0]]["samples_per_second"]
    print(f"DDP scaling, global batch {args.global_batch}, one epoch of the Task API example, "
          f"{cpus} CPUs, median of {args.repeats}")  # fmt: skip
    print(f"{'processes':>9} {'threads':>7} {'per device':>10} {'steps':>5} {'samples/s':>9} {'ratio':>5} "
          f"{'train s':>7} {'command s':>9}")  # fmt: skip
    for (processes, threads), row in rows.items():
        print(f"{processes:>9} {threads:>7} {args.global_batch // processes:>10} {row['steps']:>5.0f} "
              f"{row['samples_per_second']:>9.1f} {row['samples_per_second'] / base:>5.2f} "
              f"{row['train_seconds']:>7.1f} {row['command_seconds']:>9.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
