"""Limits of the trainer's storage: a dataset server that never answers, an S3 endpoint answering web pages,
a dataset over the size cap. Each ends within a bounded time in a StorageError that names the URI and
says what to do; none hangs or surfaces a raw library exception. The limits are set as the operator sets
them on a trainer pod: through the TOOLTUNE_* variables that StorageLimits reads.
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
from tooltune_api.settings import DATASET_MAX_BYTES_ENV, STORAGE_CONNECT_TIMEOUT_ENV, STORAGE_READ_TIMEOUT_ENV
from tooltune_trainer import storage
from tooltune_trainer.storage import (
    StorageError,
    open_store,
)

pytestmark = pytest.mark.integration

SHORT_TIMEOUT = 1  # seconds, in place of the production timeouts so the test is quick
SLACK = 5.0  # how much longer than the timeout an operation may take before the test calls it a hang
HTML_PAGE = b"<!DOCTYPE html><html><body>Welcome to nginx! Please log in to use this network.</body></html>"


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


def web_page(status: int) -> Callable[[http.server.BaseHTTPRequestHandler], None]:
    """A captive portal or plain web server: every request, whatever it asks, gets an HTML page."""

    def handle(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        handler.send_response(status)
        handler.send_header("Content-Type", "text/html; charset=utf-8")
        handler.send_header("Content-Length", str(len(HTML_PAGE)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(HTML_PAGE)

    return handle


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


@pytest.fixture
def s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATESTTESTTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")


def test_a_dataset_server_that_never_answers_fails_in_bounded_time(
    silent_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STORAGE_READ_TIMEOUT_ENV, str(SHORT_TIMEOUT))
    uri = f"{silent_server}/train.jsonl"
    error, seconds = timed(lambda: open_store().fetch(uri, tmp_path / "train.jsonl"))
    assert seconds < SHORT_TIMEOUT + SLACK
    assert str(error) == f"{uri}: no answer within {SHORT_TIMEOUT} s"
    assert not list(tmp_path.iterdir()), "no partial file is left behind"


@pytest.mark.parametrize("declare", [True, False], ids=["declared", "streamed"])
def test_a_dataset_over_the_size_cap_is_refused_with_the_limit(
    declare: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATASET_MAX_BYTES_ENV, "1000")
    with serve(lambda h: big(h, declare=declare)) as url:
        uri = f"{url}/train.jsonl"
        error, _ = timed(lambda: open_store().fetch(uri, tmp_path / "train.jsonl"))
        assert str(error).startswith(f"{uri}: ") and "the 1000 byte dataset limit" in str(error)
        assert DATASET_MAX_BYTES_ENV in str(error), "the message names the setting that raises the cap"
        assert error.retryable is False  # type: ignore[attr-defined]
    assert not list(tmp_path.iterdir())


def test_an_s3_dataset_over_the_size_cap_is_refused_before_it_is_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_credentials: None
) -> None:
    requests: list[str] = []

    def s3_object(handler: http.server.BaseHTTPRequestHandler) -> None:
        requests.append(handler.command)
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("ETag", '"0123456789abcdef"')
        handler.send_header("Content-Length", "10000")
        handler.end_headers()
        if handler.command == "GET":
            handler.wfile.write(b"x" * 10000)

    monkeypatch.setenv(DATASET_MAX_BYTES_ENV, "1000")
    uri = "s3://bucket/train.jsonl"
    with serve(s3_object) as url:
        error, _ = timed(lambda: open_store(Storage(endpoint=url)).fetch(uri, tmp_path / "train.jsonl"))
    assert str(error) == (
        f"{uri}: 10000 bytes is over the 1000 byte dataset limit; use a smaller dataset, "
        f"or have the operator's {DATASET_MAX_BYTES_ENV} raised"
    )
    assert error.retryable is False  # type: ignore[attr-defined]
    assert requests == ["HEAD"], "refused from the object's size, without downloading it"
    assert not list(tmp_path.iterdir())
    with serve(s3_object) as url:  # checkpoints and models (fetch_many) may be larger than any dataset
        open_store(Storage(endpoint=url)).fetch_many([(uri, tmp_path / "checkpoint.bin")])
    assert (tmp_path / "checkpoint.bin").stat().st_size == 10000


@pytest.mark.parametrize("status", [200, 500])
def test_an_s3_endpoint_answering_web_pages_is_named_and_not_retried(
    status: int, tmp_path: Path, s3_credentials: None
) -> None:
    """A web page where S3 should be, whether it says 200 or 500: listing, downloading and uploading all
    fail at once, naming the endpoint and the setting to check. Left to botocore, a 200 page would read
    as an empty listing or a successful upload, and a 500 page as a passing S3 outage worth retrying."""
    with serve(web_page(status)) as url:
        store = open_store(Storage(endpoint=url))
        expected = (
            f"{url} does not speak S3 (it answered HTTP {status} with an HTML page); check storage.endpoint"
        )
        operations = {
            "s3://bucket/runs/": lambda: store.list("s3://bucket/runs/"),
            "s3://bucket/train.jsonl": lambda: store.fetch(
                "s3://bucket/train.jsonl", tmp_path / "train.jsonl"
            ),
            "s3://bucket/out/final/model.bin": lambda: store.write_bytes(
                "s3://bucket/out/final/model.bin", b"x"
            ),
        }
        for uri, operation in operations.items():
            error, seconds = timed(operation)
            assert str(error) == f"{uri}: {expected}"
            assert error.retryable is False  # type: ignore[attr-defined]
            assert seconds < SLACK
            assert "AKIATESTTESTTEST" not in str(error) and "not-a-real-secret" not in str(error)
    print(f"\nS3 endpoint answering HTTP {status} with a web page → {error}")
    assert not list(tmp_path.iterdir())


def test_an_html_file_stored_in_s3_is_still_an_object(tmp_path: Path, s3_credentials: None) -> None:
    """S3 answers a stored object with that object's own Content-Type and its ETag: an HTML file someone
    stored is data, not a sign of a web server in S3's place."""

    def stored_html(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/html")
        handler.send_header("ETag", '"5d41402abc4b2a76b9719d911017c592"')
        handler.send_header("Content-Length", str(len(HTML_PAGE)))
        handler.end_headers()
        if handler.command == "GET":
            handler.wfile.write(HTML_PAGE)

    with serve(stored_html) as url:
        got = open_store(Storage(endpoint=url)).fetch("s3://bucket/page.html", tmp_path / "page.html")
    assert got.read_bytes() == HTML_PAGE


def test_an_s3_endpoint_that_never_answers_fails_in_bounded_time(
    silent_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_credentials: None
) -> None:
    monkeypatch.setenv(STORAGE_READ_TIMEOUT_ENV, str(SHORT_TIMEOUT))
    monkeypatch.setenv(STORAGE_CONNECT_TIMEOUT_ENV, str(SHORT_TIMEOUT))
    uri = "s3://bucket/train.jsonl"
    store = open_store(Storage(endpoint=silent_server))
    error, seconds = timed(lambda: store.fetch(uri, tmp_path / "train.jsonl"))
    attempts = storage.S3_MAX_ATTEMPTS
    assert seconds < attempts * (SHORT_TIMEOUT + 1) + SLACK
    assert str(error) == (
        f"{uri}: cannot reach {silent_server} (ReadTimeoutError); "
        "check storage.endpoint and that the server is up"
    )
