"""How the operator keeps up: apply N ToolTuneJobs and time each one's create → Job created.

    .venv/bin/python benchmarks/operator_scale.py [--jobs 500] [--progress] [--rate JOBS_PER_SECOND]

The real operator runs as its own process (`python -m tooltune_operator`) against the in-memory
Kubernetes API of the test harness, so its peak RSS is its own. With --progress a test kubelet runs
every pod (tests/integration/fake_trainer.py: progress patches, then exit 0), so watch events and status
patches flow while jobs are created; its node has room for every pod at once (a cluster's worth), and each
pod is a Python process on this machine, so the load average says how much the figures are squeezed.
Targets: p50 under 100 ms, all jobs reconciled within 60 s, RSS under 150 MB.

Applied all at once, the jobs queue up in the operator, so p50 and p99 mostly say how long the queue
was (throughput); --rate applies them at a steady pace, so they say how long one job takes. Also printed:
the operator's RSS when ready (imports and a first job), its CPU, the load average (figures on a shared
machine move with it) and the API requests per job by kind, counted by the emulator for every client
(operator, kubelet, trainers, this script).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import kubernetes
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "api"), str(REPO / "operator"), str(REPO / "trainer-image")]

from tests.harness.emulator import JOBS, TTJ, start_cluster  # noqa: E402
from tests.harness.kubelet import DEFAULT_ALLOCATABLE, Kubelet, Node  # noqa: E402

TARGET_P50_MS = 100
TARGET_TOTAL_S = 60
TARGET_RSS_MB = 150


def spec(index: int, behaviour: str) -> dict:
    return {
        "apiVersion": "tooltune.dev/v1alpha1",
        "kind": "ToolTuneJob",
        "metadata": {"name": f"bench-{index:04d}"},
        "spec": {
            "baseModel": f"script/{behaviour}",
            "dataset": {"train": "data/train.jsonl"},
            "output": {"uri": "runs/out"},
            "resources": {"gpus": 0},
        },
    }


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--progress", action="store_true", help="run every pod so status patches flow")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="jobs applied per second (default: all at once)"
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="tooltune-scale-"))
    cluster = start_cluster(workdir)
    kubelet = None
    if args.progress:
        fake = [sys.executable, str(REPO / "tests/integration/fake_trainer.py")]
        # room for every pod at once, as a cluster of nodes has: the jobs progress together
        node = Node(allocatable={**DEFAULT_ALLOCATABLE, "pods": args.jobs + 1})
        kubelet = Kubelet(cluster, workdir / "kubelet", executables={"tooltune": fake}, node=node).start()
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "PYTHONPATH": os.pathsep.join(str(REPO / d) for d in ("api", "operator", "trainer-image")),
        "TOOLTUNE_METRICS_PORT": "0",
        "TOOLTUNE_LIVENESS_ENDPOINT": "",
        "TOOLTUNE_PROGRESS_INTERVAL": "10",
    }
    # The log goes to a file: an unread pipe fills up (64 KiB), then blocks the operator at its next log line.
    log = (workdir / "operator.log").open("wb")
    operator = subprocess.Popen(
        [sys.executable, "-m", "tooltune_operator"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    process = psutil.Process(operator.pid)
    peak_rss = 0
    cpu_start = None
    stop = threading.Event()

    def sample_rss() -> None:
        nonlocal peak_rss
        while not stop.is_set():
            try:
                peak_rss = max(peak_rss, process.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            time.sleep(0.05)

    threading.Thread(target=sample_rss, daemon=True).start()
    api = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
    custom = kubernetes.client.CustomObjectsApi(api)
    try:
        # Ready: the operator has handled a first job.
        custom.create_namespaced_custom_object(
            "tooltune.dev", "v1alpha1", "default", "tooltunejobs", spec(9999, "succeed")
        )
        deadline = time.monotonic() + 60
        while not cluster.get(JOBS, "default", "bench-9999-1"):
            if time.monotonic() > deadline or operator.poll() is not None:
                raise SystemExit(f"operator did not start; see {workdir / 'operator.log'}")
            time.sleep(0.05)
        cpu_start = process.cpu_times()
        ready_rss = process.memory_info().rss  # imports and one job: what the jobs add comes on top
        requests_start = cluster.call(lambda: dict(cluster.emulator.request_counts))

        created: dict[str, float] = {}
        seen: dict[str, float] = {}
        batch = kubernetes.client.BatchV1Api(api)
        since = batch.list_namespaced_job("default").metadata.resource_version

        def watch_jobs() -> None:  # what any client sees: Jobs arriving on a watch stream
            stream = kubernetes.watch.Watch()
            for event in stream.stream(
                batch.list_namespaced_job, "default", resource_version=since, timeout_seconds=600
            ):
                owner = (event["object"].metadata.labels or {}).get("tooltune.dev/job", "")
                if event["type"] == "ADDED" and owner in created:
                    seen.setdefault(owner, time.monotonic())
                if stop.is_set() or len(seen) == args.jobs:
                    stream.stop()

        threading.Thread(target=watch_jobs, daemon=True).start()
        behaviour = "succeed" if args.progress else "run"
        started = time.monotonic()
        for index in range(args.jobs):
            if args.rate:  # paced: the latency of one job, not of a queue of them
                time.sleep(max(0.0, started + index / args.rate - time.monotonic()))
            body = spec(index, behaviour)
            created[body["metadata"]["name"]] = time.monotonic()
            custom.create_namespaced_custom_object(
                "tooltune.dev", "v1alpha1", "default", "tooltunejobs", body
            )
        applied = time.monotonic() - started
        deadline = time.monotonic() + 300
        while len(seen) < args.jobs and time.monotonic() < deadline:
            time.sleep(0.05)
        total = max(seen.values(), default=started) - started
        phased = sum(1 for t in cluster.list(TTJ) if (t.get("status") or {}).get("phase"))
        cpu = process.cpu_times()
        cpu_seconds = (cpu.user + cpu.system) - (cpu_start.user + cpu_start.system)
        latencies = [(seen[name] - created[name]) * 1000 for name in seen]
        requests = cluster.call(lambda: dict(cluster.emulator.request_counts))
        load = os.getloadavg()
    finally:
        stop.set()
        operator.terminate()
        try:
            operator.wait(10)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait()
        log.close()
        if kubelet is not None:
            kubelet.stop()
        cluster.stop()

    p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
    rss_mb = peak_rss / 2**20
    print(f"jobs applied           {args.jobs} in {applied:.1f} s ({args.jobs / applied:.0f}/s)")
    print(f"jobs reconciled        {len(seen)}/{args.jobs}; with a status phase: {phased}")
    print(f"create → Job  p50      {p50:.0f} ms   (target < {TARGET_P50_MS} ms)")
    print(f"create → Job  p99      {p99:.0f} ms")
    print(f"all Jobs created in    {total:.1f} s   (target < {TARGET_TOTAL_S} s)")
    ready_mb = ready_rss / 2**20
    print(f"operator peak RSS      {rss_mb:.0f} MB   (target < {TARGET_RSS_MB} MB, {ready_mb:.0f} MB ready)")
    print(f"operator CPU           {cpu_seconds:.1f} s ({cpu_seconds / args.jobs * 1000:.0f} ms per job)")
    print(f"load average           {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} cores)")
    counts = {kind: n - requests_start.get(kind, 0) for kind, n in requests.items()}
    counts = {kind: n for kind, n in sorted(counts.items(), key=lambda kv: -kv[1]) if n}
    print(f"API requests per job   {sum(counts.values()) / args.jobs:.1f} (all clients), by kind:")
    for kind, n in counts.items():
        print(f"    {kind:<40} {n / args.jobs:6.2f}")
    ok = len(seen) == args.jobs and p50 < TARGET_P50_MS and total < TARGET_TOTAL_S and rss_mb < TARGET_RSS_MB
    print("targets met" if ok else "targets NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
