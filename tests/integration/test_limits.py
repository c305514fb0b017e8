"""Limits of the trainer's storage: a dataset server that never answers, an S3 endpoint answering junk,
a dataset over the size cap. Each ends within a bounded time in a StorageError that names the URI and
says what to do; none hangs or surfaces a raw library exception.
"""

from __future__ import annotations

import contextlib
import http.server
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tooltune_api.models import Storage
from tooltune_trainer import storage
from tooltune_trainer.data import read_jsonl, validate_examples
from tooltune_trainer.storage import StorageError, open_store

pytestmark = pytest.mark.integration

SHORT_TIMEOUT = 1  # seconds, in place of the production timeouts so the test is quick
SLACK = 5.0  # how much longer than the timeout an operation may take before the test calls it a hang


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


@contextlib.contextmanager
def serve(handle: Callable[[http.server.BaseHTTPRequestHandler], None]) -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            handle(self)

        do_HEAD = do_PUT = do_POST = do_GET

        def log_message(self, *_: object) -> None:
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts the connection and the request, then never answers."""
    release = threading.Event()
    with serve(lambda _: release.wait(30)) as url:
        yield url
        release.set()


def junk(handler: http.server.BaseHTTPRequestHandler) -> None:
    body = b"<html><body>Welcome to nginx!</body></html>\x00\xff" * 10
    handler.send_response(200)
    handler.send_header("Content-Type", "text/html")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def big(handler: http.server.BaseHTTPRequestHandler, size: int = 10_000, declare: bool = True) -> None:
    handler.send_response(200)
    if declare:
        handler.send_header("Content-Length", str(size))
    handler.end_headers()
    handler.wfile.write(b'{"messages": []}\n' * (size // 17))


def timed(action: Callable[[], object]) -> tuple[BaseException, float]:
    started = time.monotonic()
    with pytest.raises(StorageError) as raised:
        action()
    return raised.value, time.monotonic() - started


def test_a_dataset_server_that_never_answers_fails_in_bounded_time(
    silent_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "HTTP_TIMEOUT_SECONDS", SHORT_TIMEOUT)
    uri = f"{silent_server}/train.jsonl"
    error, seconds = timed(lambda: open_store().fetch(uri, tmp_path / "train.jsonl"))
    assert seconds < SHORT_TIMEOUT + SLACK
    assert str(error) == f"{uri}: no answer within {SHORT_TIMEOUT} s"
    assert not list(tmp_path.iterdir()), "no partial file is left behind"


@pytest.mark.parametrize("declare", [True, False], ids=["declared", "streamed"])
def test_a_dataset_over_the_size_cap_is_refused_with_the_limit(
    declare: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "HTTP_MAX_BYTES", 1000)
    with serve(lambda h: big(h, declare=declare)) as url:
        uri = f"{url}/train.jsonl"
        error, _ = timed(lambda: open_store().fetch(uri, tmp_path / "train.jsonl"))
        assert str(error).startswith(f"{uri}: ") and "1000 byte limit; put large datasets in S3" in str(error)
        assert error.retryable is False  # type: ignore[attr-defined]
    assert not list(tmp_path.iterdir())


def test_an_s3_endpoint_answering_junk_gives_a_clear_error(tmp_path: Path) -> None:
    """A web page where S3 should be: listing fails naming the URI; a download has no S3 framing to
    check, so the junk reaches the dataset validator, which stops at line 1 with a clear reason."""
    with serve(junk) as url, pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "AKIATESTTESTTEST")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
        store = open_store(Storage(endpoint=url))
        error, seconds = timed(lambda: store.list("s3://bucket/runs/"))
        assert seconds < SLACK
        assert str(error).startswith("s3://bucket/runs/: "), error
        print(f"\njunk S3 answer to a listing → {error}")
        dest = store.fetch("s3://bucket/train.jsonl", tmp_path / "train.jsonl")
    report = validate_examples(read_jsonl(dest))
    assert [p.line for p in report.problems] == [1]
    assert report.problems[0].reason.startswith(("invalid JSON", "contains NUL bytes")), report.problems[0]
    print(f"junk S3 object → train.jsonl:1: {report.problems[0].reason}")


def test_an_s3_endpoint_that_never_answers_fails_in_bounded_time(
    silent_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "S3_READ_TIMEOUT_SECONDS", SHORT_TIMEOUT)
    monkeypatch.setattr(storage, "S3_CONNECT_TIMEOUT_SECONDS", SHORT_TIMEOUT)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATESTTESTTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    uri = "s3://bucket/train.jsonl"
    store = open_store(Storage(endpoint=silent_server))
    error, seconds = timed(lambda: store.fetch(uri, tmp_path / "train.jsonl"))
    attempts = storage.S3_MAX_ATTEMPTS
    assert seconds < attempts * (SHORT_TIMEOUT + 1) + SLACK
    assert str(error) == (
        f"{uri}: cannot reach {silent_server} (ReadTimeoutError); "
        "check storage.endpoint and that the server is up"
    )
