"""A closed-loop HTTP load generator for the benchmarks (aiohttp, N concurrent connections).

Returns latencies and throughput; every benchmark drives servers on loopback through it."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import aiohttp


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100.0 * (len(s) - 1)))))]


async def closed_loop(url: str, body: bytes, connections: int, seconds: float,
                      headers: dict[str, str] | None = None) -> dict[str, Any]:
    """`connections` clients each sending the next request as soon as the last one is answered."""
    lat: list[float] = []
    errors = 0
    end = time.monotonic() + seconds
    conn = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def client() -> None:
            nonlocal errors
            while time.monotonic() < end:
                t0 = time.perf_counter()
                try:
                    async with s.post(url, data=body, headers=headers) as r:
                        await r.read()
                        ok = r.status == 200
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    lat.append(time.perf_counter() - t0)
                else:
                    errors += 1

        t0 = time.monotonic()
        await asyncio.gather(*(client() for _ in range(connections)))
        took = time.monotonic() - t0
    return {"requests": len(lat), "errors": errors, "rps": len(lat) / took,
            "p50_ms": percentile(lat, 50) * 1000, "p99_ms": percentile(lat, 99) * 1000,
            "mean_ms": (statistics.fmean(lat) * 1000) if lat else float("nan")}
