"""Capacity and the hold queue of one service side: its replicas with their in-flight slots (breakers),
and the FIFO of requests held until a slot frees or a replica turns ready. The dispatcher acquires here.

Capacity is this activator's share of each replica (`shares`, after Knative's throttler.go: the
replica's containerConcurrency divided among the activators). Concurrency integrated over time is the
load reported to the autoscaler; held requests count as load, so a side at zero asks for replicas.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass

from activator.outcomes import Failure
from autoscaler.wire import LoadSide, SideRoute, SideStats

MAX_WINDOW = 60.0  # wire.SideStats refuses longer windows; a stalled reporter sends at most this
Clock = Callable[[], float]  # monotonic seconds: activator.main passes one down the data path (tests a fake)


def shares(pod_ids: list[str], container_concurrency: int, activators: int, index: int) -> dict[str, int | None]:
    """This activator's slots on each replica (None: unlimited, 0: not used by this activator).

    Rules, so that N activators together never put more than `container_concurrency` requests on a pod:
      1. cc == 0: every pod, unlimited (the replica takes whatever comes).
      2. pods >= N: pod j (sorted by id) belongs to activator j % N, at full cc; the others leave it alone.
      3. pods < N: activator a uses pod a % pods only, with floor(cc / sharers) slots, sharers being the
         activators mapped to that pod; 0 slots means none, and its requests are held (they count as
         load, so the autoscaler adds pods until rule 2 applies).
    """
    n = max(1, activators)
    index %= n
    pods = sorted(pod_ids)
    if container_concurrency <= 0:
        return dict.fromkeys(pods)
    if len(pods) >= n:
        return {p: (container_concurrency if j % n == index else 0) for j, p in enumerate(pods)}
    if not pods:
        return {}
    mine = index % len(pods)
    sharers = len(range(mine, n, len(pods)))
    return {p: (container_concurrency // sharers if j == mine else 0) for j, p in enumerate(pods)}


@dataclass(eq=False)
class Backend:
    """One replica as this activator uses it."""

    id: str
    host: str
    http_port: int
    grpc_port: int | None
    slots: int | None = None  # this activator's share of the replica; None = unlimited
    inflight: int = 0
    healthy: bool = True
    marks: int = 0  # verdicts so far (the prober's and failed connects'): a probe's answer older than one is dropped

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"


class SideThrottler:
    """Breakers and the hold queue of one (service, side)."""

    def __init__(self, key: str, side: LoadSide, queue_depth: int = 1000, clock: Clock = time.monotonic) -> None:
        self.key, self.side = key, side
        self.queue_depth = queue_depth
        self.clock = clock
        self.backends: dict[str, Backend] = {}
        self.error: str | None = None
        self.waiters: collections.deque[tuple[asyncio.Future, frozenset[str]]] = collections.deque()
        self.unheld = asyncio.Event()  # cleared by each held request, set by the last to leave `acquire`
        self.unheld.set()
        self._rr = 0  # slots taken so far: ties among the least busy replicas go round
        self.inflight = 0  # requests holding a slot: acquired, not released yet (on replicas that left the route too)
        self.requests = 0  # arrivals since the last stats
        self._area = 0.0
        self._last = clock()
        self._window_start = self._last

    # ---- load accounting -------------------------------------------------------------------
    @property
    def concurrency(self) -> int:
        return self.inflight + len(self.waiters)

    def _tick(self) -> None:
        now = self.clock()
        self._area += self.concurrency * (now - self._last)
        self._last = now

    def take_stats(self) -> SideStats:
        self._tick()
        span = max(1e-6, self._last - self._window_start)
        stats = SideStats(service=self.key, side=self.side, average_concurrency=self._area / span,
                          concurrency=self.concurrency, requests=self.requests, window=min(span, MAX_WINDOW))
        self._area, self.requests, self._window_start = 0.0, 0, self._last
        return stats

    # ---- routes ----------------------------------------------------------------------------
    def update(self, route: SideRoute, container_concurrency: int, activators: int = 1, index: int = 0) -> None:
        """Take the side's replicas from the routes; replicas that left keep their running requests."""
        self._tick()
        self.error = route.error
        slots = shares([ep.id for ep in route.endpoints], container_concurrency, activators, index)
        for ep in route.endpoints:
            b = self.backends.get(ep.id)
            if b is None or (b.host, b.http_port, b.grpc_port) != (ep.host, ep.http_port, ep.grpc_port):
                b = self.backends[ep.id] = Backend(ep.id, ep.host, ep.http_port, ep.grpc_port)
            b.slots = slots[ep.id]
        for bid in [b for b in self.backends if b not in slots]:
            del self.backends[bid]  # its running requests still count in `inflight` until released
        self._dispatch()
        if self.error and not any(b.healthy for b in self.backends.values()):
            self.fail_waiters(self.error)

    def has_ready(self) -> bool:
        return any(b.healthy and b.slots != 0 for b in self.backends.values())

    def mark(self, backend: Backend, healthy: bool) -> None:
        backend.healthy = healthy
        backend.marks += 1
        if healthy:
            self._dispatch()

    # ---- slots -----------------------------------------------------------------------------
    def _free(self, avoid: frozenset[str]) -> Backend | None:
        """The least busy replica in rotation with a free slot; one not in `avoid` (the replicas a resent
        request could not reach) when there is such a one, else any: a lone replica back in rotation
        (the prober heard it again) takes its own resend."""
        # One pass, building no list beyond the ties: on every request (~1 us less than filtering twice).
        ties: list[Backend] = []  # the least busy candidates so far, in order
        avoided: list[Backend] = []  # ... of the ones in `avoid`
        for b in self.backends.values():
            if not b.healthy or (b.slots is not None and b.inflight >= b.slots):
                continue
            best = avoided if avoid and b.id in avoid else ties
            if not best or b.inflight < best[0].inflight:
                best[:] = [b]
            elif b.inflight == best[0].inflight:
                best.append(b)
        ties = ties or avoided
        if not ties:
            return None
        return ties[self._rr % len(ties)] if len(ties) > 1 else ties[0]

    def _take(self, b: Backend) -> None:
        b.inflight += 1
        self.inflight += 1
        self._rr += 1  # the next tie goes to the next replica

    def _dispatch(self) -> None:
        while self.waiters:
            fut, avoid = self.waiters[0]
            if fut.done():
                self.waiters.popleft()
                continue
            b = self._free(avoid)
            if b is None:
                return
            self.waiters.popleft()
            self._take(b)
            fut.set_result(b)

    def fail_waiters(self, reason: str) -> None:
        self._tick()
        while self.waiters:
            fut, _ = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(Failure("unavailable", reason))

    def choose(self, avoid: frozenset[str] = frozenset()) -> Backend | None:
        """The replica `try_acquire` would take a slot on now, without taking it."""
        return None if self.waiters else self._free(avoid)

    def take(self, backend: Backend) -> Backend:
        """A slot on `backend`, just returned by `choose`."""
        self._tick()
        self._take(backend)
        return backend

    def try_acquire(self, avoid: frozenset[str] = frozenset()) -> Backend | None:
        """A replica with a free slot now (see _free for `avoid`), unless requests are held before this
        one (FIFO)."""
        b = self.choose(avoid)
        return self.take(b) if b is not None else None

    async def acquire(self, timeout: float, avoid: frozenset[str] = frozenset()) -> Backend:
        """A replica with a free slot, waiting (FIFO) up to `timeout` seconds; Failure otherwise."""
        b = self.try_acquire(avoid)
        if b is not None:
            return b
        self._tick()
        if self.error and not any(b.healthy for b in self.backends.values()):
            raise Failure("unavailable", self.error)
        if len(self.waiters) >= self.queue_depth:
            raise Failure("overloaded", f"too many requests waiting for {self.key} ({self.side}): queue of "
                                        f"{self.queue_depth} is full", retry_after=1)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self.waiters.append((fut, avoid))
        self.unheld.clear()
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            # Race 1: the slot was handed over just as the deadline fired: give it back.
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(fut.result())
            reason = (f"no ready replica of {self.key} ({self.side}) within {timeout:g}s"
                      + (f"; last error: {self.error}" if self.error else ""))
            raise Failure("unavailable", reason) from None
        except asyncio.CancelledError:
            # Race 2: the client left after its slot was granted but before it ran: free the slot.
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(fut.result())
            else:
                fut.cancel()
            raise
        finally:
            self._tick()
            self._remove(fut)
            if not self.waiters:
                self.unheld.set()

    def _remove(self, fut: asyncio.Future) -> None:
        for i, (f, _) in enumerate(self.waiters):
            if f is fut:
                del self.waiters[i]
                return

    def release(self, backend: Backend) -> None:
        self._tick()
        backend.inflight -= 1  # (a replica that left the route keeps its count until its last release)
        self.inflight -= 1
        self._dispatch()
