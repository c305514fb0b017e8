"""`tooltune validate` and `tooltune split` as a user runs them: lines, reasons, exit codes, no tracebacks."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from tooltune_trainer.cli import app
from tooltune_trainer.data import split_examples
from tooltune_trainer.formatting import templated_length
from typer.testing import CliRunner, Result

ROOT = Path(__file__).resolve().parents[2]
DATA = Path("tests/data")
BAD = DATA / "bad_examples.jsonl"
EXAMPLE = Path("examples/task-api/task_api_tool_calling.jsonl")
DOC = ROOT / "docs" / "bad-inputs.md"
BOX = re.compile(r"[│╭╮╰╯─]+")

# line -> a piece of the reason, for every bad line of tests/data/bad_examples.jsonl
EXPECTED = {
    2: "invalid JSON",
    3: "role is 'bot'",
    4: "a system message must come before the conversation",
    5: "calls tool 'delete_task', which is not in tools",
    6: "arguments is an object; it must be a JSON string",
    7: "arguments is not valid JSON",
    8: "arguments must encode a JSON object, got an array",
    9: "miss required parameter 'title'",
    10: "parameter 'task_id' is 17, expected type string",
    11: "'pending' is not one of ['open', 'done']",
    12: "pass parameter 'priority' that the tool does not define",
    13: "tool message answers tool_call_id 'call_9'",
    14: "tool message has no tool_call_id",
    15: "no assistant turn",
    16: "empty assistant turn",
    17: "weight is 2",
    18: "has 2 tool calls but parallel_tool_calls is false",
    19: "is an array, not an object",
    20: 'has no "messages" array',
    21: "the conversation must start with a user message",
    22: "has tool calls without a tool message answering them",
    23: "is not UTF-8 text",
}


@pytest.fixture(autouse=True)
def in_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def run(*args: str) -> Result:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


def normalised(text: str) -> str:
    return " ".join(BOX.sub(" ", text).split())


def test_each_bad_line_is_named_with_its_reason() -> None:
    result = run("validate", str(BAD))
    assert result.exit_code == 1
    problems = [
        line for line in result.output.splitlines() if line.startswith(f"{BAD}:") and ": warning:" not in line
    ]
    found = {int(line.split(":")[1]): line for line in problems}
    assert sorted(found) == sorted(EXPECTED)  # lines 1 and 24 are valid: no problem for them
    for number, reason in EXPECTED.items():
        assert reason in found[number], (number, found[number])
    assert len(problems) == len(EXPECTED)  # one finding per bad line, no follow-on noise
    assert "FAILED: 22 problems on 22 lines" in result.output


def test_summary_counts_what_was_valid() -> None:
    result = run("validate", str(BAD))
    summary = normalised(result.output)
    assert "valid examples 2" in summary
    assert "invalid lines 22" in summary
    assert "likely PII 1 card, 2 email, 1 phone" in summary


def test_json_report() -> None:
    result = run("validate", str(BAD), "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert {p["line"] for p in report["problems"]} == set(EXPECTED)
    assert report["summary"]["examples"] == 2
    assert [(f["line"], f["kind"]) for f in report["summary"]["pii"]] == [
        (24, "email"), (24, "card"), (24, "phone"), (24, "email")
    ]  # fmt: skip


def test_example_data_passes_with_only_warnings() -> None:
    result = run("validate", str(EXAMPLE))
    assert result.exit_code == 0, result.output
    assert f"{EXAMPLE}: warning: mixed outputs: 180 of 1183 examples (15%)" in result.output
    assert "OK: 1183 examples, 1 warning" in result.output
    assert "calls to create_task" in result.output


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (DATA / "missing.jsonl", "cannot be read: No such file or directory"),
        (DATA, "cannot be read: Is a directory"),
        (DATA / "empty.jsonl", "is empty: no examples"),
        (DATA / "binary.jsonl", "1: contains NUL bytes: this looks like a binary file"),
    ],
    ids=["missing", "directory", "empty", "binary"],
)
def test_unreadable_files_fail_cleanly(path: Path, message: str) -> None:
    result = run("validate", str(path))
    assert result.exit_code == 1
    assert f"{path}:{message}" in result.output or f"{path}: {message}" in result.output


def test_length_limit_needs_a_tokenizer() -> None:
    result = run("validate", str(EXAMPLE), "--max-seq-length", "2048")
    assert result.exit_code == 2
    assert "needs --base-model to count tokens" in normalised(result.output)


def test_an_unloadable_base_model_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    result = run("validate", str(EXAMPLE), "--base-model", str(tmp_path / "no-such-model"))
    assert result.exit_code == 1
    assert f"{EXAMPLE}: --base-model {tmp_path / 'no-such-model'}: cannot load its tokenizer" in result.output


def test_training_tokens_are_the_split_s_templated_tokens_times_the_epochs(
    tiny_model_dir: Path, tiny_tokenizer, tool_calling_jsonl: Path, tool_calling_examples, tmp_path: Path
) -> None:
    result = run(
        "validate", str(tool_calling_jsonl), "--base-model", str(tiny_model_dir), "--epochs", "3", "--json"
    )
    assert result.exit_code == 0, result.output
    training = json.loads(result.stdout)["training"]

    train, _ = split_examples(tool_calling_examples, 0.1, 42)  # the examples the trainer trains on
    per_epoch = sum(templated_length(tiny_tokenizer, example) for example in train)
    assert training == {
        "examples": 36,
        "validationSplit": 0.1,
        "seed": 42,
        "epochs": 3,
        "tokensPerEpoch": per_epoch,
        "tokens": 3 * per_epoch,
    }
    # the same examples as `tooltune split` writes to train.jsonl, counted as a whole file
    assert run("split", str(tool_calling_jsonl), "--out-dir", str(tmp_path)).exit_code == 0
    whole = run("validate", str(tmp_path / "train.jsonl"), "--base-model", str(tiny_model_dir),
                "--validation-split", "0", "--epochs", "1", "--json")  # fmt: skip
    report = json.loads(whole.stdout)
    assert report["training"]["tokens"] == report["summary"]["tokens"]["total"] == per_epoch

    text = normalised(run("validate", str(tool_calling_jsonl), "--base-model", str(tiny_model_dir)).output)
    assert (
        f"training tokens (templated × epochs) {per_epoch} × 3 epochs = {3 * per_epoch} "
        "(36 examples after the 10% validation split, seed 42)"
    ) in text
    assert "training" not in json.loads(run("validate", str(tool_calling_jsonl), "--json").stdout)


def test_no_traceback_from_a_real_process() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("api", "trainer-image", "."))}
    command = [
        sys.executable,
        "-c",
        "from tooltune_trainer.cli import app; app()",
        "validate",
        str(DATA / "binary.jsonl"),
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    assert "binary.jsonl:1: contains NUL bytes" in done.stdout


# ---------------------------------------------------------------- the documented table


def documented_rows() -> list[tuple[str, str, str]]:
    """(command, line, message) for every row of docs/bad-inputs.md."""
    rows, command = [], ""
    for text in DOC.read_text(encoding="utf-8").splitlines():
        if heading := re.match(r"^### `tooltune (.+)`$", text):
            command = heading.group(1)
        elif row := re.match(r"^\| (?!Bad input|---)(.+?) \| (\d+|—) \| `(.+)` \|$", text):
            rows.append((command, row.group(2), row.group(3)))
    return rows


def test_doc_lists_every_bad_line() -> None:
    lines = {
        int(line) for command, line, _ in documented_rows() if command == f"validate {BAD}" and line != "—"
    }
    assert set(EXPECTED) <= lines


@pytest.mark.parametrize("command", sorted({command for command, _, _ in documented_rows()}))
def test_doc_rows_match_what_the_validator_prints(command: str) -> None:
    result = run(*shlex.split(command))
    assert result.exit_code != 0
    output = normalised(result.output)
    path = shlex.split(command)[1]
    for doc_command, line, message in documented_rows():
        if doc_command != command:
            continue
        prefix = (
            ""
            if message.startswith("Invalid value")
            else (f"{path}: " if line == "—" else f"{path}:{line}: ")
        )
        pattern = re.escape(normalised(prefix + message)).replace(re.escape("<N>"), r"\d+")
        assert re.search(pattern, output), (command, line, message)


# ---------------------------------------------------------------- split


def test_split_writes_the_lab_sizes(tmp_path: Path) -> None:
    result = run("split", str(EXAMPLE), "--out-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert f"Training examples: 1064 -> {tmp_path / 'train.jsonl'}" in result.output
    assert f"Validation examples: 119 -> {tmp_path / 'val.jsonl'}" in result.output
    train = (tmp_path / "train.jsonl").read_text(encoding="utf-8").splitlines()
    val = (tmp_path / "val.jsonl").read_text(encoding="utf-8").splitlines()
    assert (len(train), len(val)) == (1064, 119)
    original = {json.dumps(json.loads(line)) for line in EXAMPLE.read_text(encoding="utf-8").splitlines()}
    assert {json.dumps(json.loads(line)) for line in train + val} == original


def test_split_is_reproducible_and_follows_the_seed(tmp_path: Path) -> None:
    outputs = []
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        assert (
            run(
                "split",
                str(EXAMPLE),
                "--seed",
                seed,
                "--validation-split",
                "0.2",
                "--out-dir",
                str(tmp_path / name),
            ).exit_code
            == 0
        )
        outputs.append((tmp_path / name / "val.jsonl").read_text(encoding="utf-8"))
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]
    assert len(outputs[0].splitlines()) == 237  # 1183 - int(1183 * 0.8)


def test_split_refuses_invalid_data(tmp_path: Path) -> None:
    result = run("split", str(BAD), "--out-dir", str(tmp_path))
    assert result.exit_code == 1
    assert f"{BAD}:5: messages[1].tool_calls[0] calls tool 'delete_task'" in result.output
    assert not (tmp_path / "train.jsonl").exists()


def test_split_rejects_a_fraction_out_of_range(tmp_path: Path) -> None:
    result = run("split", str(EXAMPLE), "--validation-split", "1.5", "--out-dir", str(tmp_path))
    assert result.exit_code == 1
    assert "cannot split: validationSplit must be between 0 and 1 (exclusive), got 1.5" in result.output
