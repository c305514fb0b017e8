"""What a multi-node group's restart costs: seconds from one pod's crash to the group training again.

    .venv/bin/python benchmarks/group_restart.py [--runs 1]

Runs the scenario of tests/integration/test_multinode.py: the real operator against the emulated API, the
test kubelet running both pods of a two-node Indexed Job (`tooltune train`: torchrun's agent and one gloo
worker each, rendezvousing on the loopback address), SeaweedFS for checkpoints. Once a checkpoint is in the
bucket, rank 1's pod is SIGKILLed; printed are the seconds from the kill to each stage of the restart:
the first Job Failed (the Job controller has stopped the other pod), the next attempt's Job created by the
operator, both new pods running, and a training step logged after resuming from the checkpoint. The last
figure is the restart's cost; most of it is starting Python, torch and the model again in two pods (on a
GPU cluster add image pull and scheduling, and NCCL instead of gloo), the operator's share is the second.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "api"), str(REPO / "operator"), str(REPO / "trainer-image")]

import kubernetes  # noqa: E402

from tests.fixtures.s3 import S3Server  # noqa: E402
from tests.harness.emulator import start_cluster  # noqa: E402
from tests.harness.kopf_runner import KopfRunner  # noqa: E402
from tests.integration.test_multinode import run_group  # noqa: E402


def one_run(root: Path) -> dict[str, float]:
    cluster = start_cluster(root / "cluster")
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    api = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
    s3 = S3Server(data_dir=root / "s3").start()
    runners: list[KopfRunner] = []

    def start_operator(source: str, memo: object = None) -> KopfRunner:
        runner = KopfRunner(
            source, cluster.url, memo=memo, watch_count=lambda: cluster.emulator.watches_started
        )
        runners.append(runner)
        return runner.start()

    try:
        run = run_group(cluster, api, s3, root, start_operator)
        if run.final.get("phase") != "Succeeded":
            raise SystemExit(f"the job did not succeed: {json.dumps(run.final)[:2000]}")
        print(f"  checkpoint at the kill: step {run.checkpoint_at_kill}; resumed from step {run.resumed_at}")
        return run.seconds
    finally:
        for runner in runners:
            runner.stop()
        s3.stop()
        api.close()
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    runs = []
    for index in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="group-restart-") as directory:
            print(f"run {index + 1} of {args.runs}")
            runs.append(one_run(Path(directory)))
    print("\nseconds after rank 1's pod was killed (median of the runs):")
    for stage in runs[0]:
        print(f"  {statistics.median(run[stage] for run in runs):7.1f}  {stage}")
    print(f"group restart cost: {statistics.median(list(run.values())[-1] for run in runs):.1f} s")


if __name__ == "__main__":
    main()
