"""Startup wiring: what the operator's log keeps."""

from __future__ import annotations

import logging

import pytest
from tooltune_operator.startup import QuietEventHandlers, quiet_event_handlers


def test_kopf_success_lines_of_the_every_event_handlers_are_dropped_and_the_rest_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    quiet_event_handlers()
    quiet_event_handlers()  # once per process, however often the operator starts
    objects = logging.getLogger("kopf.objects")
    assert sum(isinstance(f, QuietEventHandlers) for f in objects.filters) == 1
    with caplog.at_level(logging.INFO, logger="kopf.objects"):
        objects.info("Handler 'on_pod_event' succeeded.")
        objects.info("Handler 'reconcile' succeeded.")
        objects.error("Handler 'on_pod_event' failed with an exception. Will ignore.")
    assert caplog.messages == [
        "Handler 'reconcile' succeeded.",
        "Handler 'on_pod_event' failed with an exception. Will ignore.",
    ]
