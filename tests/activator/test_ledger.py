"""activator.ledger: a finished request reaches the metrics and the access log on the loop's next turn, a
chunk at a time, or at once on a flush (a scrape, shutdown); exactly once."""

from __future__ import annotations

import asyncio
import io
import json

from activator.access_log import AccessLog
from activator.dispatcher import Call, Dispatcher
from activator.ledger import CHUNK, RequestLedger
from activator.metrics import Metrics
from tests.activator.harness import full, route

LABELS = {"service": "ns/svc", "side": "default"}


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(f"elasticserving_activator_{name}", {**LABELS, **labels})


def ended(rid: str = "rid-1", upstream: float | None = 0.002) -> Call:
    call = Call("svc.ns.example.com", "", rid, "http")
    call.service, call.side, call.replica, call.upstream_seconds = "ns/svc", "default", "r9000", upstream
    return call


def test_records_are_accounted_once_on_the_next_turns_a_chunk_each() -> None:
    metrics, out = Metrics(), io.StringIO()
    ledger = RequestLedger(AccessLog("json", out))
    m = metrics.side("ns/svc", "default")

    async def record() -> None:
        ledger.record(m, ended("a"), "200", 0.004)
        ledger.record(m, ended("b", upstream=None), "503", 0.5)
        for i in range(CHUNK):
            ledger.record(m, ended(str(i)), "200", 0.001)
        assert sample(metrics, "requests_total", code="200") is None  # not before the answer is out
        await asyncio.sleep(0)  # one turn: one chunk
        assert sample(metrics, "requests_total", code="200") + sample(metrics, "requests_total", code="503") == CHUNK
        await asyncio.sleep(0)  # the next: the rest
        assert sample(metrics, "requests_total", code="200") == 1 + CHUNK

    asyncio.run(record())
    ledger.flush()  # nothing twice; the lines are written out
    assert sample(metrics, "requests_total", code="200") == 1 + CHUNK
    assert sample(metrics, "requests_total", code="503") == 1
    assert sample(metrics, "request_duration_seconds_count") == 2 + CHUNK
    assert abs(sample(metrics, "request_duration_seconds_sum") - (0.504 + CHUNK * 0.001)) < 1e-9
    assert sample(metrics, "proxy_duration_seconds_count") == 1 + CHUNK  # the refused one never reached a replica
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(x["request_id"], x["status"], x["duration_ms"]) for x in lines[:2]] == [("a", "200", 4.0),
                                                                                    ("b", "503", 500.0)]
    assert len(lines) == 2 + CHUNK


def test_a_flush_accounts_everything_at_once_and_without_a_loop_a_record_is_accounted_at_once() -> None:
    metrics = Metrics()
    ledger = RequestLedger(AccessLog("json", io.StringIO(), enabled=False))
    ledger.record(metrics.side("ns/svc", "default"), ended(), "200", 0.001)  # no loop: a unit test calling
    assert sample(metrics, "requests_total", code="200") == 1

    async def burst() -> None:
        m = metrics.side("ns/svc", "default")
        for i in range(3 * CHUNK):
            ledger.record(m, ended(str(i)), "200", 0.001)
        ledger.flush()  # what a scrape does
        assert sample(metrics, "requests_total", code="200") == 1 + 3 * CHUNK
        await asyncio.sleep(0)
        assert sample(metrics, "requests_total", code="200") == 1 + 3 * CHUNK  # the turn was called off

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
