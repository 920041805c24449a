"""Readiness of replicas as this activator sees them, probed directly (`GET /ready`), beside the
dispatcher's path: it marks replicas in and out of rotation in their throttlers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

import aiohttp

from activator.throttler import Backend, Clock, SideThrottler

log = logging.getLogger("elasticserving.activator")

UNHEALTHY_EVERY = 0.25  # back in rotation as soon as it answers
HEALTHY_EVERY = 1.0  # out of rotation at the first failure
PROBE_TIMEOUT = 0.5


class Prober:
    def __init__(self, sides: Callable[[], Iterable[SideThrottler]], clock: Clock = time.monotonic) -> None:
        self.sides = sides
        self.clock = clock
        self._session: aiohttp.ClientSession | None = None

    async def run(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT))
        last: dict[int, float] = {}
        try:
            while True:
                await asyncio.sleep(UNHEALTHY_EVERY)
                await self.check(last)
        finally:
            await self._session.close()

    async def check(self, last: dict[int, float]) -> None:
        """One round: probe the replicas out of rotation, and those in it not probed for HEALTHY_EVERY
        (`last`: when each was probed). A verdict is applied only if nobody marked the replica while
        its probe ran: the round waits for its slowest probe (a dead node's, up to PROBE_TIMEOUT), and
        an answer from before a failed connect must not put the replica back."""
        now = self.clock()
        checks = []
        sides = list(self.sides())
        for t in sides:
            for b in list(t.backends.values()):
                if not b.healthy or now - last.get(id(b), 0.0) >= HEALTHY_EVERY:
                    last[id(b)] = now
                    checks.append((t, b, b.marks))
        if checks:
            results = await asyncio.gather(*(self.probe(b) for _, b, _ in checks))
            for (t, b, marks), ok in zip(checks, results, strict=True):
                if ok != b.healthy and b.marks == marks and t.backends.get(b.id) is b:
                    log.info("replica %s of %s (%s) is %s", b.id, t.key, t.side, "ready" if ok else "not ready")
                    t.mark(b, ok)
        live = {id(b) for t in sides for b in t.backends.values()}
        for k in [k for k in last if k not in live]:
            del last[k]

    async def probe(self, b: Backend) -> bool:
        assert self._session is not None
        try:
            async with self._session.get(f"{b.base_url}/ready") as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False
