"""A replica's process: wires the command line (runtime.cli) to the protocol adapters
(runtime.protocols), the data plane (runtime.dataplane) and the model handler (runtime.handlers), loads
the model while health checks are already answered, and drains on SIGTERM.

The loop is uvloop's when installed (a declared dependency): on LAC at batch 1 it took ~0.01 ms off the
HTTP round trip and makes the inference thread's wake-up of the loop cheaper; grpc.aio runs on it too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import sys
import time

from runtime import tracing
from runtime.backends import ModelLoadError
from runtime.cli import parse_args
from runtime.dataplane import DataPlane, QueueLimits
from runtime.handlers import build_handler
from runtime.handlers.base import Handler
from runtime.metrics import RuntimeMetrics, pull_report_from_env, pull_report_path
from runtime.protocols.http_api import HttpApi
from runtime.protocols.http_server import HttpLimits, HttpServer
from runtime.request_log import configure_logging, flush
from runtime.storage import handoff

__all__ = ["Server", "main", "parse_args"]
TERMINATION_LOG = "/dev/termination-log"
# The young generation is collected every GC_YOUNG_THRESHOLD net allocations instead of Python's 700: under
# load a replica holds a few thousand live young objects (requests in flight, their arrays, request-log
# entries waiting for the writer), and the default walked them all every ~35 requests, 1.3 us per request
# (~4 % of a small model's batched request). Side by side: +6 % req/s (a user's 4-16-3 ONNX model, 32
# clients, 2 ms window), p99 unchanged. Objects freed by reference counting never count.
GC_YOUNG_THRESHOLD = 10_000
log = logging.getLogger("elasticserving.runtime")


def _load(handler: Handler) -> float:
    t0 = time.monotonic()
    handler.load()
    return time.monotonic() - t0


def _termination_message(text: str) -> None:
    """In a Pod, the kubelet shows /dev/termination-log as the container's last state's message (the
    controller quotes it in the side's condition); elsewhere there is no such file to write."""
    if os.path.exists(TERMINATION_LOG):
        with contextlib.suppress(OSError), open(TERMINATION_LOG, "w") as f:
            f.write(text[:1024])


class Server:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.metrics = RuntimeMetrics()
        self.plane = DataPlane(args.name, self.metrics, QueueLimits(args.max_batch_size, args.max_queue))
        self.http = HttpServer(HttpApi(self.plane, self.metrics, args.is_canary),
                               HttpLimits(max_body_bytes=args.max_body_bytes))

    async def _model_pulled(self, stop: asyncio.Event) -> bool:
        """In a Pod whose storage sidecar pulls the model beside this process: wait for its report (the
        libraries were imported meanwhile). False when told to stop first."""
        report = pull_report_path()
        if report is None:
            return True  # no pull, or the local platform's report, made before this process started
        t0 = time.monotonic()
        pulled = asyncio.ensure_future(handoff.wait_for_report(
            report, lambda why: log.warning("waiting for the model: %s (the sidecar tries again)", why)))
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait((pulled, stopped), return_when=asyncio.FIRST_COMPLETED)
        for task in (pulled, stopped):
            task.cancel()
        if not pulled.done() or pulled.cancelled():
            return False
        if pulled.exception() is not None:  # e.g. no writable report directory: loading says what is missing
            log.warning("cannot wait for the model's pull: %s", pulled.exception())
            return True
        log.info("model pulled (waited %.2fs)", time.monotonic() - t0)
        return True

    async def _close_servers(self, grpc_server, grace: float = 0) -> None:
        """Stop listening and close the connections (gRPC calls in flight get `grace` seconds)."""
        if grpc_server is not None:
            await grpc_server.stop(grace)
        await self.http.close()

    async def run(self) -> int:
        args = self.args
        await self.http.start(args.host, args.port)
        grpc_server = None
        if args.grpc_port:
            from runtime.protocols.v2_grpc import start_grpc  # grpc starts threads: only when asked for

            grpc_server = await start_grpc(self.plane, args.host, args.grpc_port, args.max_body_bytes)
        log.info("listening on %s:%d%s, loading model %s", args.host, args.port,
                 f" (gRPC :{args.grpc_port})" if grpc_server else "", args.model)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if not await self._model_pulled(stop):
            await self._close_servers(grpc_server)
            return 0
        handler: Handler | None = None
        try:
            handler = build_handler(args, functools.partial(self.metrics.batch, args.name))
            seconds = await loop.run_in_executor(handler.executor, _load, handler)
        except (ModelLoadError, FileNotFoundError, OSError, ValueError) as exc:
            report = pull_report_from_env()
            why = f"{exc} (the model pulled from {report.get('uri')})" if report else str(exc)
            self.plane.load_error = why
            print(f"error: {why}", file=sys.stderr, flush=True)
            _termination_message(why)
            if handler is not None:
                await handler.close()
            await self._close_servers(grpc_server)
            return 3
        self.metrics.model_load(args.name, seconds)
        if (report := pull_report_from_env()) is not None:
            self.metrics.model_pull(args.name, report)
        for sig in (signal.SIGTERM, signal.SIGINT):  # paddle installs its own handlers on import
            loop.remove_signal_handler(sig)
            loop.add_signal_handler(sig, stop.set)
        handler.alone = self.plane.alone
        await handler.start()
        # The model and its libraries live as long as the process: out of the collector's scans, so a
        # full collection never walks paddle's millions of objects in the middle of a request.
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        self.plane.handler = handler
        log.info("model %s ready in %.2fs", args.name, seconds)
        await stop.wait()
        # Graceful: readiness fails at once, requests still routed here are served until idle.
        if not await self.plane.drain(args.drain_seconds):
            log.warning("%d request(s) still in flight after %.0fs", self.plane.inflight, args.drain_seconds)
        await self._close_servers(grpc_server, 1.0)
        await handler.close()
        return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(os.environ.get("ELASTICSERVING_LOG_LEVEL", "INFO"), args.log_format)
    tracing.setup(f"elasticserving-runtime-{args.name}")  # off unless OTEL_EXPORTER_OTLP_ENDPOINT is set
    try:
        try:
            import uvloop  # its loop, transports and cross-thread wake-ups are cheaper (the module docstring)
        except ImportError:
            return asyncio.run(Server(args).run())
        return uvloop.run(Server(args).run())
    finally:
        tracing.shutdown()
        flush()
