"""Zero lost requests, counted, on a real `elasticserving up`: (a) SIGTERM to the activator while 8 clients
send continuously (`up` restarts it), (b) the autoscaler scaling a service down from 3 replicas to 1 while
8 clients send. The counts (sent, answered by status, refused, lost) go to benchmarks/results/reliability.json.

What counts: each request opens its own connection. A connect() refused by the kernel (no activator
listening, between the old one's exit and the new one's start) means the request was never sent: the
client knows nothing reached the server and may retry. Every request whose connection was established is
"sent" and must get an HTTP answer; a 503 with Retry-After counts as answered (a clear, retryable refusal),
while a reset, an EOF without an answer or a timeout after the connection was accepted is "lost"."""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import (
    child_pids,
    paddleservice,
    read_answer,
    replica_ids,
    start_stack,
    wait_for,
    write_yaml,
)
from tests.reliability.figures import record

ECHO = f"{sys.executable} tests/fixtures/echo_replica.py --delay 0.02"
SLOW_ECHO = f"{sys.executable} tests/fixtures/echo_replica.py --delay 0.2"  # requests in flight at removal
CLIENTS = 8
FIGURES: dict[str, dict] = {}

pytestmark = pytest.mark.timeout(300)


def activator_pid(stack) -> int | None:
    pids = [p for p in child_pids(stack.proc.pid)
            if b"-m\0activator\0" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(pids) <= 1, pids
    return pids[0] if pids else None


class Load:
    """CLIENTS threads, each sending one request per connection until stopped; every outcome counted."""

    def __init__(self, stack, host: bytes) -> None:
        self.port = stack.http_port
        self.host = host
        self.counts: collections.Counter[str] = collections.Counter()
        self.lost: list[str] = []
        self.replicas: collections.Counter[str] = collections.Counter()  # answers per replica id
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(CLIENTS)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(90)
            assert not t.is_alive(), "a client hung"

    def _count(self, kind: str, detail: str = "") -> None:
        with self.lock:
            self.counts[kind] += 1
            if kind == "lost" and len(self.lost) < 20:
                self.lost.append(detail)

    def _client(self, i: int) -> None:
        n = 0
        while not self.stopping.is_set():
            n += 1
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            except ConnectionRefusedError:
                self._count("refused_at_connect")
                time.sleep(0.02)  # nobody listening: do not spin
                continue
            with sock:
                sock.settimeout(60)
                self._count("sent")
                body = b'{"n": %d}' % n
                try:
                    sock.sendall(b"POST /c%d/%d HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                                 % (i, n, self.host, len(body), body))
                    status, headers, data = read_answer(sock)
                except OSError as exc:
                    self._count("lost", f"client {i} request {n}: {type(exc).__name__}: {exc}")
                    continue
            answer = json.loads(data) if status == 200 else {}
            if answer.get("path") == f"/c{i}/{n}":
                self._count("answered_200")
                with self.lock:
                    self.replicas[answer["replica"]] += 1
            elif status == 503 and headers.get(b"retry-after"):
                self._count("answered_503_retry")
            else:
                self._count("lost", f"client {i} request {n}: HTTP {status} {data[:200]!r}")

    def figures(self) -> dict:
        answered = sum(v for k, v in self.counts.items() if k.startswith("answered"))
        return dict(self.counts, answered=answered, lost=self.counts["lost"],
                    refused_at_connect=self.counts["refused_at_connect"])




@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zero-loss")
    f = write_yaml(tmp / "zero.yaml",
                   paddleservice("steady", "zero", ECHO, minScale=2),
                   paddleservice("shrink", "zero", SLOW_ECHO, minScale=3, window="6s"))
    s = start_stack(tmp, [f], extra=["--request-timeout", "30"])
    wait_for(lambda: s.service("zero/steady")["status"]["replicas"] == 2
             and s.service("zero/shrink")["status"]["replicas"] == 3, 90, 0.2, "replicas ready")
    yield s
    record("zero_loss", FIGURES)
    assert s.stop() == 0, "\n".join(s.output[-30:])


def _restarted(stack, old: int) -> int:
    return wait_for(lambda: (p := activator_pid(stack)) not in (None, old) and p, 120, 0.1, "a new activator")


def test_sigterm_then_traffic_moves_away_loses_nothing(stack):
    """SIGTERM while 8 clients send; they keep sending for 2 s into the drain (the draining activator must
    still answer them, new connections too), then stop, as clients do once a load balancer has seen
    readiness fail. The activator goes quiet, exits, and `up` starts a new one that serves. Every request
    sent is answered. Fails if SIGTERM cut connections at once instead of draining."""
    old = activator_pid(stack)
    with Load(stack, b"steady.zero.example.com") as load:
        wait_for(lambda: load.counts["answered_200"] >= 50, 30, 0.05, "traffic flowing")
        os.kill(old, signal.SIGTERM)
        at_term = load.counts["answered_200"]
        wait_for(lambda: load.counts["answered_200"] >= at_term + 50, 30, 0.05, "answers while draining")
    during = load.figures()
    new = _restarted(stack, old)
    with Load(stack, b"steady.zero.example.com") as after:
        wait_for(lambda: after.counts["answered_200"] >= 50, 60, 0.05, "the new activator serving")
    FIGURES["activator_sigterm_then_quiet"] = {"during_drain": during, "after_restart": after.figures()}
    assert new != old
    for figures, lost in ((during, load.lost), (after.figures(), after.lost)):
        assert figures["lost"] == 0 and figures["sent"] == figures["answered"], (figures, lost)
    assert during["refused_at_connect"] == 0, during  # the draining activator still accepted connections


def test_sigterm_under_continuous_load_loses_nothing(stack):
    """SIGTERM while 8 clients never stop (nothing tells them to go elsewhere on a laptop): the activator
    drains for --drain-seconds, exits, and `up` starts a new one. Only connects while no activator listens
    may be refused; every request whose connection was accepted must be answered."""
    old = activator_pid(stack)
    with Load(stack, b"steady.zero.example.com") as load:
        wait_for(lambda: load.counts["answered_200"] >= 50, 30, 0.05, "traffic flowing")
        os.kill(old, signal.SIGTERM)
        new = _restarted(stack, old)
        served_before = load.counts["answered_200"]
        wait_for(lambda: load.counts["answered_200"] >= served_before + 50, 60, 0.05,
                 "the new activator serving")
    figures = load.figures()
    FIGURES["activator_sigterm_continuous"] = figures
    assert new != old and figures["answered_200"] > 100, figures
    assert figures["lost"] == 0 and figures["sent"] == figures["answered"], (figures, load.lost)


def test_scale_down_under_load_loses_nothing(stack):
    """3 replicas, then minScale 1 re-applied: the autoscaler removes two replicas while 8 clients send.
    Every request is answered 200. Fails if a replica were stopped with requests in flight or while
    still in the activator's routes (a reset or a 502)."""
    key = "zero/shrink"
    assert len(replica_ids(key)) == 3
    manifest = paddleservice("shrink", "zero", SLOW_ECHO, minScale=1, window="6s")
    with Load(stack, b"shrink.zero.example.com") as load:
        wait_for(lambda: load.counts["answered_200"] >= 50, 30, 0.05, "traffic flowing")
        status, _, data = stack.control_http("POST", "/v1/paddleservices", manifest)
        assert status == 200, data
        wait_for(lambda: len(replica_ids(key)) == 1 and stack.service(key)["status"]["replicas"] == 1, 120, 0.2,
                 "scaled down to 1 replica")
        served_before = load.counts["answered_200"]
        wait_for(lambda: load.counts["answered_200"] >= served_before + 50, 60, 0.05, "still serving after")
    figures = load.figures()
    removed = set(load.replicas) - replica_ids(key)
    FIGURES["scale_down"] = dict(figures, answers_from_removed_replicas=sum(load.replicas[r] for r in removed))
    assert len(removed) == 2, load.replicas  # the two removed replicas were serving this load
    assert figures["lost"] == 0 and figures["refused_at_connect"] == 0, (figures, load.lost)
    assert figures["sent"] == figures["answered_200"] > 100, figures
