"""The trainer's CPU budget: a pod's cpu limit (cgroup v2 cpu.max) caps torch's threads."""

from __future__ import annotations

import os

import pytest
from tooltune_trainer.backends import cpu_budget

CPUS = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("max 100000\n", CPUS),  # no limit: every CPU the process may run on
        ("100000 100000\n", 1),  # cpu: 1
        ("50000 100000\n", 1),  # cpu: 500m still gets one thread
        ("150000 100000\n", 1),  # cpu: 1.5 → one thread that is never throttled
        (f"{100000 * (CPUS + 8)} 100000\n", CPUS),  # a limit above the node's CPUs
        ("garbage", CPUS),
    ],
)
def test_cpu_budget_follows_the_cgroup_limit(tmp_path, cpu_max, expected):
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    assert cpu_budget(path) == expected


def test_cpu_budget_without_a_cgroup_file_is_the_affinity(tmp_path):
    assert cpu_budget(tmp_path / "missing") == CPUS
