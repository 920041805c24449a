"""The activator on an injected clock: the dispatcher's deadlines, the throttler's load and the drain read
the clock activator.main passes down, so a test moves time by hand. No sleeps: each step waits on an event
the code under test sets (a poke, a request's end, `dispatcher.changed`)."""

from __future__ import annotations

import asyncio
import io
import json

import pytest

from activator.access_log import AccessLog
from activator.dispatcher import Call, Dispatcher
from activator.main import Activator, parse_args
from activator.metrics import Metrics
from activator.outcomes import Failure, NotSent
from activator.prober import Prober
from activator.throttler import MAX_WINDOW, Backend, SideThrottler
from autoscaler.wire import Endpoint, SideRoute
from tests.activator.harness import full, route
from tests.fakes import Clock

HOST = "svc.ns.example.com"


class Path:
    """A dispatcher on a fake clock, its pokes as events, and a send that records where it went."""

    def __init__(self, clock: Clock, request_timeout: float = 10.0, dispatcher: Dispatcher | None = None) -> None:
        self.log = io.StringIO()
        self.d = dispatcher or Dispatcher(metrics=Metrics(), access_log=AccessLog("json", self.log), wake=self.wake,
                                          request_timeout=request_timeout, queue_depth=10, clock=clock)
        self.d.wake = self.wake
        self.poked = asyncio.Event()
        self.pokes = 0
        self.sent: list[str] = []

    async def wake(self, key: str, side: str, traceparent: str | None = None) -> None:
        self.pokes += 1
        self.poked.set()

    async def send(self, backend: Backend, timeout: float) -> str:
        self.sent.append(backend.id)
        return "ok"

    def dispatch(self, send=None) -> asyncio.Task:
        call = Call(HOST, "", "rid-1", "http")
        return asyncio.create_task(self.d.dispatch(call, send or self.send, lambda r: getattr(r, "code", r)))

    def sample(self, name: str) -> float | None:
        self.d.flush()  # the requests ended so far, into the metrics
        return self.d.metrics.registry.get_sample_value(f"elasticserving_activator_{name}",
                                                        {"service": "ns/svc", "side": "default"})


def test_load_is_integrated_over_the_injected_clock():
    clock = Clock()
    t = SideThrottler("ns/a", "default", clock=clock)
    t.update(SideRoute(ready=True, desired=2, endpoints=(Endpoint(id="r0", host="h", http_port=1),
                                                          Endpoint(id="r1", host="h", http_port=2))), 0)
    a, b = t.try_acquire(), t.try_acquire()
    assert a is not None and b is not None
    clock.t += 1.0  # two in flight for a second
    t.release(a)
    clock.t += 3.0  # then one for three
    stats = t.take_stats()
    assert (stats.average_concurrency, stats.window, stats.concurrency) == (1.25, 4.0, 1)
    clock.t += 100.0  # a stalled reporter: the window is capped, the average is over the whole span
    stats = t.take_stats()
    assert (stats.average_concurrency, stats.window) == (1.0, MAX_WINDOW)


async def test_a_request_held_past_its_deadline_on_the_clock_is_refused_unsent():
    clock = Clock()
    p = Path(clock, request_timeout=10.0)
    p.d.apply(full(route()))  # at zero
    task = p.dispatch()
    await p.poked.wait()  # held, and the autoscaler woken
    clock.t += 10.0  # the whole request timeout goes by waiting for a replica
    p.d.apply(full(route(ports=(9000,)), version=2))  # a replica turns ready: its slot goes to the request
    with pytest.raises(Failure) as refused:
        await task
    assert refused.value.code == "timeout" and "within 10s" in refused.value.reason
    assert p.sent == [] and p.d.throttler("ns/svc", "default").backends["r9000"].inflight == 0
    assert p.sample("cold_start_wait_seconds_sum") == 10.0 and p.sample("request_duration_seconds_sum") == 10.0
    p.d.flush()
    assert json.loads(p.log.getvalue())["duration_ms"] == 10000.0
    poker = p.d._pokers[("ns/svc", "default")][0]
    await asyncio.wait_for(poker, 5)  # it ended when nothing was held any more, after one poke
    assert p.pokes == 1
    p.d.close()


@pytest.mark.parametrize(("late", "sent", "code"), [(False, 2, None), (True, 1, "upstream_failed")])
async def test_an_unsent_request_is_resent_only_while_its_deadline_on_the_clock_holds(late, sent, code):
    clock = Clock()
    p = Path(clock, request_timeout=10.0)
    p.d.apply(full(route(ports=(9000, 9001))))

    async def refused_once(backend: Backend, timeout: float) -> str:
        p.sent.append(backend.id)
        if len(p.sent) == 1:
            clock.t += 10.0 if late else 9.0  # the connect took the whole deadline, or not quite
            raise NotSent("connection refused")
        return "ok"

    task = p.dispatch(refused_once)
    if code is None:
        assert await task == "ok"
        assert p.sample("retries_total") == 1.0
    else:
        with pytest.raises(Failure) as failed:
            await task
        assert failed.value.code == code and "could not be reached" in failed.value.reason
    assert len(p.sent) == sent and len(set(p.sent)) == sent
    p.d.close()


async def test_a_lone_replica_not_reached_once_gets_the_request_when_the_prober_hears_it_again():
    """A lost SYN to the only replica, fresh from zero: the request waits for the prober's verdict on that
    replica (not for a second replica, which a side serving one held request never gets), and every
    request behind it in the queue goes through too."""
    clock = Clock()
    p = Path(clock, request_timeout=60.0)
    p.d.apply(full(route(ports=(9000,))))
    t = p.d.throttler("ns/svc", "default")
    failed = asyncio.Event()

    async def lost_once(backend: Backend, timeout: float) -> str:
        p.sent.append(backend.id)
        if len(p.sent) == 1:
            failed.set()
            raise NotSent("no connection within 1s")
        return "ok"

    first = p.dispatch(lost_once)
    await failed.wait()
    behind = p.dispatch(lost_once)
    await asyncio.sleep(0)  # both held now: the replica is out of rotation
    assert not first.done() and not behind.done() and not t.backends["r9000"].healthy
    t.mark(t.backends["r9000"], True)  # the prober: it answered /ready
    assert await first == "ok" and await behind == "ok"
    assert p.sent == ["r9000"] * 3 and p.sample("retries_total") == 1.0
    p.d.close()


async def test_a_resend_avoids_the_replicas_it_could_not_reach_while_another_is_in_rotation():
    """A dead node's two replicas, put back in rotation by a stale verdict after each failed connect: the
    request still goes on to the live replica instead of spending its resends on the dead ones."""
    clock = Clock()
    p = Path(clock, request_timeout=60.0)
    p.d.apply(full(route(ports=(9000, 9001, 9002))))
    t = p.d.throttler("ns/svc", "default")
    dead = {"r9000", "r9001"}
    t.backends["r9002"].inflight = 1  # busier: the least busy replicas, the dead ones, are picked first

    async def dead_node(backend: Backend, timeout: float) -> str:
        p.sent.append(backend.id)
        if backend.id in dead:
            for other in dead - {backend.id}:  # a verdict from before the node died, arriving meanwhile
                t.mark(t.backends[other], True)
            raise NotSent("no connection within 1s")
        return "ok"

    assert await p.dispatch(dead_node) == "ok"
    assert sorted(p.sent[:2]) == sorted(dead) and p.sent[2:] == ["r9002"]
    p.d.close()


async def test_a_probe_answer_from_before_a_failed_connect_does_not_put_the_replica_back():
    clock = Clock()
    t = SideThrottler("ns/svc", "default", clock=clock)
    t.update(SideRoute(ready=True, desired=1, endpoints=(Endpoint(id="r0", host="h", http_port=1),)), 0)
    b = t.backends["r0"]
    answering, answer = asyncio.Event(), asyncio.get_running_loop().create_future()

    async def probe(_: Backend) -> bool:
        answering.set()
        return await answer

    prober = Prober(lambda: [t], clock)
    prober.probe = probe
    last: dict[int, float] = {}
    round_ = asyncio.create_task(prober.check(last))
    await answering.wait()
    t.mark(b, False)  # a request's connect failed while the probe was out
    answer.set_result(True)  # the replica had answered before that
    await round_
    assert not b.healthy
    answer = asyncio.get_running_loop().create_future()
    answer.set_result(True)
    await prober.check(last)  # the next round hears it now: back in rotation
    assert b.healthy


def activator(clock: Clock, *flags: str) -> tuple[Activator, Path]:
    act = Activator(parse_args(["--grpc-port", "0", "--request-timeout", "60", *flags]), clock=clock)
    path = Path(clock, dispatcher=act.dispatcher)
    act.dispatcher.apply(full(route()))  # at zero: a request is held until the test lets it go
    return act, path


async def test_drain_counts_its_quiet_spell_on_the_clock_from_the_end_of_the_last_request():
    clock = Clock()
    act, p = activator(clock, "--drain-seconds", "30", "--drain-quiet-seconds", "2")
    p.d.apply(full(route(ports=(9000,)), version=2))
    t = p.d.throttler("ns/svc", "default")
    t.mark(t.backends["r9000"], False)  # out of rotation (the prober's verdict): requests are held
    held = p.dispatch()
    await p.poked.wait()
    drain = asyncio.create_task(act.drain())
    await clock.read_by(drain)  # the drain started, busy
    clock.t += 5.0
    t.mark(t.backends["r9000"], True)  # back: the held request is sent and answered at +5 s
    assert await held == "ok"
    act.dispatcher.changed.set()
    await clock.read_by(drain)  # the drain saw it end (woken by the request, or by this set)
    clock.t += 1.0
    p.d.apply(full(route(ports=(9000,)), version=3))  # a routes update wakes the drain: 1 s quiet of 2
    await clock.read_by(drain)
    assert not drain.done()
    clock.t += 1.0
    p.d.apply(full(route(ports=(9000,)), version=4))
    await asyncio.wait_for(drain, 5)
    act.dispatcher.close()


async def test_drain_cuts_off_a_request_still_held_at_its_deadline_on_the_clock():
    clock = Clock()
    act, p = activator(clock, "--drain-seconds", "30", "--drain-quiet-seconds", "0")
    held = p.dispatch()
    await p.poked.wait()
    drain = asyncio.create_task(act.drain())
    await clock.read_by(drain)
    clock.t += 30.0  # the drain's time is up; the next change of state wakes it to see so
    p.d.apply(full(route(), version=2))
    await asyncio.wait_for(drain, 5)
    assert not held.done() and act.dispatcher.busy() == 1
    held.cancel()
    with pytest.raises(asyncio.CancelledError):
        await held
    act.dispatcher.close()
