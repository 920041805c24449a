"""`python -m activator`: command line and wiring only. Builds the path

    http_front / grpc_front -> dispatcher (routing, throttler) -> upstream / gRPC channel -> replica

with autoscaler_link feeding routes down and load up, prober marking replicas, admin serving
/metrics /healthz /ready on its own port; then runs until SIGTERM and drains.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable

import runtime.tracing as otel
from activator.access_log import AccessLog
from activator.admin import build_admin_app, start_admin
from activator.autoscaler_link import AutoscalerLink, Token
from activator.dispatcher import Dispatcher
from activator.http_front import HttpFront
from activator.limits import FrontLimits
from activator.metrics import Metrics
from activator.prober import Prober
from activator.throttler import Clock
from autoscaler.wire import RoutesUpdate

log = logging.getLogger("elasticserving.activator")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m activator", description="ElasticServing activator")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--http-port", type=int, default=8080)
    p.add_argument("--grpc-port", type=int, default=8081, help="0: no gRPC front door")
    p.add_argument("--admin-host", default="0.0.0.0", help="address of /metrics, /healthz, /ready")
    p.add_argument("--http-fd", type=int, default=None,
                   help="serve HTTP on this inherited listening socket instead of binding --host/--http-port "
                        "(a supervisor that holds the port across restarts, as `elasticserving up` does)")
    p.add_argument("--admin-fd", type=int, default=None,
                   help="serve /metrics, /healthz, /ready on this inherited listening socket")
    p.add_argument("--admin-port", type=int, default=8082, help="port of /metrics, /healthz, /ready (0: a free "
                   "port, logged)")
    p.add_argument("--domain", default="example.com")
    p.add_argument("--autoscaler", default="http://127.0.0.1:8090", help="the autoscaler's control API")
    p.add_argument("--control-token-file", help="bearer token for the control API (read again on a 401); "
                   "default: env ELASTICSERVING_CONTROL_TOKEN, else no token")
    p.add_argument("--id", default=f"{socket.gethostname()}-{os.getpid()}")
    p.add_argument("--activator-index", type=int, default=None,
                   help="this activator's index among the N sharing each replica (default: derived from --id)")
    p.add_argument("--queue-depth", type=int, default=1000, help="requests held per service side")
    p.add_argument("--request-timeout", type=float, default=60.0, help="seconds to wait for a replica and answer")
    p.add_argument("--drain-seconds", type=float, default=30.0,
                   help="on SIGTERM, at most this long to finish held and in-flight requests")
    p.add_argument("--drain-quiet-seconds", type=float, default=1.0,
                   help="on SIGTERM, exit once nothing was in flight or held for this long")
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    d = FrontLimits()
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help="request body (413)")
    p.add_argument("--max-request-line", type=int, default=d.max_request_line, help="request target (414)")
    p.add_argument("--max-header-bytes", type=int, default=d.max_header_bytes, help="request headers (431)")
    p.add_argument("--max-header-fields", type=int, default=d.max_header_fields, help="request headers (431)")
    p.add_argument("--max-answer-bytes", type=int, default=d.max_answer_bytes, help="a replica's answer (502)")
    p.add_argument("--max-pipelined-bytes", type=int, default=d.max_pipelined_bytes,
                   help="requests read ahead on one connection (reading pauses)")
    p.add_argument("--max-buffered-bytes", type=int, default=d.max_buffered_bytes,
                   help="request and answer bytes held by the whole process (503)")
    p.add_argument("--max-connections", type=int, default=d.max_connections, help="open client connections (503)")
    p.add_argument("--header-timeout", type=float, default=d.header_timeout, help="seconds to send headers (408)")
    p.add_argument("--body-timeout", type=float, default=d.body_timeout, help="seconds to send a body (408)")
    p.add_argument("--idle-timeout", type=float, default=d.idle_timeout, help="idle keep-alive connections close")
    args = p.parse_args(argv)
    try:  # every field of FrontLimits is a flag above
        args.limits = FrontLimits(**{f.name: getattr(args, f.name) for f in dataclasses.fields(FrontLimits)})
    except ValueError as exc:
        p.error(str(exc))
    return args


def stable_index(activator_id: str, activators: int) -> int:
    """This activator's index when neither --activator-index nor the routes give one (an autoscaler that
    does not send `activator_index`): a hash of its id. Two activators can collide, and then share
    replicas beyond their share."""
    return int.from_bytes(hashlib.sha256(activator_id.encode()).digest()[:8], "big") % max(1, activators)


def index_source(activator_id: str, fixed: int | None) -> Callable[[RoutesUpdate], int]:
    """Where this activator's index comes from: the flag, else the autoscaler's `activator_index`
    (its position among the live activators' sorted ids), else a hash of its id."""
    if fixed is not None:
        return lambda update: fixed
    return lambda update: (update.activator_index if update.activator_index is not None
                           else stable_index(activator_id, update.activators))


def inherited_socket(fd: int) -> socket.socket:
    """A listening TCP socket handed down by the parent (`--http-fd`/`--admin-fd`)."""
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock


class Activator:
    """The wired pieces and their lifecycle (nothing on the request path reaches back in here)."""

    def __init__(self, args: argparse.Namespace, clock: Clock = time.monotonic) -> None:
        self.args = args
        self.clock = clock  # the one clock of the process: every piece below reads this one
        self.metrics = Metrics()
        self.access_log = AccessLog(args.log_format)
        self.link = AutoscalerLink(args.autoscaler, args.id, self.on_routes, lambda: self.dispatcher.take_stats(),
                                   Token(args.control_token_file), clock)
        self.dispatcher = Dispatcher(metrics=self.metrics, access_log=self.access_log, wake=self.link.wake,
                                     request_timeout=args.request_timeout, queue_depth=args.queue_depth,
                                     index=index_source(args.id, args.activator_index), clock=clock)
        self.http = HttpFront(self.dispatcher, args.limits)
        self.grpc_front = None
        self.draining = False
        self.ports: dict[str, int] = {}

    def on_routes(self, update: RoutesUpdate) -> None:
        self.dispatcher.apply(update)
        self.http.pool.prune(self.http.live_upstreams())
        if self.grpc_front is not None:
            self.grpc_front.channels.prune(f"{b.host}:{b.grpc_port}" for t in self.dispatcher.sides()
                                           for b in t.backends.values() if b.grpc_port)

    def not_ready(self) -> str | None:
        if self.draining:
            return "draining (SIGTERM received)"
        if not self.link.synced.is_set():
            return "no routes from the autoscaler yet"
        return None

    async def run(self) -> int:
        a = self.args
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.link.start()
        if a.http_fd is not None:
            server = await loop.create_server(self.http.protocol, sock=inherited_socket(a.http_fd), backlog=1024)
        else:
            server = await loop.create_server(self.http.protocol, a.host, a.http_port, backlog=1024,
                                              reuse_address=True)
        self.ports["http"] = server.sockets[0].getsockname()[1]
        admin, self.ports["admin"] = await start_admin(
            build_admin_app(self.metrics, self.dispatcher.refresh_metrics, self.not_ready,
                            self.link.synced.is_set), a.admin_host, a.admin_port,
            sock=None if a.admin_fd is None else inherited_socket(a.admin_fd))
        prober = asyncio.create_task(Prober(self.dispatcher.sides, self.clock).run())
        grpc_server = None
        if a.grpc_port:
            from activator.grpc_front import start_grpc_front  # grpcio is optional

            grpc_server, self.grpc_front, self.ports["grpc"] = await start_grpc_front(
                self.dispatcher, a.limits, a.host, a.grpc_port, grace=a.request_timeout)
        log.info("activator %s listening on %s:%d (HTTP)%s, admin %s:%d, autoscaler %s", a.id, a.host,
                 self.ports["http"], f" and :{self.ports['grpc']} (gRPC)" if grpc_server else "", a.admin_host,
                 self.ports["admin"], a.autoscaler)
        await stop.wait()
        await self.drain()
        # Past the drain: accept nothing new, but a request already read is still answered (a client
        # that sent it has no way to know whether it ran), then close.
        server.close()
        finishing = [self.http.finish(a.request_timeout)]
        if grpc_server is not None:
            finishing.append(grpc_server.stop(a.request_timeout))  # in-flight calls finish; no new ones
        await asyncio.gather(*finishing)
        self.http.close()
        prober.cancel()
        self.dispatcher.close()
        self.dispatcher.flush()  # requests ended so far: metrics and access log
        await self.link.close()
        await admin.cleanup()
        if self.grpc_front is not None:
            await self.grpc_front.channels.close()
        return 0

    async def drain(self) -> None:
        """Fail readiness at once; keep serving (new connections too: an endpoint removal takes time to
        reach every client) until nothing was held or in flight for --drain-quiet-seconds, or until
        --drain-seconds, whichever comes first."""
        self.draining = self.http.draining = True
        a, changed = self.args, self.dispatcher.changed
        start = quiet_since = now = self.clock()
        end = start + a.drain_seconds
        log.info("draining: %d requests in flight or held", self.dispatcher.busy())
        while now < end:  # woken by each arrival and end of a request or of a connection's work
            busy = self.dispatcher.busy() or any(c.pending or c.worker for c in self.http.connections)
            if busy or self.dispatcher.last_arrival > quiet_since:
                quiet_since = now
            elif now - quiet_since >= a.drain_quiet_seconds:
                break
            changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), (end if busy else min(end, quiet_since + a.drain_quiet_seconds)) - now)
            now = self.clock()
            if busy:
                quiet_since = now  # busy until this change
        left = self.dispatcher.busy()
        log.info("drained in %.1fs%s", self.clock() - start, f"; {left} requests cut off" if left else "")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
               "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if args.log_format == "json"
                         else logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=os.environ.get("ELASTICSERVING_LOG_LEVEL", "INFO"), handlers=[handler])
    otel.setup("elasticserving-activator")  # off without OTEL_EXPORTER_OTLP_ENDPOINT; before gc.freeze
    # Everything loaded so far lives as long as the process: keep it out of the collector's scans, and
    # collect less often (the proxy allocates small, short-lived objects at a high rate).
    gc.freeze()
    gc.set_threshold(20000, 20, 20)
    try:
        try:
            import uvloop  # the proxy's transports are several times cheaper on uvloop
        except ImportError:
            return asyncio.run(Activator(args).run())
        return uvloop.run(Activator(args).run())
    finally:
        otel.shutdown()  # the spans still queued go out (bounded by the SDK's export timeout)
