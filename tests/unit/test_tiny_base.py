"""The pre-trained tiny base in models/tiny-tool-base: built from generic data only, shipped as its build
script declares, loaded like any local model, and able to copy a value it has never seen."""

from __future__ import annotations

import json
from dataclasses import asdict
from itertools import pairwise
from pathlib import Path

import pytest
import yaml
from tooltune_api.models import LAB_SMOKE_PROMPTS, ToolTuneJobSpec, parse_spec
from tooltune_trainer import backends
from tooltune_trainer.data import read_jsonl
from tooltune_trainer.formatting import IGNORE_INDEX, chat_messages
from tooltune_trainer.tiny_base import (
    BUILD_FILE,
    SHIPPED,
    TASK_API_WORDS,
    BaseSettings,
    Batches,
    check,
    echo_examples,
    generic_examples,
)
from tooltune_trainer.tool_formats import prepare_tokenizer

TASK_API = Path(__file__).resolve().parents[2] / "examples" / "task-api"


def _user_turns(examples: list[dict], answered_with_a_call: bool | None = None) -> set[str]:
    """The user turns; with answered_with_a_call, those the next turn answers with a call (True) or not."""
    turns = set()
    for example in examples:
        messages = example["messages"]
        for user, answer in pairwise(messages):
            if user["role"] == "user" and answered_with_a_call in (None, bool(answer.get("tool_calls"))):
                turns.add(user["content"])
    return turns


def test_the_generic_corpus_has_no_task_api_tool_parameter_or_request():
    examples = generic_examples(BaseSettings.seed, BaseSettings.examples)
    names = {t["function"]["name"] for e in examples for t in e["tools"]}
    names |= {p for e in examples for t in e["tools"] for p in t["function"]["parameters"]["properties"]}
    assert not names & TASK_API_WORDS
    task_api = [json.loads(line) for line in read_jsonl(TASK_API / "task_api_tool_calling.jsonl")]
    task_api_turns = _user_turns(task_api) | set(LAB_SMOKE_PROMPTS)
    assert not _user_turns(examples, answered_with_a_call=True) & task_api_turns
    # Small talk is shared with any chat data ("Hi", "Bye"); its answers differ and carry no tool call.
    assert _user_turns(examples) & task_api_turns <= {"Hi", "Bye", "What can you do?", "Tell me a joke"}


class _Tokenizer:
    bos_token_id, all_special_ids = 0, [0, 1, 2]

    def __len__(self) -> int:
        return 50


def test_batches_teach_copying_alone_first_then_mix_it_with_echo_turns_and_tool_calls():
    settings = BaseSettings(induction_steps=3, batch_size=400)
    rows = [{"input_ids": [0, 7, 8], "labels": [IGNORE_INDEX, 8, 9]}]
    echo = [{"input_ids": [0, 5], "labels": [IGNORE_INDEX, 5]}]
    batches = Batches(settings, rows, echo, _Tokenizer())
    for row in batches.batch(3):  # a random sequence said twice; only the repeat is supervised
        sequence = row["input_ids"][1 : (len(row["input_ids"]) + 1) // 2]
        assert row["input_ids"] == [0, *sequence, *sequence]
        assert row["labels"] == [IGNORE_INDEX] * (len(sequence) + 1) + sequence
        assert 12 <= len(sequence) <= 48 and not {0, 1, 2} & set(sequence)
    mixed = batches.batch(4)
    shares = [sum(row in kind for row in mixed) / len(mixed) for kind in (echo, rows)]
    assert shares == pytest.approx(
        [settings.echo_share, 1 - settings.echo_share - settings.induction_share], abs=0.07
    )


def test_echo_turns_repeat_the_user_s_words():
    for example in echo_examples(BaseSettings.seed, 20):
        user, answer = (m["content"] for m in example["messages"])
        assert answer in user and answer.strip()


def test_the_generic_corpus_is_the_same_for_the_same_seed():
    assert generic_examples(3, 50) == generic_examples(3, 50)
    assert generic_examples(3, 50) != generic_examples(4, 50)


def test_the_shipped_model_is_what_its_build_script_declares():
    record = json.loads((SHIPPED / BUILD_FILE).read_text())
    assert record["settings"] == asdict(BaseSettings())
    assert check(SHIPPED) == []


def test_check_names_a_file_that_changed(tmp_path):
    for path in SHIPPED.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / "chat_template.jinja").write_text("{{ messages }}")
    assert [p.split(":")[0] for p in check(tmp_path)] == ["chat_template.jinja"]


def _answer(prompt: str) -> list[tuple[str, dict]]:
    """The shipped model's calls for prompt, offered two tools as its corpus always offers two to four, loaded
    as any local baseModel is."""
    spec = ToolTuneJobSpec.model_validate(
        {
            "baseModel": str(SHIPPED),
            "dataset": {"train": "t.jsonl"},
            "hyperparameters": {"fullFineTune": True},
            "output": {"uri": "o/"},
            "resources": {"gpus": 0},
        }
    )
    model, tokenizer = backends.load_model(spec, "cpu", None)
    fmt = prepare_tokenizer(tokenizer, "auto")
    tools = [
        {"type": "function", "function": {"name": name, "description": description, "parameters": {
            "type": "object", "properties": {parameter: {"type": "string"}}, "required": [parameter]}}}
        for name, description, parameter in [
            ("add_note", "Save a note.", "text"), ("get_weather", "Weather forecast for a city.", "city")
        ]
    ]  # fmt: skip
    messages = [
        {"role": "system", "content": "You are a helpful assistant. Today is 2031-05-02."},
        {"role": "user", "content": prompt},
    ]
    encoded = tokenizer.apply_chat_template(
        chat_messages(messages), tools=tools, tokenize=True, add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    )  # fmt: skip
    output = model.generate(**encoded, max_new_tokens=40, do_sample=False)
    answer = tokenizer.decode(output[0, encoded["input_ids"].shape[1] :], skip_special_tokens=False)
    return [(call.name, call.arguments) for call in fmt.parse(answer).calls]


def test_the_shipped_model_loads_as_a_local_model_and_answers_with_a_well_formed_call():
    calls = _answer("Add a note: Velkaro garden pasta")
    assert [(name, sorted(arguments)) for name, arguments in calls] == [("add_note", ["text"])]


def test_the_shipped_model_copies_a_value_it_has_never_seen():
    assert _answer("Add a note: Velkaro garden pasta") == [("add_note", {"text": "Velkaro garden pasta"})]


def test_the_example_job_fine_tunes_the_shipped_base():
    job = yaml.safe_load((TASK_API / "tooltunejob.yaml").read_text())
    spec = parse_spec(job["spec"])  # a path inside the working directory, as a pod may load it too
    assert (SHIPPED.parents[1] / spec.base_model).resolve() == SHIPPED
