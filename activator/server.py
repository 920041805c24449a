"""The activator's HTTP front door: resolve the service by Host, pick default or canary, take a
replica slot (waiting while the side scales from zero), forward the request and stream the answer.

Wires together routing, traffic split, throttlers, the autoscaler link and Prometheus metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import time
from typing import Any

import aiohttp
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from activator.control import ControlClient
from activator.http_proxy import HttpProxy
from activator.routing import HostIndex
from activator.throttler import Backend, SideThrottler
from activator.traffic import CanarySplitter

log = logging.getLogger("elasticserving.activator")

P = "elasticserving_activator_"
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m activator", description="ElasticServing activator")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--http-port", type=int, default=8080)
    p.add_argument("--grpc-port", type=int, default=8081)
    p.add_argument("--domain", default="example.com")
    p.add_argument("--autoscaler", default="http://127.0.0.1:8090", help="the autoscaler's control API")
    p.add_argument("--queue-depth", type=int, default=1000, help="requests held per service side")
    p.add_argument("--request-timeout", type=float, default=60.0, help="seconds to wait for a replica and answer")
    p.add_argument("--max-body-bytes", type=int, default=64 * 1024 * 1024)
    p.add_argument("--id", default=f"{socket.gethostname()}-{os.getpid()}")
    return p.parse_args(argv)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(P + "requests", "Requests by service, side and status code.",
                                ["service", "side", "code"], registry=r)
        self.latency = Histogram(P + "request_duration_seconds", "Request latency through the activator "
                                 "(waiting included).", ["service", "side"], buckets=BUCKETS, registry=r)
        self.proxy_latency = Histogram(P + "proxy_duration_seconds", "Time from forwarding to a replica to "
                                       "its answer.", ["service", "side"], buckets=BUCKETS, registry=r)
        self.cold_start = Histogram(P + "cold_start_wait_seconds", "Time requests waited for a replica.",
                                    ["service", "side"], buckets=BUCKETS, registry=r)
        self.queue_depth = Gauge(P + "queue_depth", "Requests held waiting for a replica slot.",
                                 ["service", "side"], registry=r)
        self.concurrency = Gauge(P + "concurrency", "Requests in flight or held.", ["service", "side"],
                                 registry=r)
        self.rejections = Counter(P + "breaker_rejections", "Requests refused: queue full or no replica in time.",
                                  ["service", "side", "reason"], registry=r)
        self.retries = Counter(P + "retries", "Requests retried on another replica after a connection failure.",
                               ["service", "side"], registry=r)
        self._sides: dict[tuple[str, str], SideMetrics] = {}

    def side(self, key: str, side: str) -> SideMetrics:
        """The label children of one service side, looked up once (the request path is hot)."""
        m = self._sides.get((key, side))
        if m is None:
            m = self._sides[(key, side)] = SideMetrics(self, key, side)
        return m


class SideMetrics:
    def __init__(self, metrics: Metrics, key: str, side: str) -> None:
        self._requests = metrics.requests
        self.key, self.side = key, side
        self._codes: dict[int, Any] = {}
        self.latency = metrics.latency.labels(key, side)
        self.proxy_latency = metrics.proxy_latency.labels(key, side)
        self.cold_start = metrics.cold_start.labels(key, side)
        self.retries = metrics.retries.labels(key, side)

    def count(self, code: int) -> None:
        c = self._codes.get(code)
        if c is None:
            c = self._codes[code] = self._requests.labels(self.key, self.side, str(code))
        c.inc()


class Activator:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.hosts = HostIndex()
        self.routes: dict[str, dict[str, Any]] = {}
        self.throttlers: dict[tuple[str, str], SideThrottler] = {}
        self.splitters: dict[str, CanarySplitter] = {}
        self.metrics = Metrics()
        self.control = ControlClient(args.autoscaler, args.id, self.apply_routes, self.collect_stats)
        self.session: aiohttp.ClientSession | None = None
        self._pokers: dict[tuple[str, str], tuple[asyncio.Task, SideThrottler]] = {}
        self._probe_task: asyncio.Task | None = None

    # ---- routes and stats ------------------------------------------------------------------
    def throttler(self, key: str, side: str) -> SideThrottler:
        t = self.throttlers.get((key, side))
        if t is None:
            t = self.throttlers[(key, side)] = SideThrottler(key, side, self.args.queue_depth)
        return t

    def apply_routes(self, services: list[dict[str, Any]]) -> None:
        self.hosts.update(services)
        self.routes = {r["service"]: r for r in services}
        live = set()
        for r in services:
            for side, sr in r["sides"].items():
                live.add((r["service"], side))
                self.throttler(r["service"], side).update(sr, r.get("container_concurrency", 0))
        for key in [k for k in self.throttlers if k not in live]:
            t = self.throttlers.pop(key)
            t.fail_waiters(f"service {key[0]} ({key[1]}) was removed")

    def collect_stats(self) -> list[dict[str, Any]]:
        out = [t.take_stats() for t in self.throttlers.values()]
        self.collect_gauges()
        return out

    # ---- waking the autoscaler -------------------------------------------------------------
    def ensure_poking(self, t: SideThrottler) -> None:
        """Wake the autoscaler for requests held by `t`, unless a poker for this very throttler runs
        (a service deleted and applied again has a new throttler: its requests get their own poke)."""
        poker = self._pokers.get((t.key, t.side))
        if poker is not None and not poker[0].done():
            if poker[1] is t:
                return
            poker[0].cancel()
        self._pokers[(t.key, t.side)] = (asyncio.create_task(self._poke_while_waiting(t)), t)

    async def _poke_while_waiting(self, t: SideThrottler) -> None:
        """Poke at once, then every second while requests are held, with fresh stats each time. Ends as
        soon as nothing is held, so the next request at zero pokes at once instead of a second later."""
        while True:
            await self.control.poke(t.key, t.side)
            await self.control.send_stats()
            for _ in range(20):
                await asyncio.sleep(0.05)
                if not t.waiters:
                    return

    # ---- replica health --------------------------------------------------------------------
    async def _probe_loop(self) -> None:
        """Readiness of replicas, probed directly: unhealthy ones every 250 ms (back in rotation as
        soon as they answer), healthy ones every second (out of rotation at the first failure)."""
        assert self.session is not None
        last: dict[int, float] = {}
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            checks = []
            for t in list(self.throttlers.values()):
                for b in list(t.backends.values()):
                    if not b.healthy or now - last.get(id(b), 0.0) >= 1.0:
                        last[id(b)] = now
                        checks.append((t, b))
            if not checks:
                continue
            results = await asyncio.gather(*(self._probe(b) for _, b in checks))
            for (t, b), ok in zip(checks, results, strict=True):
                if ok != b.healthy and t.backends.get(b.id) is b:
                    log.info("replica %s of %s (%s) is %s", b.id, t.key, t.side, "ready" if ok else "not ready")
                    t.mark(b, ok)
            live = {id(b) for t in self.throttlers.values() for b in t.backends.values()}
            for k in [k for k in last if k not in live]:
                del last[k]

    async def _probe(self, b: Backend) -> bool:
        assert self.session is not None
        try:
            async with self.session.get(f"{b.base_url}/ready", timeout=aiohttp.ClientTimeout(total=0.5)) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    # ---- the proxy -------------------------------------------------------------------------
    def pick_side(self, route: dict[str, Any], pin: str) -> str | None:
        """`default` or `canary`: pinned by the x-paddleservice-canary header, else the traffic split;
        None when the canary is pinned but the service has none."""
        pin = pin.strip().lower()
        has_canary = "canary" in route["sides"]
        if pin in ("true", "1", "yes"):
            return "canary" if has_canary else None
        if pin in ("false", "0", "no") or not has_canary:
            return "default"
        return self.splitters.setdefault(route["service"], CanarySplitter()).pick(route.get("canary_percent", 0))

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "routes_synced": self.control.synced.is_set()}

    def metrics_body(self) -> tuple[bytes, str]:
        self.collect_gauges()
        return generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST

    def collect_gauges(self) -> None:
        for (key, side), t in self.throttlers.items():
            self.metrics.queue_depth.labels(key, side).set(len(t.waiters))
            self.metrics.concurrency.labels(key, side).set(t.concurrency)

    # ---- lifecycle -------------------------------------------------------------------------
    async def run(self) -> int:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ttl_dns_cache=300)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        await self.control.start()
        proxy = HttpProxy(self)
        server = await asyncio.get_running_loop().create_server(
            proxy.protocol, self.args.host, self.args.http_port, backlog=1024, reuse_address=True)
        self._probe_task = asyncio.create_task(self._probe_loop())
        grpc_server = None
        if self.args.grpc_port:
            with contextlib.suppress(ImportError):
                from activator.grpc_proxy import start_grpc_proxy

                grpc_server = await start_grpc_proxy(self, self.args.host, self.args.grpc_port)
        log.info("activator %s listening on %s:%d (HTTP)%s, autoscaler %s", self.args.id, self.args.host,
                 self.args.http_port, f" and :{self.args.grpc_port} (gRPC)" if grpc_server else "",
                 self.args.autoscaler)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        if grpc_server is not None:
            await grpc_server.stop(5)
        self._probe_task.cancel()
        server.close()
        proxy.close()
        await self.control.close()
        await self.session.close()
        return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("ELASTICSERVING_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Everything loaded so far lives as long as the process: keep it out of the collector's scans, and
    # collect less often (the proxy allocates small, short-lived objects at a high rate).
    gc.freeze()
    gc.set_threshold(20000, 20, 20)
    try:
        import uvloop  # the proxy's transports are several times cheaper on uvloop
    except ImportError:
        return asyncio.run(Activator(parse_args(argv)).run())
    return uvloop.run(Activator(parse_args(argv)).run())
