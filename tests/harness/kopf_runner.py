"""Run a real kopf operator against the emulator, in its own thread and event loop, stoppable and restartable.

Each runner gets a fresh `kopf.OperatorRegistry` holding the operator's handlers and a login handler
pointing kopf at the emulator. The operator module is imported once and never reloaded: its handlers
sit in its own `registry` (per-operator state lives in kopf's memo, not in the module), and they are
copied into the runner's registry. A setup function instead registers its handlers while the runner's
registry is kopf's default.
"""

from __future__ import annotations

import asyncio
import importlib
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
    # As many retries of a failed API request as kopf makes (9 attempts over 54 s by default), each 20 times
    # sooner: with fewer, a watch that met the fault proxy's 14% of errors four times running stopped the
    # operator, which a real one would have ridden out.
    backoffs = settings.networking.error_backoffs
    settings.networking.error_backoffs = [
        delay / 20 for delay in ([backoffs] if isinstance(backoffs, (int, float)) else backoffs)
    ]
    settings.execution.max_workers = 4
    settings.persistence.consistency_timeout = 2.0
    settings.posting.level = 20


def build_registry(source: OperatorSource, server: str, token: str | None = None) -> kopf.OperatorRegistry:
    """A registry holding the operator's handlers and a login handler for the emulator at `server`."""
    registry = kopf.OperatorRegistry()
    if isinstance(source, str):
        source = importlib.import_module(source)
    if isinstance(source, ModuleType):
        copy_handlers(source.registry, registry)
    else:
        previous = kopf.get_default_registry()
        kopf.set_default_registry(registry)
        try:
            source()
        finally:
            kopf.set_default_registry(previous)

    @kopf.on.login(registry=registry)
    def login_to_emulator(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=server, insecure=True, default_namespace="default", token=token)

    @kopf.on.startup(registry=registry)
    def tune_for_tests(settings: kopf.OperatorSettings, **_: Any) -> None:
        fast_settings(settings)

    return registry


# kopf's OperatorRegistry keeps one registry per kind of handler; their append() and get_all_handlers()
# are public, only the attribute names are not.
HANDLER_REGISTRIES = ("_activities", "_indexing", "_watching", "_spawning", "_changing", "_webhooks")


def copy_handlers(source: kopf.OperatorRegistry, target: kopf.OperatorRegistry) -> None:
    """Every handler but the operator's own logins: a test operator logs in to the emulator."""
    for part in HANDLER_REGISTRIES:
        for handler in getattr(source, part).get_all_handlers():
            if getattr(getattr(handler, "activity", None), "value", None) != "authentication":
                getattr(target, part).append(handler)


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
        token: str | None = None,
    ):
        self.registry = build_registry(source, server, token)
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
