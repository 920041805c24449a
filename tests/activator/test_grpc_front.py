"""The gRPC front door through the same dispatcher as HTTP: a raw-bytes replica on loopback, held
calls at zero, the replica's own statuses passed through, refusals with reasons, request ids,
connection-refused replicas retried elsewhere, and one set of metrics for both protocols."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from activator.grpc_front import start_grpc_front
from activator.limits import FrontLimits
from tests.activator.harness import Setup, full, route
from tests.helpers import free_port

METHOD = "/inference.GRPCInferenceService/ModelInfer"
ROUTE = (("x-paddleservice", "svc.ns"),)


class EchoReplica(grpc.GenericRpcHandler):
    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []

    def service(self, details):
        async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.metadata.append(dict(context.invocation_metadata()))
            if request == b"fail":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the replica says no")
            return b"echo:" + request

        return grpc.unary_unary_rpc_method_handler(unary)


@pytest.fixture
async def env():
    s = Setup()
    replica = EchoReplica()
    rserver = grpc.aio.server()
    rserver.add_generic_rpc_handlers((replica,))
    rport = rserver.add_insecure_port("127.0.0.1:0")
    await rserver.start()
    server, front, port = await start_grpc_front(s.dispatcher, FrontLimits(), "127.0.0.1", 0, grace=1.0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield s, replica, rport, channel.unary_unary(METHOD), front
    await channel.close()
    await server.stop(0)
    await rserver.stop(0)
    await front.channels.close()
    s.close()


async def test_held_at_zero_then_answered_with_side_and_request_id(env):
    s, replica, rport, call, _ = env
    s.dispatcher.apply(full(route(ports=()), version=1))
    rpc = call(b"hi", metadata=ROUTE + (("x-request-id", "rid-7"),), timeout=10)
    pending = asyncio.ensure_future(rpc)
    for _ in range(500):
        if s.pokes:
            break
        await asyncio.sleep(0.01)
    assert s.pokes == [("ns/svc", "default")]  # held at zero: the autoscaler was woken
    s.dispatcher.apply(full(route(ports=(9,), grpc={9: rport}), version=2))
    got = await pending
    assert got == b"echo:hi"
    trailing = dict(await rpc.trailing_metadata())
    assert trailing["x-paddleservice-side"] == "default" and trailing["x-request-id"] == "rid-7"
    assert replica.metadata[0]["x-request-id"] == "rid-7" and "x-paddleservice" not in replica.metadata[0]
    s.dispatcher.flush()  # the requests ended so far, into the metrics
    assert s.metrics.cold_start.labels("ns/svc", "default").sum > 0  # same histogram as HTTP
    assert s.metrics.requests.labels("ns/svc", "default", "grpc_OK").value == 1
    (line,) = s.log_lines()
    assert (line["protocol"], line["request_id"], line["status"], line["replica"]) == ("grpc", "rid-7", "grpc_OK",
                                                                                        "r9")


async def test_statuses_and_refusals_have_reasons(env):
    s, _, rport, call, _ = env
    s.dispatcher.apply(full(route(ports=(9,), grpc={9: rport})))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(b"fail", metadata=ROUTE, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "the replica says no" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(b"x", metadata=(("x-paddleservice", "nope.nowhere"),), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "no PaddleService" in err.value.details()
    s.dispatcher.flush()
    assert s.metrics.requests.labels("ns/svc", "default", "grpc_INVALID_ARGUMENT").value == 1


async def test_a_refused_replica_is_retried_on_another_and_channels_are_pruned(env):
    s, _, rport, call, front = env
    dead = free_port()
    s.dispatcher.apply(full(route(ports=(8, 9), grpc={8: dead, 9: rport})))
    for _ in range(4):
        assert await call(b"x", metadata=ROUTE, timeout=10) == b"echo:x"
    assert not s.dispatcher.throttler("ns/svc", "default").backends["r8"].healthy
    assert s.metrics.retries.labels("ns/svc", "default").value >= 1
    assert len(front.channels) == 2
    front.channels.prune([f"127.0.0.1:{rport}"])
    assert len(front.channels) == 1
