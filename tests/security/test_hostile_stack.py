"""Hostile clients against a real `elasticserving up` (activator, autoscaler, replicas as processes on
loopback): slowloris, oversized and malformed requests, a pipelining flood, and bogus load reports to the
control API. Each test states what a user relies on and fails if the activator's (or the control API's)
protection is removed. The activator runs with its default limits (activator/limits.py), as `up` starts it."""

from __future__ import annotations

import json
import math
import os
import selectors
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from activator.limits import FrontLimits
from tests.helpers import (
    child_pids,
    http,
    paddleservice,
    read_answer,
    rss_mib,
    start_stack,
    wait_for,
    write_yaml,
)
from tests.reliability.figures import record

ECHO = f"{sys.executable} tests/fixtures/echo_replica.py"
LAC = "python3 -m runtime --model lac --name lac --port $PORT --max-body-bytes 65536"
ECHO_HOST = b"echo.hostile.example.com"
LAC_HOST = "lac.hostile.example.com"
LAC_KEY = "hostile/lac"
DEFAULTS = FrontLimits()
FIGURES: dict[str, dict] = {}

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    f = write_yaml(tmp / "hostile.yaml",
                   paddleservice("echo", "hostile", ECHO, minScale=1),
                   paddleservice("lac", "hostile", LAC, minScale=0))
    s = start_stack(tmp, [f], config={"scale-to-zero-grace-period": "2s"},
                    extra=["--request-timeout", "30", "--replica-ready-timeout", "90"])
    wait_for(lambda: s.service("hostile/echo")["status"]["replicas"] == 1, 60, 0.1, "echo replica ready")
    yield s
    record("hostile_stack", FIGURES)
    assert s.stop() == 0, "\n".join(s.output[-30:])


def activator_pid(stack) -> int:
    """The child of `up` running `-m activator` (up restarts it, so look it up when needed)."""
    pids = [p for p in child_pids(stack.proc.pid)
            if b"-m\0activator\0" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(pids) == 1, pids
    return pids[0]


def connect(stack, timeout: float = 15.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", stack.http_port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s




def closed_after(sock: socket.socket) -> bool:
    """After the answer the activator closes: EOF (or a reset) within the socket timeout."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def normal_request(stack) -> float:
    """One ordinary request to the echo service on a fresh connection; returns its latency."""
    t0 = time.monotonic()
    with connect(stack, timeout=10) as s:
        s.sendall(b"POST /ok HTTP/1.1\r\nHost: %s\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}" % ECHO_HOST)
        status, _, body = read_answer(s)
    assert status == 200 and json.loads(body)["path"] == "/ok", (status, body)
    return time.monotonic() - t0


# ---- slowloris ----------------------------------------------------------------------------------
SLOW = 400


def test_slowloris_does_not_starve_normal_clients_and_slow_connections_are_closed(stack):
    """400 connections each send half a head and stall. Normal requests keep being answered in < 1 s each,
    and every stalled connection is answered 408 or closed by the header timeout (10 s by default).
    Fails without the header timeout (the stalled connections stay open) or with a connection cap below
    400 or a front door that serves connections one at a time (normal requests wait or are refused)."""
    slow: list[socket.socket] = []
    try:
        for _ in range(SLOW):
            s = connect(stack)
            s.sendall(b"GET /slow HTTP/1.1\r\nHost: %s\r\nX-Half: " % ECHO_HOST)
            slow.append(s)
        t_sent = time.monotonic()
        latencies = []
        # Normal traffic while all 400 are held (they are only released by the header timeout).
        while time.monotonic() - t_sent < DEFAULTS.header_timeout * 0.6 or len(latencies) < 10:
            latencies.append(normal_request(stack))
            if len(latencies) >= 200:
                break
        FIGURES["slowloris"] = {"slow_connections": SLOW, "normal_requests": len(latencies),
                                "normal_max_seconds": round(max(latencies), 3)}
        assert max(latencies) < 1.0, sorted(latencies)[-5:]
        # Every stalled connection ends: 408 (headers too slow) or closed, within a generous deadline.
        outcomes = {"408": 0, "closed": 0}
        sel = selectors.DefaultSelector()
        for s in slow:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, bytearray())
        deadline = time.monotonic() + DEFAULTS.header_timeout + 60
        while sel.get_map() and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1.0):
                sock, buf = key.fileobj, key.data
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    buf += chunk
                    continue
                outcomes["408" if buf.startswith(b"HTTP/1.1 408 ") else "closed"] += 1
                assert not buf or buf.startswith(b"HTTP/1.1 408 "), bytes(buf[:200])
                sel.unregister(sock)
        assert not sel.get_map(), f"{len(sel.get_map())} slow connections still open after the deadline"
        FIGURES["slowloris"].update(outcomes)
        assert sum(outcomes.values()) == SLOW and outcomes["408"] > 0, outcomes
    finally:
        for s in slow:
            s.close()
    normal_request(stack)


# ---- oversized input and a pipelining flood ---------------------------------------------------------
@pytest.mark.parametrize(("raw", "status"), [
    (b"GET /%s HTTP/1.1\r\nHost: %s\r\n\r\n" % (b"a" * (DEFAULTS.max_request_line + 1), ECHO_HOST), 414),
    (b"GET / HTTP/1.1\r\nHost: %s\r\nX-Big: %s\r\n\r\n" % (ECHO_HOST, b"v" * DEFAULTS.max_header_bytes), 431),
    (b"GET / HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (ECHO_HOST, b"".join(b"X-H%d: v\r\n" % i for i in range(
        DEFAULTS.max_header_fields + 1))), 431),
    (b"GET / HTTP/1.1\r\nHost: %s\r\nX-Endless: %s" % (ECHO_HOST, b"v" * (DEFAULTS.max_header_bytes * 2)), 431),
    (b"POST / HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n" % (ECHO_HOST, DEFAULTS.max_body_bytes + 1), 413),
], ids=["request-line", "header-bytes", "header-fields", "endless-header", "declared-body"])
def test_oversized_input_is_refused_and_the_stack_keeps_serving(stack, raw, status):
    """Fails if the bound is removed: the request would be forwarded (200/404) or buffered (a hang)."""
    with connect(stack) as s:
        try:
            s.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before it was all sent: the answer is still there to read
        got, headers, body = read_answer(s)
        assert (got, headers.get(b"connection")) == (status, b"close"), body
        assert "error" in json.loads(body)
        assert closed_after(s)
    normal_request(stack)


FLOOD = 6000
FLOOD_BODY = 16 * 1024  # 6000 x 16 KiB = 94 MiB offered on one connection
RSS_BOUND_MIB = 64


def test_pipelining_flood_is_answered_in_order_within_a_memory_bound(stack):
    """6000 pipelined POSTs (94 MiB) on one connection, written as fast as the socket takes them: all are
    answered, in order, and the activator's RSS grows by less than 64 MiB. The bound: the activator reads
    ahead at most 32 requests / 1 MiB per connection (activator.http_front MAX_PIPELINED,
    FrontLimits.max_pipelined_bytes) and forwards one at a time, so a flood costs it about a few MiB; 64 MiB
    leaves room for allocator noise yet is below the 94 MiB an unbounded read-ahead would hold. Fails
    if reading does not pause (the flood is buffered: RSS) or answers are reordered or lost."""
    pid = activator_pid(stack)
    normal_request(stack)  # warm: the connection pools and code paths exist before the baseline
    before = rss_mib(pid)
    peak = [before]
    body = b"x" * FLOOD_BODY
    sock = connect(stack, timeout=60)
    sending_error: list[BaseException] = []

    def write() -> None:
        try:
            for i in range(FLOOD):
                sock.sendall(b"POST /flood/%d HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n%s"
                             % (i, ECHO_HOST, FLOOD_BODY, body))
        except OSError as exc:
            sending_error.append(exc)

    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], rss_mib(pid))

    writer = threading.Thread(target=write, daemon=True)
    sampler = threading.Thread(target=sample, daemon=True)
    writer.start()
    sampler.start()
    paths = []
    reader = sock.makefile("rb")
    try:
        for _ in range(FLOOD):
            status, _, data = read_answer(sock, reader)
            assert status == 200, data
            answer = json.loads(data)
            assert answer["bytes"] == FLOOD_BODY
            paths.append(answer["path"])
    finally:
        done.set()
        reader.close()
        sock.close()
        writer.join(30)
    after = rss_mib(pid)
    FIGURES["pipelining_flood"] = {"requests": FLOOD, "mib_offered": round(FLOOD * FLOOD_BODY / 2**20, 1),
                                   "answered_in_order": paths == [f"/flood/{i}" for i in range(FLOOD)],
                                   "rss_mib_before": round(before, 1), "rss_mib_peak": round(peak[0], 1),
                                   "rss_mib_after": round(after, 1), "bound_mib": RSS_BOUND_MIB}
    assert not sending_error, sending_error
    assert paths == [f"/flood/{i}" for i in range(FLOOD)]
    assert max(peak[0], after) - before < RSS_BOUND_MIB, (before, peak[0], after)
    assert activator_pid(stack) == pid  # the same process throughout
    normal_request(stack)


# ---- malformed requests -----------------------------------------------------------------------------
H = ECHO_HOST
MALFORMED = {
    "bad-method-space": b"GE T / HTTP/1.1\r\nHost: %s\r\n\r\n" % H,
    "unknown-method": b"FROB / HTTP/1.1\r\nHost: %s\r\n\r\n" % H,
    "nul-before-method": b"\x00GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % H,
    "lowercase-method": b"get / HTTP/1.1\r\nHost: %s\r\n\r\n" % H,
    "version-9.9": b"GET / HTTP/9.9\r\nHost: %s\r\n\r\n" % H,
    "version-letters": b"GET / HTTP/1.x\r\nHost: %s\r\n\r\n" % H,
    "version-missing-dot": b"GET / HTTP/11\r\nHost: %s\r\n\r\n" % H,
    "version-garbage": b"GET / HTTTP/1.1\r\nHost: %s\r\n\r\n" % H,
    "absolute-bad-port": b"GET http://a:99999/ HTTP/1.1\r\nHost: %s\r\n\r\n" % H,
    "absolute-no-host": b"GET http:/// HTTP/1.1\r\nHost: %s\r\n\r\n" % H,
    "nul-in-path": b"GET /a\x00b HTTP/1.1\r\nHost: %s\r\n\r\n" % H,
    "nul-in-header-value": b"GET / HTTP/1.1\r\nHost: %s\r\nX-A: a\x00b\r\n\r\n" % H,
    "nul-in-header-name": b"GET / HTTP/1.1\r\nHost: %s\r\nX-\x00A: a\r\n\r\n" % H,
    "space-in-header-name": b"GET / HTTP/1.1\r\nHost: %s\r\nBad Header: a\r\n\r\n" % H,
    "header-without-colon": b"GET / HTTP/1.1\r\nHost: %s\r\nNoColon\r\n\r\n" % H,
    "bare-lf-garbage": b"\x01\x02\x03\r\n\r\n",
    "chunk-size-not-hex": b"POST / HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n" % H,
    "chunk-size-overflow": b"POST / HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"ffffffffffffffffffff\r\n" % H,
    "chunk-missing-crlf": b"POST / HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n" % H,
    "chunked-not-last-coding": b"POST / HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked, gzip\r\n\r\n" % H,
    "content-length-letters": b"POST / HTTP/1.1\r\nHost: %s\r\nContent-Length: abc\r\n\r\n" % H,
    "content-length-negative": b"POST / HTTP/1.1\r\nHost: %s\r\nContent-Length: -1\r\n\r\n" % H,
    "content-length-list": b"POST / HTTP/1.1\r\nHost: %s\r\nContent-Length: 1, 2\r\n\r\nab" % H,
    "content-length-twice": b"POST / HTTP/1.1\r\nHost: %s\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab" % H,
    "content-length-overflow": b"POST / HTTP/1.1\r\nHost: %s\r\nContent-Length: 99999999999999999999999\r\n\r\n" % H,
    "content-length-and-chunked": b"POST / HTTP/1.1\r\nHost: %s\r\nContent-Length: 5\r\nTransfer-Encoding: chunked"
                                  b"\r\n\r\n0\r\n\r\n" % H,
}


@pytest.mark.parametrize("raw", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_request_gets_a_4xx_and_close_never_a_hang_or_5xx(stack, raw):
    """Fails if a parser error were forwarded (the echo replica would answer 200), answered 5xx, or left
    hanging (the socket timeout of 15 s raises)."""
    with connect(stack) as s:
        s.sendall(raw)
        status, headers, body = read_answer(s)
        assert 400 <= status < 500 and status != 404, (status, body)
        assert headers.get(b"connection") == b"close" and "error" in json.loads(body)
        assert closed_after(s)
    normal_request(stack)


# ---- bogus load reports and pokes -----------------------------------------------------------------
def _stats(**side) -> dict:
    return {"activator": "hostile", "stats": [{"service": LAC_KEY, "side": "default", **side}]}


BAD_REPORTS = {
    "nan-average": (b'{"activator":"a","stats":[{"service":"%s","average_concurrency":NaN}]}' % LAC_KEY.encode()),
    "inf-average": (b'{"activator":"a","stats":[{"service":"%s","average_concurrency":Infinity}]}'
                    % LAC_KEY.encode()),
    "minus-inf-average": (b'{"activator":"a","stats":[{"service":"%s","average_concurrency":-Infinity}]}'
                          % LAC_KEY.encode()),
    "overflowing-average": (b'{"activator":"a","stats":[{"service":"%s","average_concurrency":1e999}]}'
                            % LAC_KEY.encode()),
    "huge-average": json.dumps(_stats(average_concurrency=1e12)).encode(),
    "negative-average": json.dumps(_stats(average_concurrency=-1.0)).encode(),
    "negative-concurrency": json.dumps(_stats(concurrency=-5)).encode(),
    "huge-concurrency": json.dumps(_stats(concurrency=10**30)).encode(),
    "negative-requests": json.dumps(_stats(requests=-1)).encode(),
    "zero-window": json.dumps(_stats(window=0)).encode(),
    "huge-window": json.dumps(_stats(window=1e9)).encode(),
    "nan-window": (b'{"activator":"a","stats":[{"service":"%s","window":NaN}]}' % LAC_KEY.encode()),
    "bad-side": json.dumps(_stats(side="sideways")).encode(),
    "bad-service-key": json.dumps({"activator": "a", "stats": [{"service": "../../etc"}]}).encode(),
    "no-activator": json.dumps({"stats": []}).encode(),
    "too-many-stats": json.dumps({"activator": "a", "stats": [{"service": LAC_KEY}] * 20_001}).encode(),
    "not-json": b"{nope",
}
BAD_POKES = {
    "bad-side": json.dumps({"service": LAC_KEY, "side": "sideways"}).encode(),
    "nan-side": b'{"service":"%s","side":NaN}' % LAC_KEY.encode(),
    "bad-key": json.dumps({"service": "HOSTILE/LAC"}).encode(),
    "number-key": json.dumps({"service": 1e999}).encode(),
    "no-service": b"{}",
    "array": b"[]",
}


def test_bogus_stats_and_pokes_are_400_and_scaling_goes_on(stack):
    """Every non-finite or out-of-range report/poke, with the right token, is a 400 naming the field; then
    the LAC service (minScale 0) still scales from zero and answers exactly, and a valid report is accepted.
    Fails if the wire contract accepted NaN/inf/out-of-range values (200 here, and a NaN in the
    autoscaler's windows would make its desired scale NaN)."""
    assert stack.service(LAC_KEY)["status"]["replicas"] == 0
    for path, table in (("/v1/stats", BAD_REPORTS), ("/v1/poke", BAD_POKES)):
        for name, raw in table.items():
            status, _, data = _control_raw(stack, path, raw)
            assert status == 400, (path, name, status, data[:300])
            assert json.loads(data)["error"], (path, name)
    # The autoscaler kept its loop: the service scales from zero on demand and answers with the real model.
    status, _, data = stack.request(LAC_HOST, "/lac/prediction", {"feed": [{"words": "我爱北京天安门"}],
                                                                  "fetch": ["word_seg"]}, timeout=120)
    assert status == 200 and json.loads(data)["result"][0]["word_seg"] == "我|爱|北京|天安门", data
    assert stack.service(LAC_KEY)["status"]["replicas"] >= 1
    ok = stack.control_http("POST", "/v1/stats", _stats(average_concurrency=0.5, concurrency=1, requests=1))
    assert ok[0] == 200, ok
    for side in stack.service(LAC_KEY)["autoscaler"].values():
        assert all(not (isinstance(v, float) and not math.isfinite(v)) for v in side.values()), side


def _control_raw(stack, path: str, raw: bytes) -> tuple[int, dict, bytes]:
    return http("POST", stack.control + path, raw=raw,
                headers={"Authorization": f"Bearer {stack.token}", "Content-Type": "application/json"})


def test_activator_pid_is_the_up_child(stack):
    """The activator the tests measure is the live child of `up` (its memory and restarts are ours)."""
    pid = activator_pid(stack)
    assert os.path.exists(f"/proc/{pid}") and rss_mib(pid) > 0


def test_oversized_body_to_a_real_model_is_413_and_it_keeps_answering(stack):
    """The LAC replica's own --max-body-bytes (64 KiB here) through the activator: 413 with a reason, then
    an exact answer. Fails if the runtime stopped bounding bodies (the 100 KB body would be parsed: 400/200)."""
    big = json.dumps({"feed": [{"words": "我" * 40_000}], "fetch": ["word_seg"]}).encode()
    status, _, data = stack.request(LAC_HOST, "/lac/prediction", raw=big, timeout=120)
    assert status == 413 and "error" in json.loads(data), data[:300]
    status, _, data = stack.request(LAC_HOST, "/lac/prediction", {"feed": [{"words": "我爱北京天安门"}],
                                                                  "fetch": ["word_seg"]}, timeout=120)
    assert status == 200 and json.loads(data)["result"][0]["word_seg"] == "我|爱|北京|天安门", data
