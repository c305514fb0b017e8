"""How the operator keeps up: apply N ToolTuneJobs and time each one's create → Job created.

    .venv/bin/python benchmarks/operator_scale.py [--jobs 500] [--progress] [--rate JOBS_PER_SECOND]
                                                   [--against GIT_REV [--rounds N]]

The real operator runs as its own process (`python -m tooltune_operator`) against the in-memory
Kubernetes API of the test harness, so its RSS and CPU are its own. It can import only what its tree's
operator image installs (pyproject.toml's base dependencies: tests/harness/operator_process.py), not all
this venv has: kopf loads the kubernetes client whenever it is installed. With --progress a test kubelet runs
every pod as tests/integration/fake_trainer.py's `succeed` script (two status patches through the trainer's
client, as the pod's ServiceAccount, half a second apart, then exit 0), so watch events and status patches
flow while jobs are created; its node has room for every pod at once (a cluster's worth). The pods run in
the kubelet's process (its ``scripts``), not as a Python process each: they make the same API calls a pod
process makes, without a thousand interpreters starting on this machine's cores, which measured the
machine's backlog more than the operator.

--against GIT_REV checks that revision out into a temporary git worktree and runs the same benchmark with
its operator first (PYTHONPATH on its api/, operator/ and trainer-image/; the emulator, kubelet and pods of
this tree for both), then with this tree's, and prints both rows and their ratios (this tree / GIT_REV): a
shared machine's load moves the figures, so compare only rows measured side by side in one run.
--rounds N runs the pair N times in alternating order (AB, BA, ...) and averages each side, so that a load
rising or falling during the run does not favour the side that ran first.

Targets: p50 under 100 ms, all jobs reconciled within 60 s, peak RSS under 150 MB (1000 jobs with
--progress), operator CPU at most 10 ms per job (a burst of 500).

Applied all at once, the jobs queue up in the operator, so p50 and p99 mostly say how long the queue
was (throughput), and the peak RSS mostly how long the queue of watch events grew: both follow how fast
this script manages to apply the jobs on a loaded machine. --rate applies them at a steady pace, the same
for both rows, so they say what the operator needs to keep up. The operator's CPU is counted from its
first job (imports and startup excluded) until every job has settled (each has a status phase, and with
--progress has Succeeded) and the operator idles again. Also printed: the RSS when ready (imports and a
first job), the load average before and after each run (figures on a shared machine move with it) and
the API requests per job by kind, counted by the emulator for every client (operator, kubelet, pods,
this script).

Measured 2026-12-02, 2 cores with nothing else running, `--against c46250e --rounds 2` (previous main →
this tree): `--jobs 500`: CPU 11.6 → 7.9 ms per job, peak RSS 138 → 106 MB, patches of the ToolTuneJob
itself 2 → 1 per job; `--jobs 1000 --progress --rate 10`: peak RSS 155 → 102 MB, CPU 50.7 → 49.0 ms per job,
p50 247 → 133 ms. Applied all at once, 1000 progressing jobs take more (the queue of watch events grows
with how fast this script applies them).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

import kubernetes
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "api"), str(REPO / "operator"), str(REPO / "trainer-image")]

from tests.harness.emulator import JOBS, TTJ, start_cluster  # noqa: E402
from tests.harness.kubelet import DEFAULT_ALLOCATABLE, Kubelet, Node  # noqa: E402
from tests.harness.operator_process import operator_command  # noqa: E402
from tests.integration import fake_trainer  # noqa: E402

TARGET_P50_MS = 100
TARGET_TOTAL_S = 60
TARGET_RSS_MB = 150
TARGET_CPU_MS_PER_JOB = 10
SETTLE_TIMEOUT_S = 300
QUIET_CPU_S = 0.05  # operator CPU per second below which it counts as idle again (after the jobs settled)
QUIET_TIMEOUT_S = 20


@dataclass
class Row:
    """One run's figures."""

    jobs: int
    applied_s: float = 0.0
    reconciled: int = 0
    settled: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    total_s: float = 0.0
    settle_s: float = 0.0
    peak_rss_mb: float = 0.0
    ready_rss_mb: float = 0.0
    cpu_s: float = 0.0
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    requests: dict[str, int] = field(default_factory=dict)

    @property
    def cpu_ms_per_job(self) -> float:
        return self.cpu_s / self.jobs * 1000

    def requests_per_job(self, kind: str | None = None) -> float:
        count = sum(self.requests.values()) if kind is None else self.requests.get(kind, 0)
        return count / self.jobs


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


def settled(job: dict, progress: bool) -> bool:
    phase = (job.get("status") or {}).get("phase")
    return phase == "Succeeded" if progress else bool(phase)


def run(tree: Path, args: argparse.Namespace) -> Row:
    """The benchmark against the operator of `tree` (a checkout of tooltune)."""
    row = Row(jobs=args.jobs, load_before=os.getloadavg())
    workdir = Path(tempfile.mkdtemp(prefix="tooltune-scale-"))
    cluster = start_cluster(workdir)
    kubelet = None
    if args.progress:
        # room for every pod at once, as a cluster of nodes has: the jobs progress together
        node = Node(allocatable={**DEFAULT_ALLOCATABLE, "pods": args.jobs + 1})
        scripts = {"tooltune": fake_trainer.in_process}
        kubelet = Kubelet(cluster, workdir / "kubelet", scripts=scripts, node=node).start()
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "PYTHONPATH": os.pathsep.join(str(tree / d) for d in ("api", "operator", "trainer-image")),
        "TOOLTUNE_METRICS_PORT": "0",
        "TOOLTUNE_LIVENESS_ENDPOINT": "",
        "TOOLTUNE_PROGRESS_INTERVAL": "10",
    }
    # The log goes to a file: an unread pipe fills up (64 KiB), then blocks the operator at its next log line.
    log = (workdir / "operator.log").open("wb")
    command = operator_command(tree / "pyproject.toml")  # what that tree's operator image installs, alone
    operator = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tree)
    process = psutil.Process(operator.pid)
    peak_rss = 0
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
        time.sleep(1)  # the first job's status patches
        cpu_start = process.cpu_times()
        row.ready_rss_mb = process.memory_info().rss / 2**20  # imports and one job: the jobs add the rest
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
        row.applied_s = time.monotonic() - started
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while time.monotonic() < deadline:
            row.settled = sum(
                settled(job, args.progress) for job in cluster.list(TTJ) if job["metadata"]["name"] in created
            )
            if len(seen) == args.jobs and row.settled == args.jobs:
                break
            time.sleep(0.5)
        row.settle_s = time.monotonic() - started
        # What the jobs cause after settling is theirs too: Events kopf still posts from its queue, late
        # watch events. Counted until the operator idles (its resync comes 30 s after a job's start).
        cpu_used = lambda: sum(process.cpu_times()[:2]) - sum(cpu_start[:2])  # noqa: E731
        row.cpu_s, quiet_deadline = cpu_used(), time.monotonic() + QUIET_TIMEOUT_S
        while time.monotonic() < quiet_deadline:
            time.sleep(1)
            before, row.cpu_s = row.cpu_s, cpu_used()
            if row.cpu_s - before < QUIET_CPU_S:
                break
        row.reconciled = len(seen)
        row.total_s = max(seen.values(), default=started) - started
        latencies = [(seen[name] - created[name]) * 1000 for name in seen] or [0.0]
        row.p50_ms, row.p99_ms = statistics.median(latencies), percentile(latencies, 0.99)
        requests = cluster.call(lambda: dict(cluster.emulator.request_counts))
        row.requests = {kind: n - requests_start.get(kind, 0) for kind, n in requests.items()}
        row.requests = {kind: n for kind, n in row.requests.items() if n}
        row.load_after = os.getloadavg()
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
    row.peak_rss_mb = peak_rss / 2**20
    return row


@contextlib.contextmanager
def checkout(rev: str) -> Iterator[Path]:
    """`rev` in a temporary git worktree, removed afterwards."""
    tree = Path(tempfile.mkdtemp(prefix="tooltune-against-")) / "tree"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(tree), rev], check=True
    )
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(tree.parent, ignore_errors=True)


def load(figures: tuple[float, float, float]) -> str:
    return " ".join(f"{value:.1f}" for value in figures)


def report(rows: dict[str, Row], progress: bool) -> bool:
    """Print the rows side by side, with the ratio this tree / the other; True if this tree meets targets."""
    names = list(rows)
    lines: list[tuple[str, list[float], str]] = [
        ("jobs reconciled", [r.reconciled for r in rows.values()], "{:.0f}"),
        (
            "jobs settled" + (" (Succeeded)" if progress else " (a phase)"),
            [r.settled for r in rows.values()],
            "{:.0f}",
        ),
        ("jobs applied /s", [r.jobs / r.applied_s for r in rows.values()], "{:.0f}"),
        (f"create → Job p50 ms (< {TARGET_P50_MS})", [r.p50_ms for r in rows.values()], "{:.0f}"),
        ("create → Job p99 ms", [r.p99_ms for r in rows.values()], "{:.0f}"),
        (f"all Jobs created s (< {TARGET_TOTAL_S})", [r.total_s for r in rows.values()], "{:.1f}"),
        ("all jobs settled s", [r.settle_s for r in rows.values()], "{:.1f}"),
        (f"operator peak RSS MB (< {TARGET_RSS_MB})", [r.peak_rss_mb for r in rows.values()], "{:.0f}"),
        ("operator RSS when ready MB", [r.ready_rss_mb for r in rows.values()], "{:.0f}"),
        ("operator CPU s", [r.cpu_s for r in rows.values()], "{:.1f}"),
        (
            f"operator CPU ms/job (≤ {TARGET_CPU_MS_PER_JOB})",
            [r.cpu_ms_per_job for r in rows.values()],
            "{:.1f}",
        ),
        ("API requests per job", [r.requests_per_job() for r in rows.values()], "{:.1f}"),
    ]
    kinds = sorted(
        {k for r in rows.values() for k in r.requests}, key=lambda k: -rows[names[-1]].requests.get(k, 0)
    )
    lines += [(f"  {kind}", [r.requests_per_job(kind) for r in rows.values()], "{:.2f}") for kind in kinds]
    width = 42
    header = f"{'':<{width}}" + "".join(f"{name:>14}" for name in names)
    print(header + (f"{'ratio':>8}" if len(rows) == 2 else ""))
    for label, values, fmt in lines:
        cells = "".join(f"{fmt.format(v):>14}" for v in values)
        ratio = f"{values[1] / values[0]:>8.2f}" if len(values) == 2 and values[0] else ""
        print(f"{label:<{width}}{cells}{ratio}")
    for name, r in rows.items():
        before, after = load(r.load_before), load(r.load_after)
        print(f"load average {name}: before {before}, after {after} ({os.cpu_count()} cores)")
    mine = rows[names[-1]]
    ok = (
        mine.reconciled == mine.jobs
        and mine.settled == mine.jobs
        and mine.p50_ms < TARGET_P50_MS
        and mine.total_s < TARGET_TOTAL_S
        and mine.peak_rss_mb < TARGET_RSS_MB
        and mine.cpu_ms_per_job <= TARGET_CPU_MS_PER_JOB
    )
    print("targets met" if ok else "targets NOT met")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--progress", action="store_true", help="run every pod so status patches flow")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="jobs applied per second (default: all at once)"
    )
    parser.add_argument("--against", metavar="GIT_REV", help="also run GIT_REV's operator, side by side")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with --against: rounds in alternating order (AB, BA, ...), averaged",
    )
    args = parser.parse_args()
    print(f"{args.jobs} jobs{', progressing' if args.progress else ''}, load average {load(os.getloadavg())}")
    if not args.against:
        return 0 if report({"this tree": run(REPO, args)}, args.progress) else 1
    rev = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", args.against],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    runs: dict[str, list[Row]] = {rev: [], "this tree": []}
    with checkout(rev) as tree:
        for turn in range(args.rounds):  # alternating, so a load that rises or falls favours neither
            order = [(rev, tree), ("this tree", REPO)]
            for name, source in order if turn % 2 == 0 else order[::-1]:
                runs[name].append(run(source, args))
    return 0 if report({name: mean(rows) for name, rows in runs.items()}, args.progress) else 1


def mean(rows: list[Row]) -> Row:
    """The figures of several runs averaged (the load: before the first, after the last)."""
    averaged = Row(jobs=rows[0].jobs, load_before=rows[0].load_before, load_after=rows[-1].load_after)
    for figure in fields(Row):
        if figure.type in ("float", "int") and figure.name != "jobs":
            setattr(averaged, figure.name, statistics.mean(getattr(r, figure.name) for r in rows))
    kinds = {kind for r in rows for kind in r.requests}
    averaged.requests = {k: round(statistics.mean(r.requests.get(k, 0) for r in rows)) for k in kinds}
    return averaged


if __name__ == "__main__":
    sys.exit(main())
