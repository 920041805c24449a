"""Faults on the local stack, each with an asserted outcome: kill -9 a replica mid-load, kill the
activator (restarted by `up`), freeze the autoscaler (the activator keeps serving), a corrupt model."""

from __future__ import annotations

import collections
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import (
    child_pids,
    paddleservice,
    replica_ids,
    replica_pids,
    start_stack,
    wait_for,
    write_yaml,
)
from tests.reliability.figures import record

RUNTIME = "python3 -m runtime --model lac --name lac --port $PORT"
REQ = {"feed": [{"words": "我爱北京天安门"}], "fetch": ["word_seg"]}
HOST = "faulty.faults.example.com"
KEY = "faults/faulty"
FIGURES: dict[str, dict] = {}

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    corrupt = tmp / "corrupt-model"
    corrupt.mkdir()
    (corrupt / "inference.pdmodel").write_bytes(os.urandom(256))
    (corrupt / "inference.pdiparams").write_bytes(os.urandom(256))
    f = write_yaml(
        tmp / "faults.yaml",
        paddleservice("faulty", "faults", RUNTIME, minScale=2),
        paddleservice("corrupt", "faults", f"python3 -m runtime --model {corrupt} --name m --port $PORT", minScale=0),
    )
    s = start_stack(tmp, [f], extra=["--request-timeout", "20", "--replica-ready-timeout", "60"])
    wait_for(lambda: s.service(KEY)["status"]["replicas"] == 2, 120, 0.2, "2 ready replicas")
    yield s
    assert s.stop() == 0
    record("faults", FIGURES)


def _reason(data: bytes) -> str | None:
    try:
        return json.loads(data).get("error")
    except (ValueError, AttributeError):
        return None


def load(stack, seconds: float, clients: int = 4) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def run() -> None:
        while time.monotonic() < end:
            try:
                status, _, data = stack.request(HOST, "/lac/prediction", REQ, timeout=30)
            except Exception as exc:
                with lock:
                    counts[f"lost:{type(exc).__name__}"] += 1
                continue
            with lock:
                if status == 200 and json.loads(data)["result"][0]["word_seg"] == "我|爱|北京|天安门":
                    counts["ok"] += 1
                elif status in (502, 503) and _reason(data):
                    counts[f"clear_error_{status}"] += 1
                else:
                    counts[f"unexpected_{status}"] += 1

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    return counts, threads  # type: ignore[return-value]


def finish(threads) -> None:
    for t in threads:
        t.join(60)
        assert not t.is_alive(), "a client hung"


def test_kill_replica_mid_load(stack):
    counts, threads = load(stack, 6)
    wait_for(lambda: counts["ok"] >= 5, 20, 0.05, "traffic flowing")
    victim = sorted(replica_ids(KEY))[0]
    for pid in replica_pids(KEY):
        env = Path(f"/proc/{pid}/environ").read_bytes()
        if f"ELASTICSERVING_REPLICA={victim}".encode() in env:
            os.kill(pid, signal.SIGKILL)
    finish(threads)
    FIGURES["kill_replica"] = dict(counts)
    assert not any(k.startswith(("lost", "unexpected")) for k in counts), counts
    assert counts["ok"] > 0
    wait_for(lambda: stack.service(KEY)["status"]["replicas"] == 2, 60, 0.2, "replica replaced")


def test_kill_activator_it_restarts(stack):
    acts = [p for p in child_pids(stack.proc.pid) if b"activator" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(acts) == 1
    os.kill(acts[0], signal.SIGKILL)

    def serving():
        try:
            status, _, _ = stack.request(HOST, "/lac/prediction", REQ, timeout=5)
            return status == 200
        except OSError:
            return False

    t0 = time.monotonic()
    wait_for(serving, 30, 0.1, "activator restarted and serving")
    FIGURES["kill_activator"] = {"recovered_seconds": round(time.monotonic() - t0, 2)}
    new = [p for p in child_pids(stack.proc.pid) if b"activator" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert new and new[0] != acts[0]


def test_frozen_autoscaler_activator_keeps_serving(stack):
    os.kill(stack.proc.pid, signal.SIGSTOP)
    try:
        counts, threads = load(stack, 4, clients=2)
        finish(threads)
    finally:
        os.kill(stack.proc.pid, signal.SIGCONT)
    FIGURES["autoscaler_frozen"] = dict(counts)
    assert counts["ok"] > 0 and set(counts) == {"ok"}, counts


def test_corrupt_model_is_a_clear_error(stack):
    t0 = time.monotonic()
    status, _, data = stack.request("corrupt.faults.example.com", "/m/prediction", REQ, timeout=60)
    FIGURES["corrupt_model"] = {"status": status, "seconds": round(time.monotonic() - t0, 2)}
    assert status == 503
    assert "exit" in json.loads(data)["error"]
    cond = next(c for c in stack.service("faults/corrupt")["status"]["conditions"] if c["type"] == "Ready")
    assert cond["status"] == "False"
