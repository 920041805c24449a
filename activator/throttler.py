"""Per service side: ready replicas with their in-flight slots (breakers), and the FIFO of requests
held until a slot frees or a replica turns ready. The proxy acquires a replica here and releases it.

Also integrates concurrency over time for the autoscaler's stats (held requests count as load).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from dataclasses import dataclass
from typing import Any


class Unavailable(Exception):
    """No replica within the deadline, or the side's replicas fail: answered 503 with the reason."""

    def __init__(self, reason: str, retry_after: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


@dataclass(eq=False)
class Backend:
    id: str
    host: str
    http_port: int
    grpc_port: int | None
    inflight: int = 0
    healthy: bool = True

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"


class SideThrottler:
    def __init__(self, key: str, side: str, queue_depth: int = 1000) -> None:
        self.key, self.side = key, side
        self.queue_depth = queue_depth
        self.capacity = 0  # per replica; 0 = unlimited
        self.backends: dict[str, Backend] = {}
        self.error: str | None = None
        self.desired = 0
        self.waiters: collections.deque[tuple[asyncio.Future, frozenset[str]]] = collections.deque()
        self._rr = itertools.count()
        self._orphan_inflight = 0  # requests still running on replicas that left the route
        # stats
        self.requests = 0
        self._area = 0.0
        self._last = time.monotonic()
        self._window_start = self._last

    # ---- load accounting -------------------------------------------------------------------
    @property
    def inflight(self) -> int:
        return sum(b.inflight for b in self.backends.values()) + self._orphan_inflight

    @property
    def concurrency(self) -> int:
        return self.inflight + len(self.waiters)

    def _tick(self) -> None:
        now = time.monotonic()
        self._area += self.concurrency * (now - self._last)
        self._last = now

    def take_stats(self) -> dict[str, Any]:
        self._tick()
        span = max(1e-6, self._last - self._window_start)
        stats = {"service": self.key, "side": self.side, "average_concurrency": self._area / span,
                 "concurrency": self.concurrency, "requests": self.requests, "window": span}
        self._area, self.requests, self._window_start = 0.0, 0, self._last
        return stats

    # ---- routes ----------------------------------------------------------------------------
    def update(self, side_route: dict[str, Any], capacity: int) -> None:
        self._tick()
        self.capacity = max(0, int(capacity))
        self.error = side_route.get("error")
        self.desired = int(side_route.get("desired", 0))
        seen = set()
        for ep in side_route.get("endpoints", []):
            seen.add(ep["id"])
            if ep["id"] not in self.backends:
                self.backends[ep["id"]] = Backend(ep["id"], ep["host"], int(ep["http_port"]), ep.get("grpc_port"))
        for bid in [b for b in self.backends if b not in seen]:
            gone = self.backends.pop(bid)
            self._orphan_inflight += gone.inflight  # their requests finish; they just leave the pool
        self._dispatch()
        if self.error and not self._healthy():
            self.fail_waiters(self.error)

    def _healthy(self) -> list[Backend]:
        return [b for b in self.backends.values() if b.healthy]

    def mark(self, backend: Backend, healthy: bool) -> None:
        backend.healthy = healthy
        if healthy:
            self._dispatch()

    # ---- slots -----------------------------------------------------------------------------
    def _free(self, exclude: frozenset[str]) -> Backend | None:
        cands = [b for b in self._healthy() if b.id not in exclude
                 and (self.capacity == 0 or b.inflight < self.capacity)]
        if not cands:
            return None
        least = min(b.inflight for b in cands)
        ties = [b for b in cands if b.inflight == least]
        return ties[next(self._rr) % len(ties)]

    def _dispatch(self) -> None:
        while self.waiters:
            fut, exclude = self.waiters[0]
            if fut.done():
                self.waiters.popleft()
                continue
            b = self._free(exclude)
            if b is None:
                return
            self.waiters.popleft()
            b.inflight += 1
            fut.set_result(b)

    def fail_waiters(self, reason: str) -> None:
        self._tick()
        while self.waiters:
            fut, _ = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(Unavailable(reason))

    async def acquire(self, timeout: float, exclude: frozenset[str] = frozenset()) -> Backend:
        """A replica with a free slot, waiting (FIFO) up to `timeout` seconds."""
        self._tick()
        if not self.waiters:
            b = self._free(exclude)
            if b is not None:
                b.inflight += 1
                return b
        if self.error and not self._healthy():
            raise Unavailable(self.error)
        if len(self.waiters) >= self.queue_depth:
            raise Unavailable(f"too many requests waiting for {self.key} ({self.side}): queue of "
                              f"{self.queue_depth} is full", retry_after=1)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self.waiters.append((fut, exclude))
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(fut.result())  # got a slot at the very last moment: give it back
            reason = (f"no ready replica of {self.key} ({self.side}) within {timeout:g}s"
                      + (f"; last error: {self.error}" if self.error else ""))
            raise Unavailable(reason) from None
        except asyncio.CancelledError:  # client went away: free the slot or the queue place
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(fut.result())
            else:
                fut.cancel()
            raise
        finally:
            self._tick()
            self._remove(fut)

    def _remove(self, fut: asyncio.Future) -> None:
        for i, (f, _) in enumerate(self.waiters):
            if f is fut:
                del self.waiters[i]
                return

    def release(self, backend: Backend) -> None:
        self._tick()
        if self.backends.get(backend.id) is backend:
            backend.inflight -= 1
        else:
            self._orphan_inflight = max(0, self._orphan_inflight - 1)
        self._dispatch()
