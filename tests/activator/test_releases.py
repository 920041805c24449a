"""Releases at the activator's front doors (HTTP and gRPC) with routes set by hand and replicas on
loopback: tag routes reach only their side whatever the split, a tag route holds and pokes a side at
zero and answers 503 with the side's reason, and the outgoing version (`previous`) takes its share."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from activator.grpc_front import start_grpc_front
from activator.limits import FrontLimits
from tests.activator.harness import Setup, echo_replica, full, responses, route

METHOD = "/inference.GRPCInferenceService/ModelInfer"


async def get(setup: Setup, host: str, n: int = 1) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    reqs = b"".join(b"GET /x HTTP/1.1\r\nHost: %s\r\n\r\n" % host.encode() for _ in range(n - 1))
    return responses(await setup.raw(reqs + b"GET /x HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                                     % host.encode()))


def sides(answers) -> list[bytes]:
    return [a[1][b"x-paddleservice-side"] for a in answers]


@pytest.mark.parametrize("percent", [0, 50, 100])
async def test_tag_hosts_reach_only_their_side_whatever_the_split(setup, percent):
    d, c = await setup.replica(echo_replica), await setup.replica(echo_replica)
    setup.dispatcher.apply(full(route(ports=(d,), canary=(c,), canary_percent=percent, tags=True)))
    assert set(sides(await get(setup, "canary-svc.ns.example.com", 10))) == {b"canary"}
    assert set(sides(await get(setup, "default-svc.ns", 10))) == {b"default"}
    assert sides(await get(setup, "svc.ns.example.com", 10)).count(b"canary") == percent // 10


async def test_a_tag_route_wakes_a_canary_at_zero_and_answers_503_with_its_reason(setup):
    d, c = await setup.replica(echo_replica), await setup.replica(echo_replica)
    setup.dispatcher.apply(full(route(ports=(d,), canary=(), canary_percent=0, tags=True)))
    pending = asyncio.ensure_future(get(setup, "canary-svc.ns.example.com"))
    for _ in range(200):
        if setup.pokes:
            break
        await asyncio.sleep(0.01)
    assert setup.pokes == [("ns/svc", "canary")] and not pending.done()  # held, the canary side poked
    setup.dispatcher.apply(full(route(ports=(d,), canary=(c,), canary_percent=0, tags=True), version=2))
    (answer,) = await asyncio.wait_for(pending, 5)
    assert answer[0] == 200 and answer[1][b"x-paddleservice-side"] == b"canary"

    reason = "replica command exited before it was ready (exit code 3)"
    setup.dispatcher.apply(full(route(ports=(d,), canary=(), canary_percent=0, tags=True, canary_error=reason),
                                version=3))
    (answer,) = await get(setup, "canary-svc.ns.example.com")
    assert answer[0] == 503 and json.loads(answer[2])["error"] == reason
    assert set(sides(await get(setup, "svc.ns.example.com", 5))) == {b"default"}  # untouched


async def test_the_outgoing_version_takes_its_share_as_side_previous(setup):
    d, old = await setup.replica(echo_replica), await setup.replica(echo_replica)
    setup.dispatcher.apply(full(route(ports=(d,), previous=(old,), previous_percent=70, tags=True)))
    got = sides(await get(setup, "svc.ns.example.com", 20))
    assert (got.count(b"previous"), got.count(b"default")) == (14, 6)
    assert set(sides(await get(setup, "default-svc.ns", 5))) == {b"default"}  # the tag: the new version
    stats = {(st.side, st.requests) for st in setup.dispatcher.take_stats()}
    assert ("previous", 14) in stats  # its load is reported, so the autoscaler sizes it
    setup.dispatcher.apply(full(route(ports=(d,), tags=True), version=2))  # the ramp is over
    assert set(sides(await get(setup, "svc.ns.example.com", 5))) == {b"default"}
    assert ("ns/svc", "previous") not in setup.dispatcher.throttlers


class Echo(grpc.GenericRpcHandler):
    def __init__(self, name: bytes) -> None:
        self.name = name

    def service(self, details):
        async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return self.name + b":" + request

        return grpc.unary_unary_rpc_method_handler(unary)


async def test_grpc_tag_routing_key_reaches_one_side():
    s = Setup()
    servers, ports = [], []
    for name in (b"default", b"canary"):
        srv = grpc.aio.server()
        srv.add_generic_rpc_handlers((Echo(name),))
        ports.append(srv.add_insecure_port("127.0.0.1:0"))
        await srv.start()
        servers.append(srv)
    server, front, port = await start_grpc_front(s.dispatcher, FrontLimits(), "127.0.0.1", 0, grace=1.0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        http_ports = (9001, 9002)  # not used by gRPC; the endpoints carry both
        s.dispatcher.apply(full(route(ports=(http_ports[0],), canary=(http_ports[1],), canary_percent=0, tags=True,
                                      grpc=dict(zip(http_ports, ports, strict=True)))))
        call = channel.unary_unary(METHOD)
        for key, want in (("canary-svc.ns", b"canary:hi"), ("default-svc.ns", b"default:hi"), ("svc.ns", b"default:hi")):
            rpc = call(b"hi", metadata=(("x-paddleservice", key),), timeout=5)
            assert await rpc == want, key
            assert dict(await rpc.trailing_metadata())["x-paddleservice-side"] == want.split(b":")[0].decode()
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await call(b"hi", metadata=(("x-paddleservice", "canary-nope.ns"),), timeout=5)
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND and "<tag>-<name>.<namespace>" in exc.value.details()
    finally:
        await channel.close()
        await server.stop(0)
        for srv in servers:
            await srv.stop(0)
        await front.channels.close()
        s.close()
