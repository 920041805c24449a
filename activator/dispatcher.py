"""The one request path of the activator, called by both front doors (HTTP and gRPC):

    route -> side (a tag host's, else the split in force) -> acquire a replica slot, or hold and poke the
    autoscaler -> send -> release -> account

A front door translates its wire format into a `Call` and a `send(backend, timeout)` callable, and maps
the result or `Failure` back. A request with nothing to wait for or choose may take the same path with
no task (`try_start`, then `finish` when answered): the HTTP front door does, on a pooled connection.

Retry rule (one place for both protocols): a request that was never sent (`NotSent`) is resent (at most
MAX_RESENDS times) to a replica in rotation, one it has not tried when there is such a one; the replica
not reached is out of rotation until the prober hears it again. Once written, a request is never resent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import runtime.tracing as otel
from activator import tracing
from activator.access_log import AccessLog
from activator.ledger import RequestLedger
from activator.metrics import Metrics, SideMetrics
from activator.outcomes import Broken, Failure, NotSent
from activator.routing import RouteTable
from activator.throttler import Backend, Clock, SideThrottler
from autoscaler.wire import LoadSide, RoutesUpdate, SideStats

R = TypeVar("R")  # a front door's answer type (an HTTP answer, a gRPC answer)
W = TypeVar("W")  # a front door's way to send at once (a pooled connection)
# Sends of one request that fail before a byte is written (connect refused or timed out), each to another
# replica: enough to get past the replicas of a node that just died.
MAX_RESENDS = 3
# breaker_rejections' `reason` label per refusal code: the label values dashboards and alerts know
REJECTED = {"unavailable": "unavailable", "overloaded": "queue_full"}
Wake = Callable[[str, LoadSide, str | None], Awaitable[None]]  # key, side, the held request's traceparent


@dataclass(slots=True)
class Call:
    """What a front door asks for, in no wire format."""

    host: str | None  # the routing key: Host header or x-paddleservice metadata
    pin: str  # x-paddleservice-canary: "true" / "false" / ""
    request_id: str
    protocol: str  # "http" or "grpc", for the log line
    timeout: float | None = None  # the caller's own deadline (gRPC), seconds; None: the activator's
    # Where it went, filled in by the dispatcher (the answer carries the side; the log line all three).
    service: str = "-"
    side: str = "-"
    replica: str = "-"
    # Tracing (only when runtime.tracing.ON): the caller's traceparent/tracestate, the request span, the
    # trace id (log line, exemplar) and traceparent (answer), and the headers to forward to this attempt.
    carrier: dict[str, str] | None = None
    span: Any = None
    trace_id: str = ""
    traceparent: str = ""
    outgoing: dict[str, str] | None = None
    upstream_seconds: float | None = None  # the answering attempt's time at its replica (proxy_duration)


@dataclass(slots=True)
class Started:
    """A request `Dispatcher.try_start` began: what its `finish` needs."""

    t0: float
    throttler: SideThrottler
    metrics: SideMetrics
    backend: Backend


class Dispatcher:
    def __init__(self, *, metrics: Metrics, access_log: AccessLog, wake: Wake, request_timeout: float,
                 queue_depth: int, index: Callable[[RoutesUpdate], int] = lambda u: u.activator_index or 0,
                 clock: Clock = time.monotonic) -> None:
        self.metrics = metrics
        self.access_log = access_log
        self.ledger = RequestLedger(access_log)  # each request's end: metrics and log line, on the next turn
        self.wake = wake
        self.request_timeout = request_timeout
        self.queue_depth = queue_depth
        self.index = index  # a routes update -> this activator's index among its `activators`
        self.clock = clock  # every time read on the path, the throttlers' included
        self.table = RouteTable()
        self.capacity = (1, 0)  # (activators sharing each replica, this one's index): throttler.shares
        self.throttlers: dict[tuple[str, str], SideThrottler] = {}
        self._pokers: dict[tuple[str, str], tuple[asyncio.Task, SideThrottler]] = {}
        self.last_arrival = 0.0  # clock; draining waits for a quiet spell
        # Set on each routes update, arrival and end of a request (and by the HTTP front door as its
        # connections settle): what draining and finishing wait on.
        self.changed = asyncio.Event()
        # Set by the first routes update: until then no host is unknown, only not known yet (a
        # restarted activator must hold its first requests, not answer them 404).
        self.synced = asyncio.Event()

    # ---- routes in, stats out ----------------------------------------------------------------
    def apply(self, update: RoutesUpdate) -> None:
        """A full table or a delta from the autoscaler. Removed services fail their held requests."""
        gone = self.table.apply(update)
        self.synced.set()
        self.changed.set()
        capacity = (update.activators, self.index(update) % update.activators)
        every = update.full or capacity != self.capacity  # a new capacity moves every replica's share
        self.capacity = capacity
        for r in self.table.routes.values() if every else update.services:
            for side, sr in r.routed_sides().items():
                self.throttler(r.service, side).update(sr, r.container_concurrency, *self.capacity)
        live = {(r.service, side) for r in self.table.routes.values() for side in r.routed_sides()}
        for key in [k for k in self.throttlers if k not in live]:
            t = self.throttlers.pop(key)
            why = "was removed" if key[0] in gone or key[0] not in self.table.routes else "has no such side now"
            t.fail_waiters(f"service {key[0]} ({key[1]}) {why}")

    def throttler(self, key: str, side: LoadSide) -> SideThrottler:
        t = self.throttlers.get((key, side))
        if t is None:
            t = self.throttlers[(key, side)] = SideThrottler(key, side, self.queue_depth, self.clock)
        return t

    def refresh_metrics(self) -> None:
        """Bring the metrics up to date (before a scrape): requests ended so far, gauges now."""
        self.ledger.flush()
        self.metrics.set_gauges(self.throttlers.values())

    def flush(self) -> None:
        """Account every request ended so far: metrics and access log (scrapes, tests, shutdown)."""
        self.ledger.flush()

    def take_stats(self) -> list[SideStats]:
        self.metrics.set_gauges(self.throttlers.values())
        return [t.take_stats() for t in self.throttlers.values()]

    def sides(self) -> Iterable[SideThrottler]:
        return list(self.throttlers.values())

    def busy(self) -> int:
        """Requests in flight or held, over every side (draining waits for 0)."""
        return sum(t.concurrency for t in self.throttlers.values())

    # ---- the path ----------------------------------------------------------------------------
    async def dispatch(self, call: Call, send: Callable[[Backend, float], Awaitable[R]],
                       label: Callable[[R | Failure], str]) -> R:
        """`send(backend, timeout)` forwards to one replica (raising NotSent or Broken, or TimeoutError
        when it has no answer within `timeout` seconds); `label` names an outcome for the metrics and the
        log line (its HTTP status or gRPC code)."""
        t0 = self.last_arrival = self.clock()
        self.changed.set()
        code = ""
        m: SideMetrics | None = None
        traced = otel.ON
        if traced:
            t0ns = tracing.now_ns()
            tracing.begin(call, call.carrier, t0ns)
        try:
            found = self.table.target(call.host)
            if found is None and not self.synced.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.synced.wait(), self.request_timeout)
                found = self.table.target(call.host)
            if found is None:
                raise Failure("not_found", f"no PaddleService serves host {call.host or ''!r}"
                                           f"{self.table.unknown_host_hint(call.host)}")
            route = found.route
            call.service = route.service
            # A tag route reaches its side whatever the split (a canary at 0 % too: held, poked, woken).
            side = found.tag or self.table.pick_side(route, call.pin)
            if side is None:
                raise Failure("bad_input", f"x-paddleservice-canary: true needs a canary, and {route.service} "
                                           "has none")
            call.side = side
            if call.span is not None:
                tracing.done_step("route", call, t0ns, **{"elasticserving.service": route.service,
                                                          "elasticserving.side": side})
            m = self.metrics.side(route.service, side)
            t = self.throttler(route.service, side)
            t.requests += 1
            timeout = self.request_timeout if call.timeout is None else min(call.timeout, self.request_timeout)
            result = await self._forward(t, m, call, send, t0 + timeout, timeout)
            code = label(result)
            return result
        except Failure as f:
            code = label(f)
            if m is not None and f.code in REJECTED:
                m.reject(REJECTED[f.code])
            raise
        except asyncio.CancelledError:
            code = label(Failure("cancelled", "the client went away"))
            raise
        finally:
            self._end(call, m, code, t0)

    def _end(self, call: Call, m: SideMetrics | None, code: str, t0: float) -> None:
        took = self.clock() - t0
        self.changed.set()
        if call.span is not None:
            tracing.end(call, code)
        self.ledger.record(m, call, code, took)

    # ---- the same path with no task, for a request that need not wait ------------------------
    def try_start(self, call: Call, way: Callable[[Backend], W | None]) -> tuple[Started, W] | None:
        """Route, pick the side and take a replica slot now, for a front door that then sends without a task
        (answering through `finish`), when nothing is to be waited for or chosen: routes known, tracing off,
        one side named (a tag host, or a service with no canary and no outgoing version, not pinned), a free
        slot, and `way(backend)` a way to send to it at once. Else None, nothing taken: take `dispatch`."""
        if otel.ON or call.pin or not self.synced.is_set():
            return None
        found = self.table.target(call.host)
        if found is None:
            return None
        route = found.route
        side = found.tag or ("default" if route.previous is None and "canary" not in route.sides else None)
        t = self.throttlers.get((route.service, side)) if side is not None else None
        backend = t.choose() if t is not None else None
        if backend is None:
            return None
        sender = way(backend)
        if sender is None:  # `dispatch` takes the same replica (nothing was taken): it connects
            return None
        t.take(backend)
        t0 = self.last_arrival = self.clock()
        self.changed.set()
        t.requests += 1
        call.service, call.side, call.replica = route.service, side, backend.id
        return Started(t0, t, self.metrics.side(route.service, side), backend), sender

    def finish(self, started: Started, call: Call, outcome: R | Failure | None,
               label: Callable[[R | Failure], str]) -> None:
        """The end of a request begun by `try_start`: its slot back, its accounting. `outcome` is the front
        door's answer, a Failure, or None (a bug in the front door, logged there), named by `label`."""
        started.throttler.release(started.backend)
        code = ""
        if isinstance(outcome, Failure):
            code = label(outcome)
            if outcome.code in REJECTED:
                started.metrics.reject(REJECTED[outcome.code])
        elif outcome is not None:
            code = label(outcome)
            call.upstream_seconds = self.clock() - started.t0  # sent as it started: its time at the replica
        self._end(call, started.metrics, code, started.t0)

    def failure(self, t: SideThrottler, backend: Backend, exc: Broken | TimeoutError, timeout: float) -> Failure:
        """What a request sent to `backend` that failed with `exc` answers (no resend: it was written)."""
        if isinstance(exc, Broken):
            return Failure("upstream_failed", f"replica {backend.id} of {t.key} ({t.side}) failed after the "
                                              f"request was sent: {exc}")
        return Failure("timeout", f"replica {backend.id} of {t.key} ({t.side}) did not answer within {timeout:g}s")

    async def _forward(self, t: SideThrottler, m: SideMetrics, call: Call,
                       send: Callable[[Backend, float], Awaitable[R]], deadline: float, timeout: float) -> R:
        tried: frozenset[str] = frozenset()  # replicas not reached, avoided while another is in rotation
        resends = 0
        while True:
            backend = t.try_acquire(tried)
            if backend is None:  # held: no free slot, or a side at zero
                cold = not t.has_ready()
                if cold:
                    self._ensure_poking(t, call.traceparent or None)
                waited_from = self.clock()
                # At zero the wait is the cold start; behind a full breaker it is the breaker's queue.
                wait = tracing.wait(call, cold) if call.span is not None else None
                try:
                    backend = await t.acquire(max(0.0, deadline - waited_from), tried)
                finally:
                    if wait is not None:
                        wait.end()
                m.cold_start.observe(self.clock() - waited_from)
            call.replica = backend.id
            sent = self.clock()
            attempt = tracing.proxy(call, backend, resends) if call.span is not None else None
            try:
                remaining = deadline - sent
                if remaining <= 0:
                    raise TimeoutError
                result = await send(backend, remaining)
                call.upstream_seconds = self.clock() - sent
                return result
            except NotSent as exc:
                # Nothing was sent: the retry rule (module docstring). Out of rotation: a dead node's
                # replicas are each found so, one connect each. Avoided while another replica is in rotation
                # (a stale verdict of the prober may put it back a moment); a lone replica takes the resend
                # once it is back: a lost SYN to it, fresh from zero, must not hold the request for a second.
                t.mark(backend, False)
                tried = tried | {backend.id}
                resends += 1
                if resends > MAX_RESENDS or self.clock() >= deadline:
                    raise Failure("upstream_failed", f"replica {backend.id} of {t.key} ({t.side}) could "
                                                     f"not be reached: {exc}") from None
                m.retries.value += 1
            except (Broken, TimeoutError) as exc:
                raise self.failure(t, backend, exc, timeout) from None
            finally:
                t.release(backend)
                if attempt is not None:
                    attempt.end()

    # ---- hold and poke -----------------------------------------------------------------------
    def _ensure_poking(self, t: SideThrottler, traceparent: str | None = None) -> None:
        """Wake the autoscaler for requests held by `t`, unless a poker for this very throttler runs
        (a service deleted and applied again has a new throttler: its requests get their own poke)."""
        poker = self._pokers.get((t.key, t.side))
        if poker is not None and not poker[0].done():
            if poker[1] is t:
                return
            poker[0].cancel()
        self._pokers[(t.key, t.side)] = (asyncio.create_task(self._poke_while_held(t, traceparent)), t)

    async def _poke_while_held(self, t: SideThrottler, traceparent: str | None = None) -> None:
        """Poke at once, then every second while requests are held. Ends as soon as nothing is held, so
        the next request at zero pokes at once instead of a second later."""
        while True:
            await self.wake(t.key, t.side, traceparent)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(t.unheld.wait(), 1.0)  # set by the last held request to leave
                return

    def close(self) -> None:
        for task, _ in self._pokers.values():
            task.cancel()
