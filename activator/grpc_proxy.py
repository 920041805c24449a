"""The activator's gRPC front door: a byte-level forwarder for unary calls (KServe v2
GRPCInferenceService), routed by the `x-paddleservice` metadata key (`name.namespace`) or a host.

Shares the HTTP side's throttlers, so held requests, breakers and cold start work the same way.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import grpc

from activator.throttler import Backend, Unavailable

if TYPE_CHECKING:
    from activator.server import Activator

ROUTE_KEY = "x-paddleservice"
DROP_METADATA = {ROUTE_KEY, "host", ":authority", "user-agent", "grpc-timeout", "te", "content-type"}


class ProxyHandler(grpc.GenericRpcHandler):
    def __init__(self, activator: Activator) -> None:
        self.activator = activator
        self.channels: dict[str, grpc.aio.Channel] = {}

    def service(self, handler_call_details):
        method = handler_call_details.method

        async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await self._forward(method, request, context)

        return grpc.unary_unary_rpc_method_handler(unary)  # no (de)serializers: raw bytes

    def _channel(self, b: Backend) -> grpc.aio.Channel:
        target = f"{b.host}:{b.grpc_port}"
        ch = self.channels.get(target)
        if ch is None:
            ch = self.channels[target] = grpc.aio.insecure_channel(target)
        return ch

    async def _forward(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        act = self.activator
        md = {k.lower(): v for k, v in (context.invocation_metadata() or ())}
        host = md.get(ROUTE_KEY) or md.get(":authority") or md.get("host")
        route = act.hosts.resolve(host)
        if route is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no PaddleService for {host!r}: set metadata {ROUTE_KEY}: <name>.<namespace>")
        key = route["service"]
        side = act.pick_side(route, md.get("x-paddleservice-canary", ""))
        if side is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{key} has no canary")
        t = act.throttler(key, side)
        t.requests += 1
        t0 = time.monotonic()
        deadline = t0 + act.args.request_timeout
        remaining = context.time_remaining()
        if remaining is not None:
            deadline = min(deadline, t0 + remaining)
        forward_md = tuple((k, v) for k, v in md.items() if k not in DROP_METADATA and not k.startswith(":"))
        code = "OK"
        tried: set[str] = set()
        try:
            for attempt in (1, 2):
                if not any(b.healthy for b in t.backends.values()):
                    act.ensure_poking(t)
                try:
                    backend = await t.acquire(max(0.0, deadline - time.monotonic()), frozenset(tried))
                except Unavailable as exc:
                    code = "UNAVAILABLE"
                    await context.abort(grpc.StatusCode.UNAVAILABLE, exc.reason)
                try:
                    if not backend.grpc_port:
                        code = "UNAVAILABLE"
                        await context.abort(grpc.StatusCode.UNAVAILABLE, f"replica {backend.id} has no gRPC port")
                    call = self._channel(backend).unary_unary(method)
                    try:
                        resp = await call(request, metadata=forward_md,
                                          timeout=max(0.1, deadline - time.monotonic()))
                        context.set_trailing_metadata((("x-paddleservice-side", side),))
                        return resp
                    except grpc.aio.AioRpcError as err:
                        if err.code() == grpc.StatusCode.UNAVAILABLE and attempt == 1:
                            t.mark(backend, False)
                            tried.add(backend.id)
                            continue
                        code = err.code().name
                        await context.abort(err.code(), err.details() or "")
                finally:
                    t.release(backend)
            code = "UNAVAILABLE"
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"no replica of {key} ({side}) could answer")
        finally:
            act.metrics.requests.labels(key, side, f"grpc_{code}").inc()
            act.metrics.latency.labels(key, side).observe(time.monotonic() - t0)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        for ch in self.channels.values():
            await ch.close()


async def start_grpc_proxy(activator: Activator, host: str, port: int) -> grpc.aio.Server:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", activator.args.max_body_bytes),
                                      ("grpc.max_send_message_length", activator.args.max_body_bytes)])
    server.add_generic_rpc_handlers((ProxyHandler(activator),))
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server
