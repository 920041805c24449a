"""runtime.loop_metrics: a scrape shows what prometheus_client's own Counter and Histogram show for the same
updates, in the classic text format and in OpenMetrics (exemplars), timestamps of creation aside."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics

from runtime.loop_metrics import LoopCounter, LoopHistogram

BOUNDS = (0.001, 0.01, 0.1, 1, 10)


def _without_times(text: bytes) -> str:
    """Creation times and exemplar timestamps differ between the two registries by construction."""
    text = re.sub(rb"(_created\{[^}]*\}) \S+", rb"\1 T", text)
    return re.sub(rb"(# \{[^}]*\} \S+) \S+", rb"\1 T", text).decode()


@pytest.mark.parametrize(("observations", "counts"), [
    ([], {}),  # children made, nothing observed: zeros
    ([0.0005, 0.001, 0.0010001, 0.5, 1.0, 9.99, 10.0, 10.5, 1e9], {"200": 3, "503": 1}),  # on and past every edge
    ([0.05] * 40 + [3.0], {"200": 41}),
    ([-1.0, 0.0], {"grpc_OK": 2}),  # at or below the first bound
])
@pytest.mark.parametrize("traced", [False, True])
def test_a_scrape_matches_prometheus_client(observations, counts, traced):
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    c1 = LoopCounter("x_requests", "Requests.", ["service", "code"], ours)
    h1 = LoopHistogram("x_seconds", "Latency.", ["service"], ours, BOUNDS)
    c2 = Counter("x_requests", "Requests.", ["service", "code"], registry=theirs)
    h2 = Histogram("x_seconds", "Latency.", ["service"], buckets=BOUNDS, registry=theirs)
    b1, b2 = h1.labels("ns/a"), h2.labels("ns/a")
    for i, v in enumerate(observations):
        trace = f"{i:032x}" if traced and i % 2 == 0 else ""
        b1.observe(v, trace)
        b2.observe(v, {"trace_id": trace} if trace else None)
    for code, n in counts.items():
        c1.labels("ns/a", code).value += n
        c2.labels("ns/a", code).inc(n)
    assert _without_times(generate_latest(ours)) == _without_times(generate_latest(theirs))
    assert _without_times(openmetrics(ours)) == _without_times(openmetrics(theirs))
    assert b1.sum == pytest.approx(sum(observations))


def test_label_values_are_counted():
    c = LoopCounter("x_requests", "Requests.", ["service", "code"], CollectorRegistry())
    with pytest.raises(ValueError, match="2 label values expected, got 1"):
        c.labels("ns/a")
    assert c.labels("ns/a", "200") is c.labels("ns/a", "200")  # one child per label set
