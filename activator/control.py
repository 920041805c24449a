"""The activator's link to the autoscaler: long-polls routes, sends per-second stats and pokes.

If the autoscaler goes away the last routes stay in force, so serving continues on current replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import aiohttp

log = logging.getLogger("elasticserving.activator.control")


class ControlClient:
    def __init__(self, base_url: str, activator_id: str, on_routes: Callable[[list[dict[str, Any]]], None],
                 collect_stats: Callable[[], list[dict[str, Any]]]) -> None:
        self.base = base_url.rstrip("/")
        self.id = activator_id
        self.on_routes = on_routes
        self.collect_stats = collect_stats
        self.version = -1
        self.synced = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._tasks = [asyncio.create_task(self._watch_routes(), name="routes"),
                       asyncio.create_task(self._report_loop(), name="stats")]

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._session:
            await self._session.close()

    async def _watch_routes(self) -> None:
        assert self._session is not None
        backoff = 0.1
        while True:
            try:
                async with self._session.get(f"{self.base}/v1/routes", params={"since": str(self.version),
                                                                              "wait": "30"},
                                             timeout=aiohttp.ClientTimeout(total=40)) as resp:
                    resp.raise_for_status()
                    body = await resp.json()
                self.version = int(body["version"])
                self.on_routes(body["services"])
                self.synced.set()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("routes from %s unavailable (%s); keeping the last routes", self.base, exc)
                await asyncio.sleep(backoff)
                backoff = min(2.0, backoff * 2)

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            await self.send_stats()

    async def send_stats(self) -> None:
        stats = self.collect_stats()
        if not stats or self._session is None:
            return
        with contextlib.suppress(Exception):
            async with self._session.post(f"{self.base}/v1/stats", json={"activator": self.id, "stats": stats},
                                          timeout=aiohttp.ClientTimeout(total=2)):
                pass

    async def poke(self, key: str, side: str) -> None:
        if self._session is None:
            return
        with contextlib.suppress(Exception):
            async with self._session.post(f"{self.base}/v1/poke", json={"service": key, "side": side},
                                          timeout=aiohttp.ClientTimeout(total=2)):
                pass
