"""The activator's Prometheus metrics: one set for both front doors, written by the dispatcher at the
end of each request and read by the admin listener's /metrics."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

import runtime.tracing as tracing
from activator.throttler import SideThrottler
from runtime.loop_metrics import Count, LoopCounter, LoopHistogram

P = "elasticserving_activator_"
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        # updated per request: kept on the loop's thread (runtime.loop_metrics)
        self.requests = LoopCounter(P + "requests", "Requests by service, side and status code (HTTP status, or "
                                    "grpc_<CODE>).", ["service", "side", "code"], r)
        self.latency = LoopHistogram(P + "request_duration_seconds", "Request latency through the activator "
                                     "(waiting included).", ["service", "side"], r, BUCKETS)
        self.proxy_latency = LoopHistogram(P + "proxy_duration_seconds", "Time from forwarding to a replica to "
                                           "its answer.", ["service", "side"], r, BUCKETS)
        self.cold_start = LoopHistogram(P + "cold_start_wait_seconds", "Time held requests waited for a replica "
                                        "slot (from zero, or behind a full breaker).", ["service", "side"], r, BUCKETS)
        self.queue_depth = Gauge(P + "queue_depth", "Requests held waiting for a replica slot.",
                                 ["service", "side"], registry=r)
        self.concurrency = Gauge(P + "concurrency", "Requests in flight or held.", ["service", "side"],
                                 registry=r)
        self.rejections = LoopCounter(P + "breaker_rejections", "Requests refused: queue full or no replica in "
                                      "time.", ["service", "side", "reason"], r)
        self.retries = LoopCounter(P + "retries", "Requests resent because nothing was sent: the replica "
                                   "was not reached.", ["service", "side"], r)
        r.register(tracing.DroppedSpans())
        self._sides: dict[tuple[str, str], SideMetrics] = {}

    def side(self, key: str, side: str) -> SideMetrics:
        """The label children of one service side, looked up once (the request path is hot)."""
        m = self._sides.get((key, side))
        if m is None:
            m = self._sides[(key, side)] = SideMetrics(self, key, side)
        return m

    def set_gauges(self, throttlers: Iterable[SideThrottler]) -> None:
        for t in throttlers:
            self.queue_depth.labels(t.key, t.side).set(len(t.waiters))
            self.concurrency.labels(t.key, t.side).set(t.concurrency)

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """Classic text, or OpenMetrics (with the latency exemplars) when `accept` asks for it."""
        if accept and "openmetrics" in accept:
            return tracing.exposition(self.registry, accept)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class SideMetrics:
    def __init__(self, metrics: Metrics, key: str, side: str) -> None:
        self._metrics = metrics
        self.key, self.side = key, side
        self._codes: dict[str, Count] = {}
        self._rejections: dict[str, Count] = {}
        self.latency = metrics.latency.labels(key, side)
        self.proxy_latency = metrics.proxy_latency.labels(key, side)
        self.cold_start = metrics.cold_start.labels(key, side)
        self.retries = metrics.retries.labels(key, side)

    def count(self, code: str) -> None:
        c = self._codes.get(code)
        if c is None:
            c = self._codes[code] = self._metrics.requests.labels(self.key, self.side, code)
        c.value += 1

    def reject(self, reason: str) -> None:
        c = self._rejections.get(reason)
        if c is None:
            c = self._rejections[reason] = self._metrics.rejections.labels(self.key, self.side, reason)
        c.value += 1
