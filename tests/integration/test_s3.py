"""Storage and checkpoints against a real S3 server (SeaweedFS): round trips, checkpoint upload and resume,
retention, an outage during upload, wrong credentials, and a real training run killed and resumed.

Also a script: `python tests/integration/test_s3.py <output-uri> <workdir> <pause-at-step>` trains the tiny
model with checkpoints to <output-uri> and stops (sleeps) after <pause-at-step>, to be killed there.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tooltune_api.models import Storage
from tooltune_trainer.checkpoints import (
    MANIFEST,
    CheckpointSync,
    RetryPolicy,
    checkpoint_uri,
    complete_steps,
    fetch_latest_checkpoint,
)
from tooltune_trainer.storage import StorageError, join, open_store

REPO = Path(__file__).resolve().parents[2]
QUICK_RETRY = RetryPolicy(attempts=8, first_delay_seconds=0.5, max_delay_seconds=2)
MIB = 1024**2

pytestmark = pytest.mark.integration


def make_checkpoint(folder: Path, step: int, big_bytes: int = 1000) -> Path:
    """Files shaped like a trainer checkpoint (contents differ per step)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_model.safetensors").write_bytes(os.urandom(big_bytes))
    (folder / "optimizer.pt").write_bytes(os.urandom(2000))
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def save(sync: CheckpointSync, run_dir: Path, step: int, big_bytes: int = 1000) -> float:
    """Hand a checkpoint to the sync as the trainer does; return how long the trainer was held up."""
    from types import SimpleNamespace

    make_checkpoint(run_dir / f"checkpoint-{step}", step, big_bytes)
    started = time.perf_counter()
    sync.on_save(
        SimpleNamespace(output_dir=str(run_dir)),
        SimpleNamespace(global_step=step, is_world_process_zero=True),
        SimpleNamespace(),
    )
    return time.perf_counter() - started


# ---------------------------------------------------------------- the store


def test_round_trips(s3_bucket: str, s3_settings: Storage, tmp_path: Path) -> None:
    store = open_store(s3_settings)
    src = tmp_path / "src"
    (src / "tokenizer").mkdir(parents=True)
    (src / "adapter.safetensors").write_bytes(os.urandom(9 * MIB))  # above the multipart threshold
    (src / "tokenizer" / "chat_template.jinja").write_text("{{ messages }}")
    out = f"s3://{s3_bucket}/jobs/a/final/"
    store.upload_dir(src, out)
    assert store.list(out) == ["adapter.safetensors", "tokenizer/chat_template.jinja"]
    back = store.fetch_dir(out, tmp_path / "back")
    assert (back / "adapter.safetensors").read_bytes() == (src / "adapter.safetensors").read_bytes()
    assert store.read_bytes(join(out, "tokenizer/chat_template.jinja")) == b"{{ messages }}"
    store.write_bytes(f"s3://{s3_bucket}/jobs/a/final-notes.txt", b"x")
    assert store.list(f"s3://{s3_bucket}/jobs/a/final") == store.list(out)  # a prefix is a directory
    store.delete_prefix(out)
    assert store.list(out) == []
    assert store.list(f"s3://{s3_bucket}/jobs/a") == ["final-notes.txt"]


def test_missing_object_and_bucket_are_named(s3_bucket: str, s3_settings: Storage, tmp_path: Path) -> None:
    store = open_store(s3_settings)
    with pytest.raises(StorageError, match=rf"^s3://{s3_bucket}/nope\.jsonl: no such object$"):
        store.fetch(f"s3://{s3_bucket}/nope.jsonl", tmp_path / "x")
    with pytest.raises(
        StorageError, match=r"bucket no-such-bucket-tt does not exist; create it or fix the URI"
    ):
        store.write_bytes("s3://no-such-bucket-tt/out/x", b"1")
    with pytest.raises(StorageError, match=r"bucket no-such-bucket-tt does not exist"):
        store.fetch("s3://no-such-bucket-tt/train.jsonl", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_unreachable_endpoint_is_named(s3_env: dict[str, str], tmp_path: Path) -> None:
    from tests.fixtures.s3 import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    store = open_store(Storage(endpoint=endpoint))
    with pytest.raises(
        StorageError, match=rf"s3://b/x: cannot reach {endpoint} .*check storage\.endpoint"
    ) as down:
        store.fetch("s3://b/x", tmp_path / "x")
    assert down.value.retryable


# ---------------------------------------------------------------- checkpoints


def test_checkpoints_upload_resume_and_retention(
    s3_bucket: str, s3_settings: Storage, tmp_path: Path
) -> None:
    store, out = open_store(s3_settings), f"s3://{s3_bucket}/jobs/b"
    reports: list[tuple[int, str, int]] = []
    sync = CheckpointSync(store, out, keep=2, on_complete=lambda *r: reports.append(r), retry=QUICK_RETRY)
    for step in (10, 20, 30):
        save(sync, tmp_path / "run", step, big_bytes=MIB)
        assert sync.wait(timeout=60)
    assert sync.failures == []
    names = store.list(join(out, "checkpoints"))
    assert complete_steps(names) == [30, 20]
    assert sorted(n.split("/", 1)[1] for n in names if n.startswith("step-30/")) == [
        "adapter_model.safetensors", MANIFEST, "optimizer.pt", "trainer_state.json"
    ]  # fmt: skip
    manifest = json.loads(store.read_bytes(join(checkpoint_uri(out, 30), MANIFEST)))
    assert manifest["step"] == 30 and len(manifest["files"]) == 3
    assert reports[-1] == (30, f"s3://{s3_bucket}/jobs/b/checkpoints/step-30", 2)

    got = fetch_latest_checkpoint(store, out, tmp_path / "resume").checkpoint
    assert got == tmp_path / "resume" / "checkpoint-30"
    assert (got / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "run" / "checkpoint-30" / "adapter_model.safetensors"
    ).read_bytes()


def test_incomplete_and_corrupt_checkpoints_are_ignored(
    s3_bucket: str, s3_settings: Storage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, out = open_store(s3_settings), f"s3://{s3_bucket}/jobs/c"
    sync = CheckpointSync(store, out, keep=5, retry=QUICK_RETRY)
    for step in (1, 2):
        save(sync, tmp_path / "run", step)
        assert sync.wait(timeout=60)
    # step 3: every file up but no manifest, as when the pod dies before the last write
    store.upload_dir(make_checkpoint(tmp_path / "partial", 3), checkpoint_uri(out, 3))
    assert fetch_latest_checkpoint(store, out, tmp_path / "r1").checkpoint == tmp_path / "r1" / "checkpoint-2"
    # step 2: complete, then one byte of it changes
    store.write_bytes(join(checkpoint_uri(out, 2), "optimizer.pt"), os.urandom(2000))
    assert fetch_latest_checkpoint(store, out, tmp_path / "r2").checkpoint == tmp_path / "r2" / "checkpoint-1"
    assert "step-2 skipped: optimizer.pt: sha256 differs from the manifest" in caplog.text
    # a later complete checkpoint prunes the stale incomplete one below it
    save(sync, tmp_path / "run", 4)
    assert sync.wait(timeout=60)
    assert 3 not in {int(n.split("/")[0].removeprefix("step-")) for n in store.list(join(out, "checkpoints"))}


def test_outage_during_upload_is_retried_and_corrupts_nothing(
    s3_env: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.fixtures.s3 import S3Server

    server = S3Server(data_dir=tmp_path / "server").start()
    try:
        bucket = server.create_bucket()
        store, out = open_store(server.settings()), f"s3://{bucket}/jobs/d"
        sync = CheckpointSync(store, out, keep=1, retry=QUICK_RETRY)
        save(sync, tmp_path / "run", 100)
        assert sync.wait(timeout=60)

        held_up = save(sync, tmp_path / "run", 200, big_bytes=48 * MIB)
        server.stop(crash=True)  # mid-upload
        assert held_up < 1.0, "training must wait only for the local save"
        time.sleep(2)
        assert sync.completed == [100]  # nothing could have completed while the server was down
        with pytest.raises(StorageError, match="cannot reach") as down:  # a pod starting now fails, to retry
            fetch_latest_checkpoint(store, out, tmp_path / "too-early")
        assert down.value.retryable
        server.start()
        assert sync.wait(timeout=120)
    finally:
        server.stop()
        server.start()  # once more, to read back what survived a clean restart
    try:
        assert sync.failures == []
        assert sync.completed == [100, 200]
        assert "checkpoint step 200 upload failed (attempt 1 of 8)" in caplog.text
        got = fetch_latest_checkpoint(store, out, tmp_path / "resume").checkpoint
        assert got == tmp_path / "resume" / "checkpoint-200"
        assert complete_steps(store.list(join(out, "checkpoints"))) == [200]  # keep=1 pruned step 100
    finally:
        server.stop()


def test_wrong_credentials_give_a_clear_message_without_the_secret(
    s3_auth_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    access_key, secret_key = s3_auth_server.any_identity()
    bucket = s3_auth_server.create_bucket()
    settings = s3_auth_server.settings(credentials_secret="s3-credentials")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
    open_store(settings).write_bytes(f"s3://{bucket}/ok", b"the right key works")

    wrong_secret = "wrong-" + secret_key[::-1]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
    store, out = open_store(settings), f"s3://{bucket}/jobs/e"
    with pytest.raises(StorageError) as denied:
        store.write_bytes(join(out, "x"), b"1")
    message = str(denied.value)
    assert not denied.value.retryable
    assert message == f"{out}/x: access denied (check the credentials in Secret s3-credentials)"
    with pytest.raises(
        StorageError, match=r"access denied \(check the credentials in Secret s3-credentials\)"
    ):
        store.fetch(f"s3://{bucket}/ok", tmp_path / "ok")

    sync = CheckpointSync(store, out, keep=1, retry=RetryPolicy(attempts=2, first_delay_seconds=0.05))
    save(sync, tmp_path / "run", 1)
    assert sync.wait(timeout=60)
    assert sync.failures == [f"step 1: {out}/checkpoints/step-1: access denied (check the credentials in "
                             "Secret s3-credentials)"]  # fmt: skip
    for text in (message, *sync.failures, caplog.text):
        assert wrong_secret not in text and secret_key not in text and access_key not in text


# ---------------------------------------------------------------- a real training run, killed and resumed

TINY_STEPS = 20  # 16 batches per epoch: the run crosses an epoch boundary
EVERY_STEPS = 4
PAUSE_AT_STEP = 10
PAUSED = "paused"  # file the first attempt writes when it waits to be killed


def tiny_training(
    workdir: Path, output_uri: str, settings: Storage, pause_at_step: int = 0
) -> dict[int, Any]:
    """Train a tiny random Llama for TINY_STEPS with checkpoints to output_uri, resuming from the newest
    complete one there. Returns {step: (loss, learning_rate)} of the steps this process trained."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    rows = torch.randint(0, 64, (64, 16), generator=torch.Generator().manual_seed(1))
    data = [{"input_ids": row, "labels": row} for row in rows]
    args = TrainingArguments(
        output_dir=str(workdir / "run"), max_steps=TINY_STEPS, per_device_train_batch_size=4,
        learning_rate=3e-3, lr_scheduler_type="cosine", warmup_steps=2, logging_steps=1,
        save_strategy="steps", save_steps=EVERY_STEPS, save_total_limit=1, report_to="none",
        use_cpu=True, seed=7, disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    trained: dict[int, Any] = {}

    class Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                trained[state.global_step] = (logs["loss"], logs["learning_rate"])

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == pause_at_step:
                (workdir / PAUSED).touch()
                time.sleep(600)  # the test kills the process here

    store = open_store(settings)
    sync = CheckpointSync(store, output_uri, keep=2, retry=QUICK_RETRY)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[sync, Record()])
    resume = fetch_latest_checkpoint(store, output_uri, workdir / "resume").checkpoint
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    assert sync.close(timeout=120) and not sync.failures
    return trained


@pytest.mark.slow
def test_killed_training_resumes_at_the_same_step_with_the_same_losses(
    s3_bucket: str, s3_server: Any, s3_env: dict[str, str], tmp_path: Path
) -> None:
    settings = s3_server.settings()
    interrupted = f"s3://{s3_bucket}/jobs/interrupted"
    store = open_store(settings)
    env = os.environ | {"PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("api", "trainer-image", "."))}
    args = [sys.executable, __file__, interrupted, str(tmp_path / "attempt1"), s3_server.endpoint]
    log = (tmp_path / "attempt1.log").open("w")
    attempt1 = subprocess.Popen([*args, str(PAUSE_AT_STEP)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        reference = tiny_training(tmp_path / "uninterrupted", f"s3://{s3_bucket}/jobs/reference", settings)
        deadline = time.monotonic() + 120  # step 8's upload may still be on its way when it pauses
        while not (tmp_path / "attempt1" / PAUSED).exists() or complete_steps(
            store.list(join(interrupted, "checkpoints"))
        ) != [8, 4]:
            assert attempt1.poll() is None, (tmp_path / "attempt1.log").read_text()[-3000:]
            assert time.monotonic() < deadline, store.list(join(interrupted, "checkpoints"))
            time.sleep(0.2)
        attempt1.send_signal(signal.SIGKILL)  # as a lost node or the OOM killer would
    finally:
        attempt1.kill()
        attempt1.wait(30)
        log.close()

    resumed = tiny_training(tmp_path / "attempt2", interrupted, settings)
    assert min(resumed) == 8 + 1, "continues right after the newest complete checkpoint"
    assert PAUSE_AT_STEP - 8 <= EVERY_STEPS, "lost at most one interval"
    assert sorted(resumed) == list(range(9, TINY_STEPS + 1))
    for step, (loss, learning_rate) in resumed.items():
        assert math.isclose(loss, reference[step][0], rel_tol=1e-5), (step, loss, reference[step])
        assert math.isclose(learning_rate, reference[step][1], rel_tol=1e-9)
    kept = complete_steps(store.list(join(interrupted, "checkpoints")))
    assert kept[0] == TINY_STEPS and len(kept) == 2  # an older one may have been superseded while queued


if __name__ == "__main__":
    output, workdir, endpoint, pause = sys.argv[1:5]
    tiny_training(Path(workdir), output, Storage(endpoint=endpoint), int(pause))


# ---------------------------------------------------------------- tooltune compare on output URIs


def test_compare_reads_runs_from_the_bucket(s3_bucket: str, s3_settings: Storage, tmp_path: Path) -> None:
    from tooltune_api.models import PriceTable
    from tooltune_trainer.compare import CompareError, read_run, run_row

    store = open_store(s3_settings)
    final = tmp_path / "final"
    final.mkdir()
    (final / "lineage.json").write_text('{"backend": "unsloth", "baseModel": "m", "metrics": {"steps": 12}}')
    (final / "evaluation.json").write_text('{"metrics": {"toolNameAccuracy": 0.5}}')
    store.upload_dir(final, f"s3://{s3_bucket}/runs/a/final/")

    row = run_row(read_run(f"s3://{s3_bucket}/runs/a/", store), PriceTable())

    assert (row["baseModel"], row["steps"], row["scores"]) == ("m", 12, {"toolNameAccuracy": 0.5})
    with pytest.raises(CompareError, match=rf"^s3://{s3_bucket}/runs/none/: no finished run here"):
        read_run(f"s3://{s3_bucket}/runs/none/", store)
    with pytest.raises(CompareError, match=r"bucket no-such-bucket-tt does not exist"):
        read_run("s3://no-such-bucket-tt/runs/a/", store)
