"""Prometheus metrics of one replica: requests, latency, in-flight, batch sizes, model load time.

The server records into a per-server registry; `GET /metrics` renders it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from runtime import tracing
from runtime.loop_metrics import Buckets, Count, LoopCounter, LoopHistogram
from runtime.request_log import dropped_lines
from runtime.storage.names import PULL_REPORT_ENV

P = "elasticserving_runtime_"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class RuntimeMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        # updated per request or batch: kept on the loop's thread (runtime.loop_metrics)
        self.requests = LoopCounter(P + "requests", "Inference requests by model, protocol and status code.",
                                    ["model", "protocol", "code"], r)
        self.latency = LoopHistogram(P + "request_duration_seconds", "Inference request latency.",
                                     ["model", "protocol"], r, LATENCY_BUCKETS)
        self.inflight = Gauge(P + "inflight_requests", "Requests being served.", ["model", "protocol"], registry=r)
        self.batch_size = LoopHistogram(P + "batch_size", "Items per executed batch (dynamic batching).", ["model"],
                                        r, (1, 2, 4, 8, 16, 32, 64, 128))
        self.load_seconds = Gauge(P + "model_load_seconds", "Time taken to load the model.", ["model"], registry=r)
        # Request log lines dropped while nobody read stderr (serving never waits for the log reader).
        self.log_dropped = Counter(P + "log_lines_dropped", "Request log lines dropped: stderr was not read.",
                                   registry=r)
        # How this replica's storageUri model got here (the pull before it started): a cache hit
        # downloaded 0 bytes. Set once from the pull's report.
        self.pull_seconds = Gauge(P + "model_pull_seconds", "Time the model pull before this replica took.",
                                  ["model", "uri", "cache"], registry=r)
        self.pull_bytes = Gauge(P + "model_pull_downloaded_bytes", "Bytes the model pull downloaded (0: cached).",
                                ["model", "uri", "cache"], registry=r)
        # labelled children by (model, protocol, code): `labels()` builds a key each call
        self._children: dict[tuple[str, str, int | str], tuple[Count, Buckets]] = {}
        self._batch_children: dict[str, Buckets] = {}
        self._dropped_seen = 0
        r.register(tracing.DroppedSpans())

    def observe(self, model: str, protocol: str, code: int | str, seconds: float, trace_id: str = "") -> None:
        key = (model, protocol, code)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.labels(model, protocol, str(code)),
                                              self.latency.labels(model, protocol))
        children[0].value += 1
        children[1].observe(seconds, trace_id)

    def batch(self, model: str, n: int) -> None:
        child = self._batch_children.get(model)
        if child is None:
            child = self._batch_children[model] = self.batch_size.labels(model)
        child.observe(n)

    def model_load(self, model: str, seconds: float) -> None:
        self.load_seconds.labels(model).set(seconds)

    def model_pull(self, model: str, report: dict) -> None:
        cache = "hit" if report.get("cache") == "hit" else "miss"
        labels = (model, str(report.get("uri", "")), cache)
        self.pull_seconds.labels(*labels).set(float(report.get("seconds", 0.0)))
        self.pull_bytes.labels(*labels).set(0 if cache == "hit" else int(report.get("bytes", 0)))

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """Classic text, or OpenMetrics (with the latency exemplars) when `accept` asks for it."""
        seen = dropped_lines()
        if seen > self._dropped_seen:  # a counter follows the log's own count
            self.log_dropped.inc(seen - self._dropped_seen)
            self._dropped_seen = seen
        if accept and "openmetrics" in accept:
            return tracing.exposition(self.registry, accept)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def pull_report_from_env() -> dict | None:
    """The storageUri pull's report handed to this replica: JSON in $ELASTICSERVING_MODEL_PULL (the
    local platform), or the path of a file holding it (a Pod's storage initializer writes one)."""
    value = os.environ.get(PULL_REPORT_ENV, "").strip()
    path = pull_report_path()
    try:
        if path is not None:
            with open(path) as f:
                value = f.read(65536)
        report = json.loads(value) if value else None
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def pull_report_path() -> Path | None:
    """The file $ELASTICSERVING_MODEL_PULL names (a Pod's storage initializer writes the report there);
    None when it holds the report itself or nothing."""
    value = os.environ.get(PULL_REPORT_ENV, "").strip()
    return Path(value) if value and not value.startswith("{") else None
