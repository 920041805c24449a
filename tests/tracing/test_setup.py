"""runtime.tracing without a collector: when tracing is on at all, and what a dead collector costs (spans,
counted and logged once a minute; never request time)."""

from __future__ import annotations

import logging
import time

import pytest

import runtime.tracing as tracing
from runtime.metrics import RuntimeMetrics
from tests.helpers import free_port, wait_for


@pytest.mark.parametrize(("env", "on"), [
    ({}, False),
    ({"OTEL_SERVICE_NAME": "x"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "TRUE"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "false"}, True),
])
def test_on_only_with_an_endpoint_and_not_disabled(env, on):
    assert tracing.wanted(env) is on


def test_off_by_default_creates_nothing(monkeypatch):
    for k in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(k, raising=False)
    assert tracing.setup("test") is False
    assert tracing.ON is False
    assert tracing.step("decode") is tracing.step("encode")  # one shared no-op, no span object


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_unreachable_collector_never_slows_a_request_and_drops_are_counted(monkeypatch, caplog, protocol):
    dead = free_port()  # nothing listens there
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{dead}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "64")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "32")
    monkeypatch.setattr(tracing, "_last_log", float("-inf"))
    before = tracing.dropped()
    try:
        assert tracing.setup("test") is True
        t0 = time.perf_counter()
        for _ in range(500):  # far more than the queue holds: the overflow is dropped, not waited for
            with tracing.server("runtime test", {}), tracing.step("inference"):
                pass
        per_span = (time.perf_counter() - t0) / 500
        assert per_span < 0.005  # microseconds each; an export inline would take the 1 s timeout
        with caplog.at_level(logging.WARNING, logger="elasticserving.tracing"):
            wait_for(lambda: tracing.dropped() - before >= 500 * 2 - 64, 30, 0.05, "spans counted as dropped")
        lines = [r for r in caplog.records if r.name == "elasticserving.tracing"]
        assert len(lines) <= 1  # at most one line a minute, however many spans were lost
        text = RuntimeMetrics().render()[0].decode()
        assert f"elasticserving_trace_spans_dropped_total {float(tracing.dropped())}" in text
    finally:
        tracing.shutdown()
    assert tracing.ON is False
