"""Resume safety: a checkpoint records what it was made from, and a run never resumes one made from
something else (another base model, LoRA shape, full fine-tune or not, chat format, tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tooltune_api import TINY_MODEL
from tooltune_api.models import ToolTuneJobSpec
from tooltune_trainer import tiny
from tooltune_trainer.checkpoints import (
    MANIFEST,
    SOURCE,
    CheckpointSync,
    ResumePoint,
    RetryPolicy,
    checkpoint_source,
    checkpoint_uri,
    complete_steps,
    fetch_latest_checkpoint,
    source_mismatch,
    steps_to_prune,
    tokenizer_fingerprint,
)
from tooltune_trainer.storage import Store, join

FAST_RETRY = RetryPolicy(attempts=2, first_delay_seconds=0.01, max_delay_seconds=0.02)
MODULES = "down_proj,gate_proj,k_proj,o_proj,q_proj,up_proj,v_proj"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return tiny.train_tokenizer(["create a task", "list my tasks", '{"name": "x"}'], vocab_size=300)


def spec(**hyperparameters: Any) -> ToolTuneJobSpec:
    return ToolTuneJobSpec.model_validate(
        {
            "baseModel": hyperparameters.pop("baseModel", "unsloth/llama-3-8b-Instruct-bnb-4bit"),
            "dataset": {"train": "s3://data/train.jsonl"},
            "output": {"uri": "s3://models/out/"},
            "hyperparameters": hyperparameters,
        }
    )


# ---------------------------------------------------------------- the record and its comparison


def test_the_source_records_base_model_training_shape_chat_format_and_tokenizer(tokenizer):
    source = checkpoint_source(spec(lora={"r": 8, "alpha": 32, "targetModules": ["v_proj", "q_proj"]}),
                               tokenizer, chat_format="hermes")  # fmt: skip
    assert source == {
        "baseModel": "unsloth/llama-3-8b-Instruct-bnb-4bit",
        "fullFineTune": False,
        "lora": {"r": 8, "alpha": 32, "targetModules": ["q_proj", "v_proj"]},
        "chatFormat": "hermes",
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    assert len(source["tokenizer"]) == 64
    assert json.loads(json.dumps(source)) == source  # it goes into manifest.json as it is
    full = checkpoint_source(spec(fullFineTune=True, lora={"r": 64}), tokenizer, chat_format="")
    assert full["fullFineTune"] is True and full["lora"] is None  # the unused LoRA settings do not matter


def test_settings_that_do_not_change_what_the_weights_are_still_resume(tokenizer):
    before = checkpoint_source(spec(learningRate=2e-5, epochs=3), tokenizer, "")
    after = checkpoint_source(
        spec(learningRate=1e-4, epochs=5, batchSize=8, lora={"dropout": 0.1}), tokenizer, ""
    )
    assert source_mismatch(before, after) is None
    one_order, other_order = (
        checkpoint_source(spec(lora={"targetModules": modules}), tokenizer, "")
        for modules in (["v_proj", "q_proj"], ["q_proj", "v_proj"])
    )
    assert source_mismatch(one_order, other_order) is None


def test_a_changed_lora_rank_names_both_shapes(tokenizer):
    recorded = checkpoint_source(spec(lora={"r": 16}), tokenizer, "")
    current = checkpoint_source(spec(lora={"r": 8}), tokenizer, "")
    assert source_mismatch(recorded, current) == (
        f"was made from LoRA r=16 alpha=16 on {MODULES}; this run has LoRA r=8 alpha=16 on {MODULES}"
    )


def test_a_changed_base_model_and_full_fine_tune_are_named_together(tokenizer):
    recorded = checkpoint_source(spec(baseModel="org/model-a", lora={"r": 16}), tokenizer, "")
    current = checkpoint_source(spec(baseModel="org/model-b", fullFineTune=True), tokenizer, "")
    assert source_mismatch(recorded, current) == (
        f"was made from base model org/model-a, LoRA r=16 alpha=16 on {MODULES}; "
        "this run has base model org/model-b, a full fine-tune"
    )


def test_another_chat_format_or_tokenizer_is_a_mismatch(tokenizer):
    recorded = checkpoint_source(spec(), tokenizer, "hermes")
    assert source_mismatch(recorded, checkpoint_source(spec(), tokenizer, "llama3_json")) == (
        "was made from chat format 'hermes'; this run has chat format 'llama3_json'"
    )
    retemplated = tiny.train_tokenizer(["create a task", "list my tasks", '{"name": "x"}'], vocab_size=300)
    assert tokenizer_fingerprint(retemplated) == tokenizer_fingerprint(tokenizer)  # deterministic
    retemplated.chat_template = tokenizer.chat_template.replace("<|end|>", "<|end|>\n")
    why = source_mismatch(recorded, checkpoint_source(spec(), retemplated, "hermes"))
    assert why is not None and why.startswith(f"was made from tokenizer {recorded['tokenizer'][:12]} ")
    other_vocab = tiny.train_tokenizer(["entirely different words here"], vocab_size=300)
    assert source_mismatch(recorded, checkpoint_source(spec(), other_vocab, "hermes")) is not None


@pytest.mark.parametrize("recorded", [None, "llama", ["baseModel"]])
def test_a_checkpoint_that_records_no_source_is_not_resumed(tokenizer, recorded):
    why = source_mismatch(recorded, checkpoint_source(spec(), tokenizer, ""))
    assert why is not None and why.startswith("records nothing of what it was made from")


def test_a_source_missing_a_field_is_a_mismatch_not_a_crash(tokenizer):
    current = checkpoint_source(spec(), tokenizer, "hermes")
    recorded = {key: value for key, value in current.items() if key != "chatFormat"}
    assert source_mismatch(recorded, current) == (
        "was made from chat format None; this run has chat format 'hermes'"
    )
    assert source_mismatch({**current, "lora": "r16"}, current).startswith(
        "was made from LoRA of unknown shape"
    )


def test_the_fresh_start_reason_names_the_newest_checkpoint_passed_over():
    point = ResumePoint(
        None, {100: "was made from a; this run has b", 200: "was made from c; this run has d"}
    )
    assert point.fresh_start_reason == "checkpoint step-200 was made from c; this run has d: starting fresh"
    assert point.step is None
    resumed = ResumePoint(Path("/w/resume/checkpoint-100"), {200: "was made from c; this run has d"})
    assert resumed.fresh_start_reason is None and resumed.step == 100
    assert ResumePoint().fresh_start_reason is None  # nothing in the output: a first run, nothing to say


# ---------------------------------------------------------------- retention of superseded checkpoints


def names(complete: list[int]) -> list[str]:
    return [f"step-{s}/{name}" for s in complete for name in ("model.safetensors", MANIFEST)]


@pytest.mark.parametrize(
    ("complete", "superseded", "keep", "pruned"),
    [
        ([100, 200, 300], {200, 300}, 1, [200, 300]),  # the new run's step 100 is the newest that counts
        ([200, 300], {200, 300}, 1, []),  # the new run has no complete checkpoint yet: keep them all
        ([100, 200, 300], {300}, 1, [100, 300]),  # 200 matched: normal retention among 100 and 200
        ([100, 200], {300}, 3, []),  # already gone
    ],
)
def test_superseded_checkpoints_go_once_the_new_run_has_its_own(complete, superseded, keep, pruned):
    assert steps_to_prune(names(complete), keep, superseded) == pruned


# ---------------------------------------------------------------- manifests and resume against a store


def save(sync: CheckpointSync, run_dir: Path, step: int) -> None:
    folder = run_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(bytes([step % 256]) * 100)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    args = SimpleNamespace(output_dir=str(run_dir))
    sync.on_save(args, SimpleNamespace(global_step=step, is_world_process_zero=True), SimpleNamespace())
    assert sync.wait(timeout=10)


def manifest(out: str, step: int) -> dict[str, Any]:
    return json.loads(Store().read_bytes(join(checkpoint_uri(out, step), MANIFEST)))


def test_a_run_resumes_only_checkpoints_of_its_own_source_and_replaces_the_others(tmp_path, tokenizer):
    out = str(tmp_path / "out")
    lora_16 = checkpoint_source(spec(lora={"r": 16}), tokenizer, "")
    lora_8 = checkpoint_source(spec(lora={"r": 8}), tokenizer, "")
    first = CheckpointSync(Store(), out, keep=3, retry=FAST_RETRY, source=lora_16)
    for step in (100, 200):
        save(first, tmp_path / "first", step)
    first.close()
    assert manifest(out, 200)[SOURCE] == lora_16  # beside the files, written last with them

    same = fetch_latest_checkpoint(Store(), out, tmp_path / "same", lora_16)
    assert same.checkpoint == tmp_path / "same" / "checkpoint-200" and same.mismatched == {}

    changed = fetch_latest_checkpoint(Store(), out, tmp_path / "changed", lora_8)
    assert changed.checkpoint is None and sorted(changed.mismatched) == [100, 200]
    assert changed.fresh_start_reason == (
        f"checkpoint step-200 was made from LoRA r=16 alpha=16 on {MODULES}; "
        f"this run has LoRA r=8 alpha=16 on {MODULES}: starting fresh"
    )
    assert not (tmp_path / "changed").exists()  # nothing of the other run was downloaded

    second = CheckpointSync(Store(), out, keep=1, retry=FAST_RETRY, source=lora_8)
    second.supersede(changed.mismatched)
    save(second, tmp_path / "second", 100)  # the same step number as one of the other run's
    assert complete_steps(Store().list(join(out, "checkpoints"))) == [100]
    assert manifest(out, 100)[SOURCE] == lora_8
    save(second, tmp_path / "second", 150)
    second.close()
    assert complete_steps(Store().list(join(out, "checkpoints"))) == [150]
    assert fetch_latest_checkpoint(Store(), out, tmp_path / "again", lora_8).step == 150


def test_a_crash_before_pruning_leaves_the_new_run_resumable_below_the_old_steps(tmp_path, tokenizer):
    out = str(tmp_path / "out")
    old, new = (checkpoint_source(spec(baseModel=name), tokenizer, "") for name in ("org/old", "org/new"))
    for source, step in ((old, 300), (new, 100)):
        sync = CheckpointSync(Store(), out, keep=5, retry=FAST_RETRY, source=source)
        save(sync, tmp_path / f"run-{step}", step)
        sync.close()
    point = fetch_latest_checkpoint(Store(), out, tmp_path / "resume", new)
    assert point.step == 100 and list(point.mismatched) == [300] and point.fresh_start_reason is None


def test_an_old_checkpoint_without_a_source_starts_fresh_and_says_why(tmp_path, tokenizer):
    out = str(tmp_path / "out")
    sync = CheckpointSync(Store(), out, keep=1, retry=FAST_RETRY)  # as tooltune wrote them before
    save(sync, tmp_path / "run", 40)
    sync.close()
    assert SOURCE not in manifest(out, 40)
    point = fetch_latest_checkpoint(
        Store(), out, tmp_path / "resume", checkpoint_source(spec(), tokenizer, "")
    )
    assert point.checkpoint is None
    assert point.fresh_start_reason.startswith("checkpoint step-40 records nothing of what it was made from")
    assert point.fresh_start_reason.endswith(": starting fresh")
    assert fetch_latest_checkpoint(Store(), out, tmp_path / "unchecked").step == 40  # no source: no check


def test_the_tiny_models_source_follows_its_data(tmp_path):
    """The built-in tiny model's tokenizer is trained on the job's data: other data, other token ids."""
    tiny_spec = spec(baseModel=TINY_MODEL)
    one = tiny.train_tokenizer(["create a task to call the bank"], vocab_size=300)
    other = tiny.train_tokenizer(["list every task due this week"], vocab_size=300)
    assert source_mismatch(checkpoint_source(tiny_spec, one, ""), checkpoint_source(tiny_spec, other, ""))
