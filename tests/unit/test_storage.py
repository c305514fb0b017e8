"""Storage and checkpoints without a server: URIs, the local store, ConfigMap and HTTP reads, manifests,
retention, retries and the choice of checkpoint to resume from."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from tooltune_api import __version__
from tooltune_api.models import TrainerContract
from tooltune_api.settings import DATASET_MAX_BYTES_ENV, STORAGE_CONNECT_TIMEOUT_ENV, STORAGE_READ_TIMEOUT_ENV
from tooltune_trainer import storage
from tooltune_trainer.checkpoints import (
    MANIFEST,
    UPLOAD_NICENESS,
    CheckpointSync,
    RetryPolicy,
    build_manifest,
    checkpoint_steps,
    checkpoint_uri,
    complete_steps,
    fetch_latest_checkpoint,
    lineage_manifest,
    manifest_problems,
    sha256_file,
    steps_to_prune,
    write_lineage,
)
from tooltune_trainer.storage import (
    StorageError,
    StorageLimits,
    Store,
    join,
    local_path,
    open_store,
)

FAST_RETRY = RetryPolicy(attempts=3, first_delay_seconds=0.01, max_delay_seconds=0.02)


# ---------------------------------------------------------------- URIs and the local store


def test_join_and_local_path() -> None:
    assert join("s3://b/out/", "final") == "s3://b/out/final"
    assert join("s3://b/out", "/checkpoints/", "step-3") == "s3://b/out/checkpoints/step-3"
    assert join("/tmp/out/", "a/b") == "/tmp/out/a/b"
    assert local_path("file:///data/x.jsonl") == Path("/data/x.jsonl")
    assert local_path("relative/x.jsonl") == Path("relative/x.jsonl")
    assert storage.scheme("s3://b/k") == "s3"
    assert storage.scheme("/abs/path") == "file"
    assert storage.scheme("configmap://cm/key") == "configmap"


def test_local_round_trip(tmp_path: Path) -> None:
    store = open_store()
    src = tmp_path / "src"
    (src / "nested").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "nested" / "b.bin").write_bytes(b"\x00\x01")
    out = f"file://{tmp_path}/out"
    store.upload_dir(src, out)
    assert store.list(out) == ["a.txt", "nested/b.bin"]
    assert store.read_bytes(join(out, "nested/b.bin")) == b"\x00\x01"
    store.write_bytes(join(out, "c.txt"), b"gamma")
    back = store.fetch_dir(out, tmp_path / "back")
    assert sorted(p.name for p in back.rglob("*") if p.is_file()) == ["a.txt", "b.bin", "c.txt"]
    store.delete(join(out, "c.txt"))
    store.delete(join(out, "c.txt"))  # already gone: not an error
    assert store.list(out) == ["a.txt", "nested/b.bin"]
    store.delete_prefix(out)
    assert store.list(out) == []


def test_local_missing_file_names_the_uri(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"/nope\.jsonl: no such file") as missing:
        Store().fetch(str(tmp_path / "nope.jsonl"), tmp_path / "x")
    assert not missing.value.retryable


def test_unknown_scheme_and_read_only_schemes(tmp_path: Path) -> None:
    store = Store()
    with pytest.raises(StorageError, match=r"gs://b/x: unsupported scheme gs://"):
        store.fetch("gs://b/x", tmp_path / "x")
    (tmp_path / "f").write_text("x")
    with pytest.raises(StorageError, match=r"https://example\.com/x: cannot write here"):
        store.upload_file(tmp_path / "f", "https://example.com/x")
    with pytest.raises(StorageError, match=r"configmap://cm/k: cannot list"):
        store.list("configmap://cm/k")


def test_s3_uri_without_bucket_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"needs a bucket: s3://<bucket>/<key>"):
        Store().list("s3:///just-a-key")


# ---------------------------------------------------------------- ConfigMap keys


def test_configmap_key_read_from_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(storage.CONFIGMAP_DIR_ENV, str(tmp_path))
    (tmp_path / "task-data").mkdir()
    (tmp_path / "task-data" / "train.jsonl").write_text('{"messages": []}\n')
    got = Store().fetch("configmap://task-data/train.jsonl", tmp_path / "local" / "train.jsonl")
    assert got.read_text() == '{"messages": []}\n'


def test_configmap_default_mount_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(storage.CONFIGMAP_DIR_ENV, raising=False)
    assert storage.configmap_file("configmap://cm/key") == Path("/etc/tooltune/data/cm/key")
    monkeypatch.setenv(storage.CONFIGMAP_DIR_ENV, str(tmp_path))
    with pytest.raises(StorageError, match=r"check that ConfigMap cm exists"):
        Store().fetch("configmap://cm/missing", tmp_path / "x")
    with pytest.raises(StorageError, match=r"configmap://<name>/<key>"):
        Store().fetch("configmap://only-a-name", tmp_path / "x")


# ---------------------------------------------------------------- http(s)


@pytest.fixture
def web_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_fetch_404_and_size_cap(web_root: tuple[Path, str], tmp_path: Path) -> None:
    root, base = web_root
    (root / "train.jsonl").write_bytes(b"x" * 5000)
    store = Store(limits=StorageLimits())
    assert store.fetch(f"{base}/train.jsonl", tmp_path / "got").read_bytes() == b"x" * 5000
    with pytest.raises(StorageError, match=r"/missing\.jsonl: HTTP 404") as missing:
        store.fetch(f"{base}/missing.jsonl", tmp_path / "missing")
    assert not missing.value.retryable
    capped = Store(limits=StorageLimits(dataset_max_bytes=4096))
    with pytest.raises(StorageError, match=r"5000 bytes is over the 4096 byte dataset limit"):
        capped.fetch(f"{base}/train.jsonl", tmp_path / "big")
    assert not (tmp_path / "big").exists()


def test_storage_limits_default_and_come_from_the_environment() -> None:
    assert StorageLimits.from_env({}) == StorageLimits(
        connect_timeout_seconds=10, read_timeout_seconds=60, dataset_max_bytes=4 * 1024**3
    )
    env = {
        STORAGE_CONNECT_TIMEOUT_ENV: "2.5",
        STORAGE_READ_TIMEOUT_ENV: " 30 ",
        DATASET_MAX_BYTES_ENV: "1048576",
    }
    assert StorageLimits.from_env(env) == StorageLimits(2.5, 30.0, 1048576)
    assert StorageLimits.from_env({STORAGE_READ_TIMEOUT_ENV: ""}) == StorageLimits()  # empty is unset


@pytest.mark.parametrize(
    ("name", "value", "what"),
    [
        (STORAGE_READ_TIMEOUT_ENV, "sixty", "number of seconds"),
        (STORAGE_CONNECT_TIMEOUT_ENV, "0", "number of seconds"),
        (STORAGE_CONNECT_TIMEOUT_ENV, "inf", "number of seconds"),
        (DATASET_MAX_BYTES_ENV, "4GiB", "whole number of bytes"),
        (DATASET_MAX_BYTES_ENV, "-1", "whole number of bytes"),
        (DATASET_MAX_BYTES_ENV, "1.5", "whole number of bytes"),
    ],
)
def test_a_bad_storage_limit_names_the_variable(name: str, value: str, what: str) -> None:
    with pytest.raises(StorageError) as bad:
        StorageLimits.from_env({name: value})
    assert str(bad.value).startswith(f"{name}={value!r}: must be a positive {what}; unset it for the default")
    assert not bad.value.retryable


def test_a_store_reads_its_limits_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATASET_MAX_BYTES_ENV, "123")
    assert open_store().limits.dataset_max_bytes == 123
    monkeypatch.setenv(DATASET_MAX_BYTES_ENV, "lots")
    with pytest.raises(StorageError, match=DATASET_MAX_BYTES_ENV):
        open_store()


def test_the_dataset_cap_bounds_downloads_not_local_files(web_root: tuple[Path, str], tmp_path: Path) -> None:
    """A local dataset is already on the pod's disk; https serves datasets only, so every https fetch is
    capped (S3 caps single-file fetches only: see tests/integration/test_limits.py)."""
    root, base = web_root
    (root / "train.jsonl").write_bytes(b"x" * 5000)
    local = tmp_path / "train.jsonl"
    local.write_bytes(b"x" * 5000)
    store = Store(limits=StorageLimits(dataset_max_bytes=4096))
    assert store.fetch(str(local), tmp_path / "copy.jsonl").stat().st_size == 5000
    with pytest.raises(StorageError, match="byte dataset limit"):
        store.fetch_many([(f"{base}/train.jsonl", tmp_path / "big")])


def test_http_unreachable_names_the_uri(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"http://127\.0\.0\.1:9/x: cannot connect") as unreachable:
        Store().fetch("http://127.0.0.1:9/x", tmp_path / "x")
    assert unreachable.value.retryable


# ---------------------------------------------------------------- manifests, retention, resume choice


def test_steps_from_listing() -> None:
    names = ["step-10/a", "step-10/manifest.json", "step-20/a", "step-5/manifest.json", "step-x/a", "junk"]
    assert checkpoint_steps(names) == {10: True, 20: False, 5: True}
    assert complete_steps(names) == [10, 5]


@pytest.mark.parametrize(
    ("present", "keep", "pruned"),
    [
        ({1: True, 2: True, 3: True, 4: True}, 2, [1, 2]),
        ({1: True, 2: True}, 3, []),
        ({1: True, 2: False, 3: True, 4: False}, 1, [1, 2]),  # incomplete 4 may still be uploading
        ({1: False, 2: False}, 1, []),  # nothing complete: keep everything
        ({7: True, 9: True}, 0, [7]),  # the newest complete one survives any keep
    ],
)
def test_retention(present: dict[int, bool], keep: int, pruned: list[int]) -> None:
    names = [f"step-{s}/{MANIFEST if done else 'optimizer.pt'}" for s, done in present.items()]
    names += [f"step-{s}/adapter.safetensors" for s in present]
    assert steps_to_prune(names, keep) == pruned


def test_manifest_detects_changed_missing_and_resized_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "optimizer.pt").write_bytes(b"o" * 100)
    (tmp_path / "sub" / "state.json").write_text("{}")
    manifest = build_manifest(12, tmp_path)
    assert manifest["step"] == 12
    assert [e["path"] for e in manifest["files"]] == ["optimizer.pt", "sub/state.json"]
    assert manifest["files"][0]["sha256"] == sha256_file(tmp_path / "optimizer.pt")
    assert manifest_problems(manifest, tmp_path) == []
    (tmp_path / "optimizer.pt").write_bytes(b"O" + b"o" * 99)
    assert manifest_problems(manifest, tmp_path) == ["optimizer.pt: sha256 differs from the manifest"]
    (tmp_path / "optimizer.pt").write_bytes(b"o")
    assert manifest_problems(manifest, tmp_path) == ["optimizer.pt: 1 bytes, the manifest says 100"]
    (tmp_path / "sub" / "state.json").unlink()
    assert "sub/state.json: missing" in manifest_problems(manifest, tmp_path)
    assert manifest_problems({"files": []}, tmp_path) == ["the manifest lists no files"]


def test_checkpoint_may_not_shadow_the_manifest(tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_text("{}")
    with pytest.raises(StorageError, match=r"may not contain a file named manifest\.json"):
        build_manifest(1, tmp_path)


def test_retry_backoff_doubles_up_to_the_cap() -> None:
    policy = RetryPolicy(attempts=6, first_delay_seconds=1, max_delay_seconds=5)
    assert [policy.delay(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]


# ---------------------------------------------------------------- CheckpointSync on a local output


def fake_checkpoint(output_dir: Path, step: int, size: int = 1000) -> None:
    folder = output_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(bytes([step % 256]) * size)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))


def save(sync: CheckpointSync, output_dir: Path, step: int) -> None:
    fake_checkpoint(output_dir, step)
    args = SimpleNamespace(output_dir=str(output_dir))
    sync.on_save(args, SimpleNamespace(global_step=step, is_world_process_zero=True), SimpleNamespace())


class RecordingStore(Store):
    """A local store that records writes and can fail the first N of them."""

    def __init__(self, failures: int = 0):
        super().__init__()
        self.failures = failures
        self.writes: list[str] = []

    def upload_many(self, items):
        items = list(items)
        if self.failures:
            self.failures -= 1
            raise StorageError(f"{items[0][1]}: cannot reach the server (test)")
        self.writes += [uri for _, uri in items]
        super().upload_many(items)


def test_sync_uploads_manifest_last_prunes_and_reports(tmp_path: Path) -> None:
    store, out = RecordingStore(), str(tmp_path / "bucket" / "job")
    reports: list[tuple[int, str, int]] = []
    sync = CheckpointSync(store, out, keep=2, on_complete=lambda *r: reports.append(r), retry=FAST_RETRY)
    for step in (10, 20, 30):
        save(sync, tmp_path / "run", step)
        assert sync.wait(timeout=10)
    sync.close()
    step_30 = [w for w in store.writes if "/step-30/" in w]
    assert step_30[-1].endswith("/step-30/manifest.json")
    assert len(step_30) == 3
    assert complete_steps(store.list(join(out, "checkpoints"))) == [30, 20]
    assert reports == [
        (10, checkpoint_uri(out, 10), 1),
        (20, checkpoint_uri(out, 20), 2),
        (30, checkpoint_uri(out, 30), 2),
    ]
    assert not list((tmp_path / "run" / ".tooltune-uploads").iterdir())  # staging cleaned up


def test_sync_survives_the_trainer_deleting_its_local_checkpoint(tmp_path: Path) -> None:
    import shutil

    out = str(tmp_path / "out")
    sync = CheckpointSync(RecordingStore(failures=1), out, keep=3, retry=FAST_RETRY)
    save(sync, tmp_path / "run", 5)
    shutil.rmtree(tmp_path / "run" / "checkpoint-5")  # save_total_limit rotation
    assert sync.wait(timeout=10)
    got = fetch_latest_checkpoint(Store(), out, tmp_path / "resume").checkpoint
    assert got == tmp_path / "resume" / "checkpoint-5"
    assert json.loads((got / "trainer_state.json").read_text()) == {"global_step": 5}


def test_a_resume_never_takes_a_checkpoint_another_job_wrote(tmp_path: Path) -> None:
    out = str(tmp_path / "shared-output")
    mine = {"namespace": "ml", "name": "tools"}
    other = {"namespace": "ml", "name": "tools-copy"}
    for step, job in ((5, mine), (9, other)):
        sync = CheckpointSync(Store(), out, keep=3, retry=FAST_RETRY, job=job)
        save(sync, tmp_path / f"run-{step}", step)
        assert sync.wait(timeout=10)
        sync.close()
    manifest = json.loads(Store().read_bytes(join(checkpoint_uri(out, 9), "manifest.json")))
    assert manifest["job"] == other
    resumed = fetch_latest_checkpoint(Store(), out, tmp_path / "resume", job=mine)
    assert resumed.checkpoint == tmp_path / "resume" / "checkpoint-5"
    theirs = fetch_latest_checkpoint(Store(), out, tmp_path / "other", job=other)
    assert theirs.checkpoint == tmp_path / "other" / "checkpoint-9"
    stranger = {"namespace": "other-team", "name": "tools"}  # the same name in another namespace
    assert fetch_latest_checkpoint(Store(), out, tmp_path / "again", job=stranger).checkpoint is None


def test_sync_retries_then_gives_up_without_touching_the_newest_complete(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, out = RecordingStore(), str(tmp_path / "out")
    sync = CheckpointSync(store, out, keep=1, retry=FAST_RETRY)
    save(sync, tmp_path / "run", 1)
    assert sync.wait(timeout=10)
    store.failures = FAST_RETRY.attempts  # every attempt at step 2 fails
    save(sync, tmp_path / "run", 2)
    assert sync.wait(timeout=10)
    assert sync.completed == [1]
    assert sync.failures and sync.failures[0].startswith("step 2:")
    assert "attempt 1 of 3" in caplog.text
    assert complete_steps(store.list(join(out, "checkpoints"))) == [1]
    assert fetch_latest_checkpoint(store, out, tmp_path / "resume").step == 1


def test_upload_thread_yields_the_cpu_to_training(tmp_path: Path) -> None:
    import os

    sync = CheckpointSync(Store(), str(tmp_path / "out"), keep=1, retry=FAST_RETRY)
    save(sync, tmp_path / "run", 1)
    assert sync.wait(timeout=10) and sync._thread is not None and sync._thread.native_id is not None
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, sync._thread.native_id) == min(mine + UPLOAD_NICENESS, 19)
    sync.close()


def test_sync_does_not_retry_what_cannot_succeed(tmp_path: Path) -> None:
    calls = []

    class ReadOnly(Store):
        def upload_many(self, items):
            calls.append(items)
            raise StorageError("https://x/y: cannot write here", retryable=False)

    sync = CheckpointSync(ReadOnly(), str(tmp_path / "out"), keep=1, retry=FAST_RETRY)
    save(sync, tmp_path / "run", 1)
    assert sync.wait(timeout=10)
    assert len(calls) == 1 and sync.failures == ["step 1: https://x/y: cannot write here"]


def test_a_checkpoint_that_cannot_be_staged_does_not_stop_training(tmp_path: Path) -> None:
    sync = CheckpointSync(Store(), str(tmp_path / "out"), keep=1, retry=FAST_RETRY)
    args = SimpleNamespace(output_dir=str(tmp_path / "run"))
    sync.on_save(args, SimpleNamespace(global_step=7, is_world_process_zero=True), SimpleNamespace())
    assert sync.wait(timeout=1)
    assert sync.failures == [f"step 7: cannot stage {tmp_path}/run/checkpoint-7 (No such file or directory)"]


def test_sync_retry_succeeds_after_transient_failures(tmp_path: Path) -> None:
    store, out = RecordingStore(failures=2), str(tmp_path / "out")
    sync = CheckpointSync(store, out, keep=1, retry=FAST_RETRY)
    save(sync, tmp_path / "run", 3)
    assert sync.wait(timeout=10)
    assert sync.completed == [3] and sync.failures == []


def test_a_newer_checkpoint_supersedes_queued_older_ones(tmp_path: Path) -> None:
    uploading, release = threading.Event(), threading.Event()

    class SlowStore(Store):
        def upload_many(self, items):
            uploading.set()
            release.wait(10)
            super().upload_many(items)

    out = str(tmp_path / "out")
    sync = CheckpointSync(SlowStore(), out, keep=5, retry=FAST_RETRY)
    save(sync, tmp_path / "run", 1)
    assert uploading.wait(10)
    for step in (2, 3):  # queue up while 1 is still uploading
        save(sync, tmp_path / "run", step)
    release.set()
    assert sync.wait(timeout=10)
    assert sync.completed == [1, 3]
    assert complete_steps(Store().list(join(out, "checkpoints"))) == [3, 1]


def test_resume_takes_the_newest_complete_and_verified_checkpoint(tmp_path: Path) -> None:
    store, out = Store(), str(tmp_path / "out")
    sync = CheckpointSync(store, out, keep=5, retry=FAST_RETRY)
    for step in (1, 2, 3):
        save(sync, tmp_path / "run", step)
        assert sync.wait(timeout=10)
    # step 4: files without a manifest (a pod killed mid-upload); step 3: a file changed after upload
    store.write_bytes(join(checkpoint_uri(out, 4), "adapter_model.safetensors"), b"partial")
    store.write_bytes(join(checkpoint_uri(out, 3), "adapter_model.safetensors"), b"corrupt")
    got = fetch_latest_checkpoint(store, out, tmp_path / "resume").checkpoint
    assert got == tmp_path / "resume" / "checkpoint-2"
    assert not (tmp_path / "resume" / "checkpoint-3").exists()


def test_resume_fails_rather_than_start_over_when_the_store_is_down(tmp_path: Path) -> None:
    store, out = Store(), str(tmp_path / "out")
    sync = CheckpointSync(store, out, keep=1, retry=FAST_RETRY)
    save(sync, tmp_path / "run", 1)
    assert sync.wait(timeout=10)

    class Down(Store):
        def fetch_many(self, items):
            raise StorageError("s3://b/out: cannot reach http://s3:8333", retryable=True)

    with pytest.raises(StorageError, match="cannot reach"):
        fetch_latest_checkpoint(Down(), out, tmp_path / "resume")


def test_resume_with_nothing_uploaded(tmp_path: Path) -> None:
    assert fetch_latest_checkpoint(Store(), str(tmp_path / "never"), tmp_path / "resume").checkpoint is None


# ---------------------------------------------------------------- lineage


def contract(output: str) -> TrainerContract:
    return TrainerContract.model_validate(
        {
            "job": {"namespace": "ml", "name": "task-api-tools", "uid": "u-1", "attempt": 2},
            "spec": {
                "baseModel": "tooltune/tiny-llama",
                "dataset": {"train": "s3://datasets/train.jsonl"},
                "output": {"uri": output},
                "hyperparameters": {"epochs": 2, "learningRate": 0.001},
            },
            "image": "ghcr.io/tooltune/trainer:0.1.0",
        }
    )


def test_lineage_names_everything_that_made_the_model(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": []}\n')
    job = contract(str(tmp_path / "out"))
    doc = lineage_manifest(job, {"s3://datasets/train.jsonl": data}, {"eval_loss": 0.5})
    assert doc["baseModel"] == "tooltune/tiny-llama"
    assert doc["datasets"] == [{"uri": "s3://datasets/train.jsonl", "sha256": sha256_file(data), "bytes": 17}]
    assert doc["hyperparameters"]["learningRate"] == 0.001
    assert doc["hyperparameters"]["epochs"] == 2
    assert doc["tooltuneVersion"] == __version__
    assert doc["image"] == "ghcr.io/tooltune/trainer:0.1.0"
    assert doc["job"]["attempt"] == 2
    assert doc["metrics"] == {"eval_loss": 0.5}
    uri = write_lineage(Store(), job, {"s3://datasets/train.jsonl": data}, {"eval_loss": 0.5})
    assert uri == f"{tmp_path}/out/final/lineage.json"
    assert json.loads(Path(uri).read_text())["datasets"][0]["sha256"] == sha256_file(data)
    assert doc["toolCallFormat"] is None and doc["cost"] is None  # a CPU run: no GPU-hours to price


def test_lineage_keeps_the_runs_format_and_gpu_cost_for_tooltune_compare(tmp_path: Path) -> None:
    from tooltune_api.models import PriceTable
    from tooltune_trainer.compare import read_run, run_row
    from tooltune_trainer.telemetry import gpu_cost

    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": []}\n')
    job = contract(str(tmp_path / "out"))
    cost = gpu_cost(gpus=2, price=2.5, elapsed_seconds=5400, eta=0)  # 1.5 h on 2 GPUs at $2.50
    write_lineage(Store(), job, {"d": data}, {"steps": 10}, "tool_tags", cost)
    doc = json.loads((tmp_path / "out" / "final" / "lineage.json").read_text())
    assert doc["toolCallFormat"] == "tool_tags"
    assert doc["cost"]["gpuHours"] == 3.0 and doc["cost"]["spentUsd"] == 7.5
    assert run_row(read_run(str(tmp_path / "out"), Store()), PriceTable())["costUsd"] == 7.5
