"""A fault-injecting HTTP proxy in front of the Kubernetes emulator, for the operator's robustness tests.

Point a client at ``proxy.url`` instead of the emulator's URL and, at random (seeded) moments, the proxy:

- answers ``500`` before the request reaches the server (nothing happened),
- answers ``500`` after the server applied a write (it happened, the answer was lost),
- answers ``429 Too Many Requests`` (nothing happened),
- answers ``409 AlreadyExists`` to a create the server just applied (a retried create that raced itself),
- ends a watch stream cleanly or cuts its connection mid-stream, after a random time.

Every injected fault is counted in ``proxy.injected`` (a Counter by kind), so tests can show that the
faults did happen. ``proxy.requests`` counts requests by method. ``proxy.refuse`` (method, path → bool),
when set, answers ``500`` before the server to every request it picks, faults enabled or not: what a
client sees of its own crash at that request, or of a server that keeps failing one call.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import aiohttp.web

STARTUP_TIMEOUT = 10.0
WATCH_POLL_SECONDS = 0.2
FORWARDED_REQUEST_HEADERS = ("Accept", "Content-Type", "Authorization", "User-Agent")
WRITES = {"POST", "PUT", "PATCH", "DELETE"}

# Fault kinds, as counted in FaultProxy.injected.
ERROR_BEFORE = "500 before"
ERROR_AFTER = "500 after write"
TOO_MANY = "429"
CONFLICT = "409 on create"
WATCH_END = "watch ended"
WATCH_CUT = "watch cut"


@dataclass(frozen=True)
class FaultRates:
    """Probabilities per request (error kinds are tried in this order) and how long a watch may live."""

    error_before: float = 0.08
    error_after_write: float = 0.08
    too_many: float = 0.06
    conflict_on_create: float = 0.15
    watch_min_seconds: float = 0.2
    watch_max_seconds: float = 2.0
    watch_cut_share: float = 0.5  # of the ended watches, how many are cut (connection dropped mid-stream)


def status_body(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    }


class FaultProxy:
    """Forwards to `upstream` from its own thread and event loop; `start()`, `stop()`, `enabled`."""

    def __init__(self, upstream: str, seed: int, rates: FaultRates = FaultRates()):
        self.upstream = upstream.rstrip("/")
        self.rates = rates
        self.rng = random.Random(seed)
        self.enabled = True
        self.refuse: Callable[[str, str], bool] | None = None
        self.injected: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None

    # ---------------------------------------------------------------- decisions (seeded)

    def _error_for(self, method: str, watch: bool) -> str | None:
        if not self.enabled:
            return None
        roll = self.rng.random()
        rates = self.rates
        if roll < rates.error_before:
            return ERROR_BEFORE
        roll -= rates.error_before
        if roll < rates.too_many:
            return TOO_MANY
        roll -= rates.too_many
        if watch:
            return None
        if method in WRITES and roll < rates.error_after_write:
            return ERROR_AFTER
        roll -= rates.error_after_write
        if method == "POST" and roll < rates.conflict_on_create:
            return CONFLICT
        return None

    # ---------------------------------------------------------------- serving

    async def _handle(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        watch = request.query.get("watch") in {"true", "1"}
        self.requests["WATCH" if watch else request.method] += 1
        fault = self._error_for(request.method, watch)
        if self.refuse is not None and self.refuse(request.method, request.path):
            fault = ERROR_BEFORE
        if fault == ERROR_BEFORE:
            self.injected[fault] += 1
            return self._status(500, "InternalError", "injected: the server failed before acting")
        if fault == TOO_MANY:
            self.injected[fault] += 1
            return self._status(429, "TooManyRequests", "injected: too many requests", retryAfterSeconds=0)
        headers = {k: request.headers[k] for k in FORWARDED_REQUEST_HEADERS if k in request.headers}
        body = await request.read()
        assert self._session is not None
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=body or None, headers=headers
        ) as answer:
            if watch and answer.status == 200:
                return await self._relay_watch(request, answer)
            payload = await answer.read()
            if fault == ERROR_AFTER and answer.status < 300:
                self.injected[fault] += 1
                return self._status(500, "InternalError", "injected: the answer to a write was lost")
            if fault == CONFLICT and answer.status in {200, 201}:
                self.injected[fault] += 1
                name = json.loads(payload).get("metadata", {}).get("name", "")
                return self._status(409, "AlreadyExists", f'injected: "{name}" already exists', name=name)
            return aiohttp.web.Response(
                status=answer.status,
                body=payload,
                content_type=answer.content_type,
            )

    async def _relay_watch(
        self, request: aiohttp.web.Request, answer: aiohttp.ClientResponse
    ) -> aiohttp.web.StreamResponse:
        response = aiohttp.web.StreamResponse(status=200)
        response.content_type = answer.content_type
        await response.prepare(request)
        deadline: float | None = None  # decided once faults are enabled
        cut = False
        while True:
            if deadline is None and self.enabled:
                lifetime = self.rng.uniform(self.rates.watch_min_seconds, self.rates.watch_max_seconds)
                deadline = time.monotonic() + lifetime
                cut = self.rng.random() < self.rates.watch_cut_share
            remaining = WATCH_POLL_SECONDS if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                line = await asyncio.wait_for(answer.content.readline(), min(remaining, WATCH_POLL_SECONDS))
            except TimeoutError:
                continue
            if not line:
                return response  # the server ended the watch itself
            await response.write(line)
        if cut:
            self.injected[WATCH_CUT] += 1
            if request.transport is not None:
                request.transport.close()  # no terminating chunk: the client sees a broken stream
            return response
        self.injected[WATCH_END] += 1
        await response.write_eof()
        return response

    @staticmethod
    def _status(code: int, reason: str, message: str, **details: Any) -> aiohttp.web.Response:
        headers = {"Retry-After": "0"} if code == 429 else None
        return aiohttp.web.json_response(
            status_body(code, reason, message, **details), status=code, headers=headers
        )

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> FaultProxy:
        ready = threading.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            self._stop = asyncio.Event()
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
            app = aiohttp.web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            runner = aiohttp.web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
            await runner.setup()
            site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            self.url = f"http://127.0.0.1:{port}"
            ready.set()
            try:
                await self._stop.wait()
            finally:
                await runner.cleanup()
                await self._session.close()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(serve())
            except BaseException as error:
                failure.append(error)
                ready.set()
            finally:
                leftover = asyncio.all_tasks(self._loop)  # watches still relaying when the server stopped
                for task in leftover:
                    task.cancel()
                self._loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
                self._loop.close()

        self._session: aiohttp.ClientSession | None = None
        self._thread = threading.Thread(target=run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(STARTUP_TIMEOUT) or failure:
            raise RuntimeError(f"the fault proxy did not start: {failure!r}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None or self._stop is None:
            return
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"the fault proxy did not stop within {timeout} s")
        self._thread = None
