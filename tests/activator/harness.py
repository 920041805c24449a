"""Test harness for the activator: the HTTP front door and dispatcher in the test's loop with routes set
by hand, small raw replicas, a fake control API speaking autoscaler/wire.py, and real activator and
echo replica processes."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from activator.access_log import AccessLog
from activator.dispatcher import Dispatcher
from activator.http_front import HttpFront
from activator.limits import FrontLimits
from activator.metrics import Metrics
from autoscaler.wire import Endpoint, Poke, Route, RoutesUpdate, SideRoute, StatsReport
from tests.helpers import ROOT, free_port

HOST = b"svc.ns.example.com"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def route(key: str = "ns/svc", ports: tuple[int, ...] = (), cc: int = 0, canary: tuple[int, ...] | None = None,
          canary_percent: int = 0, error: str | None = None, grpc: dict[int, int] | None = None,
          tags: bool = False, previous: tuple[int, ...] | None = None, previous_percent: int = 0,
          canary_error: str | None = None) -> Route:
    """A route as the controller publishes it; `tags`: with the tag hosts of its sides."""
    ns, name = key.split("/")

    def side(ps: tuple[int, ...], err: str | None = error) -> SideRoute:
        eps = tuple(Endpoint(id=f"r{p}", host="127.0.0.1", http_port=p, grpc_port=(grpc or {}).get(p))
                    for p in ps)
        return SideRoute(ready=bool(ps), error=err, desired=len(ps), endpoints=eps)

    sides = {"default": side(ports)}
    if canary is not None:
        sides["canary"] = side(canary, canary_error or error)
    tag_hosts = {t: (f"{t}-{name}.{ns}.example.com", f"{t}-{name}.{ns}") for t in sides} if tags else {}
    return Route(service=key, name=name, namespace=ns, hosts=(f"{name}.{ns}.example.com", f"{name}.{ns}"),
                 canary_percent=canary_percent, container_concurrency=cc, sides=sides, tags=tag_hosts,
                 previous=side(previous) if previous is not None else None, previous_percent=previous_percent)


def full(*routes: Route, version: int = 1, epoch: str = "e1", activators: int = 1) -> RoutesUpdate:
    return RoutesUpdate(epoch=epoch, version=version, full=True, services=routes, activators=activators)


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, v in (ln.split(b":", 1) for ln in lines[1:] if b":" in ln))
    body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return lines[0], headers, body


def ok_answer(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s" % (
        extra, len(body), body)


async def echo_replica(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Keep-alive replica answering each request with its request line, headers and body."""
    try:
        while True:
            line, headers, body = await read_request(reader)
            out = json.dumps({"line": line.decode("latin-1"),
                              "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in headers.items()},
                              "body": body.decode(errors="replace")}).encode()
            writer.write(ok_answer(out))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        writer.close()


class Setup:
    """An HTTP front door + dispatcher on a loopback port, with pokes recorded."""

    def __init__(self, limits: FrontLimits | None = None, request_timeout: float = 3.0, index: int = 0) -> None:
        self.servers: list[asyncio.base_events.Server] = []
        self.pokes: list[tuple[str, str]] = []
        self.log = io.StringIO()
        self.metrics = Metrics()
        self.access_log = AccessLog("json", self.log)
        self.dispatcher: Dispatcher = Dispatcher(metrics=self.metrics, access_log=self.access_log, wake=self._wake,
                                                 request_timeout=request_timeout, queue_depth=100,
                                                 index=lambda n: index)
        self.front = HttpFront(self.dispatcher, limits or FrontLimits(max_body_bytes=1000))
        self.port = 0

    async def _wake(self, key: str, side: str, traceparent: str | None = None) -> None:
        self.pokes.append((key, side))

    async def start(self) -> None:
        server = await asyncio.get_running_loop().create_server(self.front.protocol, "127.0.0.1", 0)
        self.servers.append(server)
        self.port = server.sockets[0].getsockname()[1]

    async def replica(self, handler: Handler) -> int:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        self.servers.append(server)
        return server.sockets[0].getsockname()[1]

    def route(self, *ports: int, cc: int = 0, version: int = 1) -> None:
        self.dispatcher.apply(full(route(ports=ports, cc=cc), version=version))

    def throttler(self):
        return self.dispatcher.throttler("ns/svc", "default")

    def log_lines(self) -> list[dict]:
        self.dispatcher.flush()
        return [json.loads(line) for line in self.log.getvalue().splitlines()]

    async def raw(self, data: bytes, read_until_close: bool = True, timeout: float = 5) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(data)
        await writer.drain()
        out = await asyncio.wait_for(reader.read(), timeout) if read_until_close else b""
        writer.close()
        return out

    def close(self) -> None:
        self.front.close()
        self.dispatcher.close()
        for s in self.servers:
            s.close()


def responses(raw: bytes) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Split a byte stream of HTTP/1.1 answers with Content-Length."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = dict((k.strip().lower(), v.strip()) for k, v in (ln.split(b":", 1) for ln in lines[1:]))
        n = int(headers.get(b"content-length", b"0"))
        out.append((int(lines[0].split()[1]), headers, rest[:n]))
        raw = rest[n:]
    return out


class FakeControl:
    """The autoscaler's control API as activators see it (wire.py): routes long-poll with epoch/version,
    stats and pokes recorded, optional bearer token, and a switch to answer 503 (standby)."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.updates: list[RoutesUpdate] = []  # answered in order; the last one repeats after a wait
        self.changed = asyncio.Event()
        self.stats: list[StatsReport] = []
        self.pokes: list[Poke] = []
        self.polls: list[dict[str, str]] = []
        self.auth_seen: list[str | None] = []
        self.standby = False
        self.answer_at_once = False  # answer a poll with the last update without waiting (a misbehaving server)
        self.poll_times: list[float] = []  # loop time of each poll's arrival
        self.next = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    def publish(self, update: RoutesUpdate) -> None:
        self.updates.append(update)
        self.changed.set()

    def _auth_ok(self, request: web.Request) -> bool:
        self.auth_seen.append(request.headers.get("Authorization"))
        return self.token is None or request.headers.get("Authorization") == f"Bearer {self.token}"

    async def routes(self, request: web.Request) -> web.Response:
        if not self._auth_ok(request):
            return web.json_response({"error": "bad token"}, status=401)
        if self.standby:
            return web.json_response({"error": "standby"}, status=503)
        self.polls.append(dict(request.query))
        self.poll_times.append(asyncio.get_running_loop().time())
        if self.next >= len(self.updates) and not self.answer_at_once:
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(float(request.query.get("wait", "0")), 2.0))
            except TimeoutError:
                pass
        if self.next >= len(self.updates):
            if not self.updates:
                return web.json_response({"error": "nothing yet"}, status=503)
            update = self.updates[-1]
        else:
            update = self.updates[self.next]
            self.next += 1
        return web.Response(text=update.model_dump_json(), content_type="application/json")

    async def post_stats(self, request: web.Request) -> web.Response:
        if not self._auth_ok(request):
            return web.json_response({"error": "bad token"}, status=401)
        assert request.content_type == "application/json"
        self.stats.append(StatsReport.model_validate_json(await request.read()))
        return web.json_response({"accepted": 1})

    async def post_poke(self, request: web.Request) -> web.Response:
        if not self._auth_ok(request):
            return web.json_response({"error": "bad token"}, status=401)
        assert request.content_type == "application/json"
        self.pokes.append(Poke.model_validate_json(await request.read()))
        return web.json_response({"poked": True})

    async def start(self) -> None:
        app = web.Application()
        app.add_routes([web.get("/v1/routes", self.routes), web.post("/v1/stats", self.post_stats),
                        web.post("/v1/poke", self.post_poke)])
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def start_replica(*args: str, name: str = "replica") -> tuple[asyncio.subprocess.Process, int]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(sys.executable, str(ROOT / "tests/fixtures/echo_replica.py"),
                                                "--port", str(port), *args,
                                                env={**os.environ, "ELASTICSERVING_REPLICA": name})
    return proc, port


async def start_activator(control: FakeControl, *extra: str, stderr=None) -> tuple[asyncio.subprocess.Process, int, int]:
    http, admin = free_port(), free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "activator", "--host", "127.0.0.1", "--http-port", str(http), "--grpc-port", "0",
        "--admin-host", "127.0.0.1", "--admin-port", str(admin), "--autoscaler", control.url, *extra, cwd=ROOT,
        stderr=stderr)
    return proc, http, admin


async def poll(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with_value = await predicate()
        if with_value:
            return with_value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def status(session: aiohttp.ClientSession, url: str) -> int:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
            return r.status
    except (aiohttp.ClientError, TimeoutError):
        return 0
