"""The admin listener (`--admin-host`/`--admin-port`): /metrics, /healthz and /ready for Prometheus and
the platform's probes, kept off the public port so clients can neither scrape nor probe the activator."""

from __future__ import annotations

import socket
from collections.abc import Callable

from aiohttp import web

from activator.metrics import Metrics


def build_admin_app(metrics: Metrics, refresh: Callable[[], None], ready: Callable[[], str | None],
                    synced: Callable[[], bool]) -> web.Application:
    """`ready()` returns None when ready, else the reason it is not (answered 503)."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "routes_synced": synced()})

    async def readyz(_: web.Request) -> web.Response:
        reason = ready()
        if reason is None:
            return web.json_response({"ready": True})
        return web.json_response({"ready": False, "error": reason}, status=503)

    async def prometheus(request: web.Request) -> web.Response:
        refresh()  # requests ended since the last flush, gauges now
        body, ctype = metrics.exposition(request.headers.get("Accept"))  # OpenMetrics: with exemplars
        return web.Response(body=body, headers={"Content-Type": ctype})

    app = web.Application(client_max_size=1024)
    app.add_routes([web.get("/healthz", healthz), web.get("/ready", readyz), web.get("/metrics", prometheus)])
    return app


async def start_admin(app: web.Application, host: str, port: int,
                      sock: socket.socket | None = None) -> tuple[web.AppRunner, int]:
    """Listen on host:port (0: a free port), or on `sock` when given (a listening socket handed down);
    returns the runner and the port bound."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site: web.BaseSite = web.SockSite(runner, sock) if sock is not None else web.TCPSite(runner, host, port)
    await site.start()
    addresses = runner.addresses  # getsockname() of each listening socket: (host, port, ...)
    return runner, addresses[0][1] if addresses else port
