"""Run a real kopf operator against the emulator, in its own thread and event loop, stoppable and restartable.

The operator's handlers are registered into a fresh `kopf.OperatorRegistry` made the default while the
operator module is imported (or re-imported) or while a setup function runs, so the global registry is
never shared between tests. A login handler pointing kopf at the emulator is added to that registry.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import kopf

STARTUP_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0
WATCH_POLL_SECONDS = 0.01

OperatorSource = str | ModuleType | Callable[[], Any]


def fast_settings(settings: kopf.OperatorSettings) -> None:
    """Settings that keep a test operator quick; the operator's own startup handlers may change more."""
    settings.watching.server_timeout = 30
    settings.watching.reconnect_backoff = 0.05
    settings.queueing.idle_timeout = 0.5
    settings.queueing.exit_timeout = 1.0
    settings.networking.request_timeout = 10
    settings.networking.error_backoffs = [0.1, 0.2, 0.5]
    settings.execution.max_workers = 4
    settings.persistence.consistency_timeout = 2.0
    settings.posting.level = 20


def build_registry(source: OperatorSource, server: str) -> kopf.OperatorRegistry:
    """A registry holding the operator's handlers and a login handler for the emulator at `server`."""
    registry = kopf.OperatorRegistry()
    previous = kopf.get_default_registry()
    kopf.set_default_registry(registry)
    try:
        if isinstance(source, str):
            module = sys.modules.get(source)
            module = importlib.reload(module) if module is not None else importlib.import_module(source)
        elif isinstance(source, ModuleType):
            importlib.reload(source)
        else:
            source()
    finally:
        kopf.set_default_registry(previous)

    @kopf.on.login(registry=registry)
    def login_to_emulator(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=server, insecure=True, default_namespace="default")

    @kopf.on.startup(registry=registry)
    def tune_for_tests(settings: kopf.OperatorSettings, **_: Any) -> None:
        fast_settings(settings)

    return registry


class KopfRunner:
    """One operator: `start()`, `stop()`, `start()` again (a restart keeps the same handlers and memo).

    `watch_count` (optional) returns how many watches the API server has served: `start()` then returns only
    once the operator watches, and stopping it right away does not hit kopf's 5 s wait for tasks left
    hanging in its initial discovery.
    """

    def __init__(
        self,
        source: OperatorSource,
        server: str,
        memo: Any = None,
        watch_count: Callable[[], int] | None = None,
    ):
        self.registry = build_registry(source, server)
        self.memo = memo if memo is not None else kopf.Memo()
        self.watch_count = watch_count
        self._thread: threading.Thread | None = None
        self._stop_flag: threading.Event | None = None
        self.error: BaseException | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> KopfRunner:
        if self.running:
            raise RuntimeError("the operator is already running")
        stop_flag, ready_flag = threading.Event(), threading.Event()
        self.error = None

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(
                    kopf.operator(
                        registry=self.registry,
                        memo=self.memo,
                        standalone=True,
                        clusterwide=True,
                        stop_flag=stop_flag,
                        ready_flag=ready_flag,
                    )
                )
            except BaseException as error:
                self.error = error
            finally:
                ready_flag.set()
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        watches_before = self.watch_count() if self.watch_count is not None else 0
        self._stop_flag = stop_flag
        self._thread = threading.Thread(target=run, name="kopf-operator", daemon=True)
        self._thread.start()
        if not ready_flag.wait(STARTUP_TIMEOUT) or self.error is not None:
            self.stop()
            raise RuntimeError(f"the operator did not start: {self.error!r}")
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while self.watch_count is not None and self.watch_count() == watches_before and self.running:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the operator started no watch within {STARTUP_TIMEOUT} s")
            time.sleep(WATCH_POLL_SECONDS)
        return self

    def stop(self) -> None:
        if self._thread is None or self._stop_flag is None:
            return
        self._stop_flag.set()
        self._thread.join(STOP_TIMEOUT)
        if self._thread.is_alive():
            raise RuntimeError(f"the operator did not stop within {STOP_TIMEOUT} s")
        self._thread = None
        if self.error is not None:
            raise RuntimeError(f"the operator exited with an error: {self.error!r}") from self.error

    def restart(self) -> KopfRunner:
        self.stop()
        return self.start()
