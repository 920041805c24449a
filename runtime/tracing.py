"""OpenTelemetry set-up shared by the replica (runtime.protocols) and the activator (activator.tracing):
one TracerProvider from the standard OTEL_* variables, W3C Trace Context in and out, dropped spans counted.

Off (the default) unless OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set and OTEL_SDK_DISABLED
is not true: then `ON` stays False and the callers create no span, context or carrier at all. The SDK reads
the sampler, the service name and the endpoint itself; only the exporter class follows
OTEL_EXPORTER_OTLP_PROTOCOL (grpc, or http/protobuf, the default). Export runs on the SDK's batch thread
with a bounded queue: a slow or absent collector costs spans, never request time; the spans lost are
counted (`dropped()`) and reported in at most one log line a minute.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Any

log = logging.getLogger("elasticserving.tracing")

ON = False  # read once per request by the hot paths
LOG_EVERY = 60.0  # seconds between two "spans dropped" lines
_tracer: Any = None
_propagator: Any = None
_api: Any = None  # the opentelemetry.trace module, imported by setup
_lock = threading.Lock()
_dropped = 0
_last_log = float("-inf")
_provider: list[Any] = [None]


def wanted(env: dict[str, str] | os._Environ = os.environ) -> bool:
    """True when the standard variables ask for trace export (a cheap check, no SDK import)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def count_dropped(n: int, why: str) -> None:
    """`n` spans will never reach the collector; logged at most once per LOG_EVERY seconds."""
    global _dropped, _last_log
    with _lock:
        _dropped += n
        now = time.monotonic()
        if now - _last_log < LOG_EVERY:
            return
        _last_log, total = now, _dropped
    log.warning("traces: %d span(s) dropped so far (%s); requests are not affected", total, why)


def dropped() -> int:
    return _dropped


def setup(default_service: str, exporter: Any = None) -> bool:
    """Install the provider when `wanted()` (or when a test passes its own `exporter`); returns ON."""
    global ON, _tracer, _propagator, _api
    if exporter is None and not wanted():
        ON = False
        return False
    import opentelemetry.trace
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if exporter is None:
        if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                          os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")).strip() == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        exporter = OTLPSpanExporter()
    # The SDK's own retry warnings would be one line per failed batch: ours is one a minute.
    logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)

    class Counted:
        """The exporter, with failed batches counted as dropped spans."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def export(self, spans: Any) -> Any:
            try:
                result = self.inner.export(spans)
            except Exception as exc:  # noqa: BLE001 - an exporter bug must not kill the batch thread
                count_dropped(len(spans), f"export failed: {type(exc).__name__}")
                return SpanExportResult.FAILURE
            if result != SpanExportResult.SUCCESS:
                count_dropped(len(spans), "the collector did not take them")
            return result

        def shutdown(self) -> None:
            self.inner.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return getattr(self.inner, "force_flush", lambda *_: True)(timeout_millis)

    class Bounded(BatchSpanProcessor):
        """BatchSpanProcessor whose queue overflows are counted (the SDK drops the oldest span)."""

        def on_end(self, span: Any) -> None:
            bp = getattr(self, "_batch_processor", None)
            queue = getattr(bp, "_queue", None)
            if queue is not None and queue.maxlen is not None and len(queue) >= queue.maxlen:
                count_dropped(1, "export queue full")
            super().on_end(span)

    resource = Resource.create({"service.name": default_service}).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)  # reads OTEL_TRACES_SAMPLER(_ARG) itself
    provider.add_span_processor(Bounded(Counted(exporter)))
    _tracer = provider.get_tracer("elasticserving")
    _propagator = TraceContextTextMapPropagator()
    _api = opentelemetry.trace
    ON = True
    _provider[0] = provider
    return True


def shutdown() -> None:
    """Flush what is queued (bounded by the SDK's own timeout) and stop; a no-op when off."""
    global ON
    if _provider[0] is not None:
        _provider[0].shutdown()
        _provider[0] = None
    ON = False


def tracer() -> Any:
    return _tracer


def extract(carrier: dict[str, str]) -> Any:
    """The caller's context from `traceparent`/`tracestate`; a malformed one gives a new root (never an
    error: the W3C propagator ignores what it cannot parse)."""
    return _propagator.extract(carrier)


def inject(carrier: dict[str, str], context: Any = None) -> dict[str, str]:
    _propagator.inject(carrier, context)
    return carrier


def ids(span: Any) -> tuple[str, str]:
    """(trace id, `traceparent` value) of a span, for log lines, answers and exemplars; ("", "") when the
    span is not recording (sampled out)."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return "", ""
    tid = f"{ctx.trace_id:032x}"
    return tid, f"00-{tid}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


class DroppedSpans:
    """A Prometheus collector of `elasticserving_trace_spans_dropped_total` (spans the collector never got);
    registered by both the activator's and the replica's metrics."""

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily

        yield CounterMetricFamily("elasticserving_trace_spans_dropped", "Trace spans dropped: the export queue "
                                  "was full or the collector did not take them.", value=_dropped)


def exposition(registry: Any, accept: str | None) -> tuple[bytes, str]:
    """The registry in OpenMetrics when the scraper asks for it (the only format that carries exemplars),
    else in the classic text format."""
    from prometheus_client import exposition as expo

    encoder, ctype = expo.choose_encoder(accept or "")
    return encoder(registry), ctype


_NO_SPAN = contextlib.nullcontext()


def step(name: str, **attrs: Any) -> Any:
    """`with step("decode"):` a child span of the current one when tracing is on, else nothing."""
    if not ON or not _api.get_current_span().is_recording():  # off, or sampled out: no child spans at all
        return _NO_SPAN
    return _tracer.start_as_current_span(name, attributes=attrs)


def server(name: str, carrier: Any, **attrs: Any) -> Any:
    """The SERVER span of one request, a child of the caller's `traceparent` (call only when ON)."""
    return _tracer.start_as_current_span(name, context=_propagator.extract(carrier), kind=_api.SpanKind.SERVER,
                                         attributes=attrs)


def current_trace_id() -> str:
    """The trace id of the current span (an exemplar's label), "" outside a sampled one. Call when ON."""
    ctx = _api.get_current_span().get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid and ctx.trace_flags.sampled else ""


def linked(name: str, traceparent: str | None, **attrs: Any) -> Any:
    """A span of its own trace, linked to the span `traceparent` names (the autoscaler's decision a held
    request caused: one decision may serve many requests, so a link rather than a parent). Call when ON."""
    links = []
    if traceparent:
        ctx = _api.get_current_span(_propagator.extract({"traceparent": traceparent})).get_span_context()
        if ctx.is_valid:
            links.append(_api.Link(ctx))
    return _tracer.start_as_current_span(name, links=links, attributes=attrs)


def done(name: str, start_ns: int, end_ns: int, **attrs: Any) -> None:
    """A child span of the current one over a time already past (call only when ON)."""
    if _api.get_current_span().is_recording():
        _tracer.start_span(name, start_time=start_ns, attributes=attrs).end(end_time=end_ns)


def annotate(key: str, value: Any) -> None:
    """An attribute on the current span (call only when ON)."""
    _api.get_current_span().set_attribute(key, value)
