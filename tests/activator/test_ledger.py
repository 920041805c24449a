"""activator.ledger: a finished request reaches the metrics and the access log at the next flush (a
scrape, the flush timer, shutdown), exactly once, with its exemplar when traced."""

from __future__ import annotations

import asyncio
import io
import json

from activator.access_log import AccessLog
from activator.dispatcher import Call, Dispatcher
from activator.ledger import MAX_RECORDS, RequestLedger
from activator.metrics import Metrics
from tests.activator.harness import full, route

LABELS = {"service": "ns/svc", "side": "default"}


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(f"elasticserving_activator_{name}", {**LABELS, **labels})


def ended(rid: str = "rid-1", upstream: float | None = 0.002) -> Call:
    call = Call("svc.ns.example.com", "", rid, "http")
    call.service, call.side, call.replica, call.upstream_seconds = "ns/svc", "default", "r9000", upstream
    return call


def test_records_are_accounted_once_at_the_flush() -> None:
    metrics, out = Metrics(), io.StringIO()
    ledger = RequestLedger(AccessLog("json", out))
    m = metrics.side("ns/svc", "default")

    async def record_two() -> None:  # with a loop: accounted at the flush, not before
        ledger.record(m, ended("a"), "200", 0.004)
        ledger.record(m, ended("b", upstream=None), "503", 0.5)
        assert sample(metrics, "requests_total", code="200") is None and out.getvalue() == ""

    asyncio.run(record_two())
    ledger.flush()
    ledger.flush()  # nothing twice
    assert sample(metrics, "requests_total", code="200") == 1 and sample(metrics, "requests_total", code="503") == 1
    assert sample(metrics, "request_duration_seconds_count") == 2
    assert sample(metrics, "request_duration_seconds_sum") == 0.504
    assert sample(metrics, "proxy_duration_seconds_count") == 1  # the refused one never reached a replica
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(x["request_id"], x["status"], x["duration_ms"]) for x in lines] == [("a", "200", 4.0), ("b", "503", 500.0)]


def test_without_a_loop_or_past_the_cap_a_record_is_accounted_at_once() -> None:
    metrics = Metrics()
    ledger = RequestLedger(AccessLog("json", io.StringIO(), enabled=False))
    ledger.record(metrics.side("ns/svc", "default"), ended(), "200", 0.001)  # no loop: a unit test calling
    assert sample(metrics, "requests_total", code="200") == 1

    async def burst() -> None:
        m = metrics.side("ns/svc", "default")
        for i in range(MAX_RECORDS):
            ledger.record(m, ended(str(i)), "200", 0.001)
        assert sample(metrics, "requests_total", code="200") == 1 + MAX_RECORDS  # the cap flushed it

    asyncio.run(burst())


def test_an_unrouted_request_is_logged_but_counted_on_no_side() -> None:
    metrics, out = Metrics(), io.StringIO()
    RequestLedger(AccessLog("json", out)).record(None, Call("nowhere", "", "rid-9", "http"), "404", 0.001)
    assert json.loads(out.getvalue())["status"] == "404"
    assert not [s for f in metrics.requests.collect() for s in f.samples]


async def test_a_scrape_sees_the_requests_ended_before_it() -> None:
    metrics, out = Metrics(), io.StringIO()
    d = Dispatcher(metrics=metrics, access_log=AccessLog("json", out), wake=None, request_timeout=5,  # type: ignore[arg-type]
                   queue_depth=10)
    d.apply(full(route(ports=(9000,))))

    async def send(backend, timeout):
        return "answer"

    got = await d.dispatch(Call("svc.ns.example.com", "", "rid-1", "http"), send, lambda r: "200")
    assert got == "answer"
    d.refresh_metrics()  # what the admin listener calls before every scrape
    assert sample(metrics, "requests_total", code="200") == 1 and sample(metrics, "proxy_duration_seconds_count") == 1
    assert sample(metrics, "concurrency") == 0
    assert json.loads(out.getvalue())["replica"] == "r9000"
    d.close()
