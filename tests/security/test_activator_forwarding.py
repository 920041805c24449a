"""The activator forwards only what is meant: headers named in `Connection` stay on their hop (both
ways), X-Forwarded-For/-Proto/-Host come from the socket and the Host header rather than from the
client, X-Request-Id is sanitized, and the admin endpoints are not reachable through the public port."""

from __future__ import annotations

import json

import pytest

from tests.activator.harness import HOST, echo_replica, read_request, responses


async def test_connection_named_headers_are_dropped_and_forwarded_for_is_ours(setup):
    setup.route(await setup.replica(echo_replica))
    raw = await setup.raw(b"GET / HTTP/1.1\r\nHost: %s\r\nConnection: close, X-Secret, x-other\r\nX-Secret: s\r\n"
                          b"X-Other: o\r\nX-Kept: k\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n"
                          b"X-Forwarded-Host: evil.example\r\nKeep-Alive: timeout=5\r\n\r\n" % HOST)
    (a,) = responses(raw)
    headers = json.loads(a[2])["headers"]
    assert "x-secret" not in headers and "x-other" not in headers and "keep-alive" not in headers
    assert headers["x-kept"] == "k"
    assert headers["x-forwarded-for"] == "127.0.0.1" and headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == HOST.decode()


async def test_answer_headers_named_in_connection_are_dropped(setup):
    async def replica(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: X-Internal\r\nX-Internal: debug\r\nX-Public: p\r\n"
                     b"X-Request-Id: forged\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()

    setup.route(await setup.replica(replica))
    (a,) = responses(await setup.raw(b"GET / HTTP/1.1\r\nHost: %s\r\nX-Request-Id: mine\r\nConnection: close\r\n\r\n"
                                     % HOST))
    assert a[0] == 200 and b"x-internal" not in a[1] and a[1][b"x-public"] == b"p"
    assert a[1][b"x-request-id"] == b"mine"  # the replica cannot change the id the client sees


@pytest.mark.parametrize("given", [b"has space", b"x" * 200, b"semi;colon", b""])
async def test_unsafe_request_ids_are_replaced(setup, given):
    setup.route(await setup.replica(echo_replica))
    (a,) = responses(await setup.raw(b"GET / HTTP/1.1\r\nHost: %s\r\nX-Request-Id: %s\r\nConnection: close\r\n\r\n"
                                     % (HOST, given)))
    rid = a[1][b"x-request-id"]
    assert rid != given and len(rid) == 32 and json.loads(a[2])["headers"]["x-request-id"] == rid.decode()


async def test_admin_endpoints_are_not_on_the_public_port_for_any_host(setup):
    setup.route(await setup.replica(echo_replica))
    for host in (b"localhost", b"127.0.0.1", b""):
        for path in (b"/metrics", b"/healthz", b"/ready"):
            (a,) = responses(await setup.raw(b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                                             % (path, host)))
            assert a[0] == 404 and b"elasticserving_activator" not in a[2]
