"""The controller's scale-from-zero decision as a span linked to the held request that poked it (spans
kept in memory; the controller on its fake platform, as tests/autoscaler do)."""

from __future__ import annotations

import asyncio

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import runtime.tracing as tracing
from autoscaler.wire import Poke
from tests.helpers import wait_for

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_poke_message_carries_an_optional_traceparent():
    assert Poke(service="a/b").traceparent is None
    assert Poke.model_validate_json(f'{{"service": "a/b", "traceparent": "{TRACEPARENT}"}}').traceparent == TRACEPARENT


def test_a_poke_with_tracing_on_is_a_span_linked_to_the_request():
    exporter = InMemorySpanExporter()
    tracing.setup("test-controller", exporter=exporter)
    try:
        with tracing.linked("scale from zero", TRACEPARENT, **{"elasticserving.service": "a/b"}):
            pass
        with tracing.linked("scale from zero", "00-garbage", **{"elasticserving.service": "a/b"}):
            pass
        tracing._provider[0].force_flush()
        spans = wait_for(lambda: exporter.get_finished_spans() if len(exporter.get_finished_spans()) == 2
                         else None, 10, 0.05, "two spans")
    finally:
        tracing.shutdown()
    linked, unlinked = spans
    assert [f"{lk.context.trace_id:032x}" for lk in linked.links] == ["4bf92f3577b34da6a3ce929d0e0e4736"]
    assert f"{linked.context.trace_id:032x}" != "4bf92f3577b34da6a3ce929d0e0e4736"  # its own trace
    assert not unlinked.links  # a malformed traceparent: no link, no error
    assert asyncio.iscoroutinefunction(__import__("autoscaler.controller").controller.Controller.poke)
