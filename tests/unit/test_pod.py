"""Pod plumbing shared by `tooltune train` and `tooltune submit`: contract, exit codes, termination line."""

from __future__ import annotations

from pathlib import Path

import pytest
from tooltune_api import EXIT_INVALID, EXIT_OK, TERMINATION_LOG_ENV
from tooltune_trainer import pod, recipe, submitter


@pytest.fixture
def termination_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "termination-log"
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(path))
    return path


def test_finish_writes_one_line_with_the_outcome_and_returns_its_exit_code(termination_log: Path) -> None:
    assert pod.finish(pod.INVALID, ValueError("line 2: bad JSON\nline 5: unknown role\n")) == EXIT_INVALID
    assert termination_log.read_text() == "invalid: line 2: bad JSON (and 1 more)"
    assert pod.finish(pod.SUCCEEDED, "12 steps") == EXIT_OK
    assert termination_log.read_text() == "succeeded: 12 steps"
    assert pod.finish(pod.TERMINATED, "stopped at step 3") == 143
    assert pod.finish(pod.RETRYABLE, "") == pod.EXIT_RETRYABLE
    assert termination_log.read_text() == "retryable: "


def test_a_long_reason_is_cut_to_what_kubernetes_keeps(termination_log: Path) -> None:
    pod.finish(pod.RETRYABLE, "x" * 10_000)
    assert len(termination_log.read_bytes()) == pod.TERMINATION_MESSAGE_LIMIT


def test_a_missed_gate_fails_the_job_at_once_under_its_own_outcome(termination_log: Path) -> None:
    assert pod.finish(pod.GATE_FAILED, "evaluation gate failed: noCallRate 0.4 > 0.05 (atMost 0.05)") == 2
    assert (
        termination_log.read_text()
        == "gate_failed: evaluation gate failed: noCallRate 0.4 > 0.05 (atMost 0.05)"
    )


def test_exit_codes_map_back_to_outcomes() -> None:
    for outcome, code in pod.EXIT_CODES.items():
        assert pod.outcome_of(code) == outcome
    assert pod.outcome_of(77) == pod.RETRYABLE


def test_a_bad_contract_names_the_file_and_the_field(tmp_path: Path) -> None:
    missing = tmp_path / "absent.json"
    with pytest.raises(pod.InvalidContract, match=f"{missing}: cannot read the trainer contract"):
        pod.load_contract(missing)
    bad = tmp_path / "contract.json"
    bad.write_text('{"job": {"name": "x"}}')
    with pytest.raises(pod.InvalidContract, match=r"contract\.spec"):
        pod.load_contract(bad)


@pytest.mark.parametrize("entrypoint", [recipe.main, submitter.main])
def test_both_entrypoints_refuse_a_missing_contract_the_same_way(
    entrypoint, termination_log: Path, tmp_path: Path
) -> None:
    assert entrypoint(tmp_path / "absent.json") == EXIT_INVALID
    assert termination_log.read_text().startswith(f"invalid: {tmp_path / 'absent.json'}: cannot read")
