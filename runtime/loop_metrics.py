"""Counters and histograms of the request path (runtime.metrics, activator.metrics): plain numbers updated
on the event loop's thread, turned into Prometheus samples by a prometheus_client collector at scrape.

Why not prometheus_client's own children there: each update takes a lock, and a histogram's observe walks
its buckets in Python; two or three per request cost ~7 us of the activator's CPU at one client (issue 27,
measured side by side). No lock: each family is written by one thread at a time (the loop's; the
runtime's batch sizes also by its inference thread, which runs one batch at a time, never beside the
loop running one), and a scrape reading while a batch is counted may see its bucket before its sum, as
with prometheus_client's separately locked values. What a scrape shows is what prometheus_client would
show for the same updates (a table test).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString


class Count:
    """One label set of a LoopCounter: add to `value`."""

    __slots__ = ("value", "created")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()


class Buckets:
    """One label set of a LoopHistogram: `observe(value)`."""

    __slots__ = ("bounds", "counts", "sum", "exemplars", "created")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket (not cumulative); the last is +Inf
        self.sum = 0.0
        self.exemplars: dict[int, Exemplar] = {}  # the latest per bucket, as prometheus_client keeps them
        self.created = time.time()

    def observe(self, value: float, trace_id: str = "") -> None:
        i = bisect.bisect_left(self.bounds, value)  # the first bound >= value: buckets are `le`
        self.counts[i] += 1
        self.sum += value
        if trace_id:  # an OpenMetrics exemplar: a slow bucket leads to its trace
            self.exemplars[i] = Exemplar({"trace_id": trace_id}, value, time.time())


C = TypeVar("C", Count, Buckets)


class _Family(Generic[C]):
    kind = ""  # the Prometheus metric type

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self._children: dict[tuple[str, ...], C] = {}
        registry.register(self)

    def labels(self, *values: str) -> C:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: {len(self.labelnames)} label values expected, got {len(values)}")
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._new()
        return child

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self.name, self.documentation, self.kind)
        for values, child in list(self._children.items()):
            self._samples(metric, dict(zip(self.labelnames, values, strict=True)), child)
        yield metric


class LoopCounter(_Family[Count]):
    kind = "counter"

    def _new(self) -> Count:
        return Count()

    def _samples(self, metric: Metric, labels: dict[str, str], c: Count) -> None:
        metric.add_sample(self.name + "_total", labels, c.value)
        metric.add_sample(self.name + "_created", labels, c.created)


class LoopHistogram(_Family[Buckets]):
    kind = "histogram"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry,
                 buckets: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in buckets)
        super().__init__(name, documentation, labelnames, registry)

    def _new(self) -> Buckets:
        return Buckets(self.bounds)

    def _samples(self, metric: Metric, labels: dict[str, str], b: Buckets) -> None:
        total = 0
        for i, bound in enumerate((*self.bounds, float("inf"))):
            total += b.counts[i]
            metric.add_sample(self.name + "_bucket", {**labels, "le": floatToGoString(bound)}, float(total),
                              exemplar=b.exemplars.get(i))
        metric.add_sample(self.name + "_count", labels, float(total))
        metric.add_sample(self.name + "_sum", labels, b.sum)
        metric.add_sample(self.name + "_created", labels, b.created)
