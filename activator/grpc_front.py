"""The gRPC front door: a byte-level forwarder for unary calls (KServe v2 GRPCInferenceService), routed
by the `x-paddleservice` metadata key (`name.namespace`, or a tag route `default-name.namespace` /
`canary-name.namespace` for one side only) or the authority; it translates each call into
a dispatcher `Call` plus a "send to this replica" callable over a channel per replica.

Refusals are gRPC statuses with the reason as details (NOT_FOUND unknown service, UNAVAILABLE no replica
in time / replica failed, DEADLINE_EXCEEDED replica too slow); a replica's own status passes through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

import grpc

import runtime.tracing as otel
from activator.access_log import REQUEST_ID_HEADER, request_id
from activator.dispatcher import Call, Dispatcher
from activator.limits import FrontLimits
from activator.outcomes import Broken, Failure, NotSent
from activator.throttler import Backend
from runtime.errors import GRPC_STATUS

ROUTE_KEY = "x-paddleservice"
CANARY_KEY = "x-paddleservice-canary"
DROP_METADATA = frozenset({ROUTE_KEY, "host", ":authority", "user-agent", "grpc-timeout", "te", "content-type",
                           REQUEST_ID_HEADER, "x-forwarded-for", "x-forwarded-proto"})
TRACE_KEYS = ("traceparent", "tracestate")  # replaced by the activator's own when tracing is on
# Details of an UNAVAILABLE raised by the channel itself before the call left (no connection).
NOT_CONNECTED = ("failed to connect to all addresses", "connections to all backends failing")
# runtime.errors.GRPC_STATUS as StatusCodes, but a full queue answers UNAVAILABLE here, as it always has
# (a replica's full queue is RESOURCE_EXHAUSTED): kept so that no client sees another status
STATUS = {c: getattr(grpc.StatusCode, s) for c, s in (GRPC_STATUS | {"overloaded": "UNAVAILABLE"}).items()}


@dataclass(slots=True)
class GrpcAnswer:
    code: grpc.StatusCode
    details: str
    payload: bytes | None


def _label(outcome: GrpcAnswer | Failure) -> str:
    if isinstance(outcome, Failure):
        return f"grpc_{STATUS[outcome.code].name}"
    return f"grpc_{outcome.code.name}"


class Channels:
    """One channel per replica address; channels of replicas that left the routes are closed after a
    grace period (their calls in flight finish first)."""

    def __init__(self, max_answer_bytes: int, grace: float) -> None:
        self.options = [("grpc.max_receive_message_length", max_answer_bytes),
                        ("grpc.max_send_message_length", -1)]
        self.grace = grace
        self._by_target: dict[str, grpc.aio.Channel] = {}
        self._closing: set[asyncio.Task] = set()  # the loop holds tasks weakly: closes in flight are kept here

    def get(self, target: str) -> grpc.aio.Channel:
        ch = self._by_target.get(target)
        if ch is None:
            ch = self._by_target[target] = grpc.aio.insecure_channel(target, options=self.options)
        return ch

    def prune(self, live: Iterable[str]) -> None:
        keep = set(live)
        loop = asyncio.get_running_loop()
        for target in [t for t in self._by_target if t not in keep]:
            ch = self._by_target.pop(target)
            loop.call_later(self.grace, self._close_later, ch)

    def _close_later(self, ch: grpc.aio.Channel) -> None:
        task = asyncio.ensure_future(ch.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def __len__(self) -> int:
        return len(self._by_target)

    async def close(self) -> None:
        for ch in self._by_target.values():
            await ch.close()
        self._by_target.clear()


class GrpcFront(grpc.GenericRpcHandler):
    def __init__(self, dispatcher: Dispatcher, channels: Channels) -> None:
        self.dispatcher = dispatcher
        self.channels = channels

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method

        async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await self.forward(method, request, context)

        return grpc.unary_unary_rpc_method_handler(unary)  # no (de)serializers: raw bytes

    async def forward(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        md = {k.lower(): v for k, v in (context.invocation_metadata() or ())}
        rid = request_id(md.get(REQUEST_ID_HEADER))
        host = md.get(ROUTE_KEY) or md.get(":authority") or md.get("host")
        call = Call(host, str(md.get(CANARY_KEY, "")), rid, "grpc", context.time_remaining())
        forward_md = tuple((k, v) for k, v in md.items() if k not in DROP_METADATA and not k.startswith(":")) \
            + ((REQUEST_ID_HEADER, rid),)
        if otel.ON:
            call.carrier = {k: str(md[k]) for k in TRACE_KEYS if k in md}
            forward_md = tuple(kv for kv in forward_md if kv[0] not in TRACE_KEYS)

        async def send(backend: Backend, timeout: float) -> GrpcAnswer:
            if not backend.grpc_port:
                raise Failure("unavailable", f"replica {backend.id} has no gRPC port")
            stub = self.channels.get(f"{backend.host}:{backend.grpc_port}").unary_unary(method)
            metadata = forward_md if call.outgoing is None else forward_md + tuple(call.outgoing.items())
            try:
                return GrpcAnswer(grpc.StatusCode.OK, "", await stub(request, metadata=metadata, timeout=timeout))
            except grpc.aio.AioRpcError as err:
                details = err.details() or ""
                if err.code() == grpc.StatusCode.UNAVAILABLE:
                    if any(s in details.lower() for s in NOT_CONNECTED):
                        raise NotSent(details) from None
                    raise Broken(details) from None
                if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise TimeoutError from None
                return GrpcAnswer(err.code(), details, None)

        try:
            answer = await self.dispatcher.dispatch(call, send, _label)
        except Failure as f:
            reason = f.reason
            if f.code == "not_found":
                reason += f": set metadata {ROUTE_KEY}: <name>.<namespace> (one side: <tag>-<name>.<namespace>)"
            await context.abort(STATUS[f.code], reason, trailing_metadata=((REQUEST_ID_HEADER, rid),)
                                + ((("traceparent", call.traceparent),) if call.traceparent else ()))
        trailing = (("x-paddleservice-side", call.side), (REQUEST_ID_HEADER, rid))
        if call.traceparent:
            trailing += (("traceparent", call.traceparent),)
        if answer.code != grpc.StatusCode.OK:
            await context.abort(answer.code, answer.details, trailing_metadata=trailing)
        context.set_trailing_metadata(trailing)
        return answer.payload  # type: ignore[return-value]


async def start_grpc_front(dispatcher: Dispatcher, limits: FrontLimits, host: str, port: int,
                           grace: float) -> tuple[grpc.aio.Server, GrpcFront, int]:
    """Listen on host:port (0: a free port); returns the server, the handler and the port bound."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limits.max_body_bytes),
                                      ("grpc.max_send_message_length", limits.max_answer_bytes),
                                      ("grpc.max_metadata_size", limits.max_header_bytes)])
    front = GrpcFront(dispatcher, Channels(limits.max_answer_bytes, grace))
    server.add_generic_rpc_handlers((front,))
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, front, bound
