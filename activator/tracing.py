"""Trace spans of the activator's request path: the front doors hand the caller's `traceparent` to
`begin`, the dispatcher opens one child span per step (route, wait for a replica, proxy per attempt).

Only called when runtime.tracing.ON (checked once per request by the dispatcher): with tracing off no span,
context or carrier exists. The SDK set-up (provider, exporter, propagator) is runtime.tracing's.
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

import runtime.tracing as otel


def begin(call: Any, carrier: dict[str, str] | None, started_ns: int) -> None:
    """The request's SERVER span, a child of the caller's context (a new root without a valid one)."""
    attrs: dict[str, Any] = {"elasticserving.request_id": call.request_id, "elasticserving.cold_start": False}
    if call.protocol == "grpc":
        attrs["rpc.system"] = "grpc"
    else:
        attrs["network.protocol.name"] = "http"
    span = otel.tracer().start_span(f"activator {call.protocol}", context=otel.extract(carrier or {}),
                                    kind=SpanKind.SERVER, attributes=attrs, start_time=started_ns)
    call.trace_id, call.traceparent = otel.ids(span)
    if span.is_recording():
        call.span = span
    elif call.traceparent:  # sampled out: no child spans, but the decision still travels to the replica
        call.outgoing = {"traceparent": call.traceparent}


def step(call: Any, name: str, started_ns: int, **attrs: Any) -> Any:
    """A child span of the request span, started at `started_ns`; the caller ends it."""
    return otel.tracer().start_span(name, context=set_span_in_context(call.span), start_time=started_ns,
                                    attributes=attrs)


def wait(call: Any, cold: bool) -> Any:
    """The span of a held request: at zero it is the cold start, behind a full breaker the breaker's queue."""
    if cold:
        call.span.set_attribute("elasticserving.cold_start", True)
    return step(call, "wait for replica" if cold else "breaker wait", time.time_ns(),
                **{"elasticserving.cold_start": cold})


def done_step(name: str, call: Any, started_ns: int, **attrs: Any) -> None:
    """A child span that has already ended (now)."""
    step(call, name, started_ns, **attrs).end()


def proxy(call: Any, backend: Any, attempt: int) -> Any:
    """The CLIENT span of one attempt to a replica; the headers to forward carry its context."""
    span = otel.tracer().start_span(
        "proxy" if attempt == 0 else "proxy retry", context=set_span_in_context(call.span), kind=SpanKind.CLIENT,
        attributes={"server.address": backend.host, "server.port": backend.http_port,
                    "elasticserving.replica": backend.id, "elasticserving.attempt": attempt})
    call.outgoing = otel.inject({}, set_span_in_context(span))
    return span


def end(call: Any, code: str) -> None:
    """Close the request span with where it went and how it ended."""
    span = call.span
    span.set_attributes({"elasticserving.service": call.service, "elasticserving.side": call.side,
                         "elasticserving.replica": call.replica})
    if call.protocol == "grpc":
        span.set_attribute("rpc.grpc.status_code", code)
    elif code.isdigit():
        span.set_attribute("http.response.status_code", int(code))
        if int(code) >= 500:
            span.set_status(Status(StatusCode.ERROR))
    span.end()


def now_ns() -> int:
    return time.time_ns()
