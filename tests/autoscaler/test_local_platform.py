"""The local platform with real processes: replicas start from `arg`, turn ready, restart after a
crash, report a failing command's reason, scale down and stop without leaving processes behind."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import pytest

from autoscaler.local.platform import LocalPlatform
from autoscaler.spec import PaddleService
from tests.helpers import ROOT, replica_ids, replica_pids

ECHO = f"{sys.executable} {ROOT}/tests/fixtures/echo_replica.py"

pytestmark = pytest.mark.timeout(120)


def svc(name: str, arg: str) -> PaddleService:
    return PaddleService.from_dict({
        "apiVersion": "elasticserving.paddlepaddle.org/v1", "kind": "PaddleService",
        "metadata": {"name": name, "namespace": "lp"},
        "spec": {"default": {"containerImage": "i", "tag": "t", "port": 1, "arg": arg}}})


async def until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
async def platform(tmp_path):
    p = LocalPlatform(log_dir=tmp_path, ready_timeout=5.0, drain_timeout=3.0, max_backoff=1.0)
    changes: list[str] = []
    p.on_change = changes.append
    await p.start()
    p.changes = changes  # type: ignore[attr-defined]
    yield p
    await p.close()


async def test_scale_up_ready_and_down(platform):
    s = svc("echo", ECHO)
    await platform.apply(s)
    assert platform.state(s.key, "default").actual == 0
    await platform.scale(s.key, "default", 2)
    await until(lambda: len(platform.state(s.key, "default").ready) == 2, 30, "2 ready")
    eps = platform.state(s.key, "default").ready
    assert len({e.http_port for e in eps}) == 2 and all(e.grpc_port for e in eps)
    assert s.key in platform.changes
    assert len(replica_ids(s.key)) == 2
    await platform.scale(s.key, "default", 0)
    await until(lambda: platform.state(s.key, "default").actual == 0, 10, "scale to 0")
    await until(lambda: replica_pids(s.key) == [], 10, "processes gone")


async def test_crashed_replica_is_restarted(platform):
    s = svc("crashy", ECHO)
    await platform.apply(s)
    await platform.scale(s.key, "default", 1)
    await until(lambda: platform.state(s.key, "default").ready, 30, "ready")
    pids = replica_pids(s.key)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    await until(lambda: not platform.state(s.key, "default").ready, 10, "crash noticed")
    assert "crashed" in (platform.state(s.key, "default").error or "")
    await until(lambda: platform.state(s.key, "default").ready, 30, "restarted")
    assert set(replica_pids(s.key)).isdisjoint(pids)
    assert platform.state(s.key, "default").error is None


async def test_failing_command_reports_reason(platform):
    s = svc("fails", "echo 'cannot load model' >&2; exit 7")
    await platform.apply(s)
    await platform.scale(s.key, "default", 1)
    err = await until(lambda: platform.state(s.key, "default").error, 10, "error")
    assert "exit code 7" in err and "cannot load model" in err


async def test_never_ready_times_out(platform):
    s = svc("slow", f"{ECHO} --ready-after 1000")
    await platform.apply(s)
    await platform.scale(s.key, "default", 1)
    err = await until(lambda: platform.state(s.key, "default").error, 15, "error")
    assert "not ready after 5s" in err
    await until(lambda: not replica_pids(s.key) or platform.state(s.key, "default").starting, 10, "killed")


async def test_spec_change_rolls_replicas(platform):
    s = svc("roll", ECHO)
    await platform.apply(s)
    await platform.scale(s.key, "default", 1)
    await until(lambda: platform.state(s.key, "default").ready, 30, "ready")
    first = platform.state(s.key, "default").ready[0].id
    await platform.apply(svc("roll", ECHO + " --delay 0"))
    await until(lambda: [e.id for e in platform.state(s.key, "default").ready] not in ([], [first]), 30,
                "new replica ready")
    await until(lambda: len(replica_ids(s.key)) == 1, 15, "old replica stopped")


async def test_close_leaves_no_process(tmp_path):
    p = LocalPlatform(log_dir=tmp_path)
    await p.start()
    s = svc("closing", ECHO)
    await p.apply(s)
    await p.scale(s.key, "default", 2)
    await until(lambda: len(p.state(s.key, "default").ready) == 2, 30, "2 ready")
    await p.close()
    assert replica_pids(s.key) == []


async def test_replica_output_is_kept_per_side_and_in_the_log_dir(platform, tmp_path):
    s = svc("talk", f"echo out-line; echo err-line >&2; exec {ECHO}")
    await platform.apply(s)
    log = platform.logs(s.key, "default")
    follower = log.follow()
    await platform.scale(s.key, "default", 1)
    await until(lambda: len(platform.state(s.key, "default").ready) == 1, 30, "ready")
    await until(lambda: {"out-line", "err-line"} <= {line.text for line in log.tail()}, 10, "both streams")
    (rid,) = {line.replica for line in log.tail()}
    assert rid == platform.state(s.key, "default").ready[0].id
    live = {(await asyncio.wait_for(follower.get(), 5)).text for _ in range(2)}
    assert live == {"out-line", "err-line"}
    logfile = (tmp_path / f"{rid}.log").read_text()
    assert "out-line" in logfile and "err-line" in logfile
    # the output outlives the replica (scale to zero), and ends for followers when the side goes
    await platform.scale(s.key, "default", 0)
    await until(lambda: platform.state(s.key, "default").actual == 0, 10, "scale to 0")
    assert "out-line" in {line.text for line in platform.logs(s.key, "default").tail()}
    await platform.delete(s.key)
    assert await asyncio.wait_for(follower.get(), 5) is None
    assert platform.logs(s.key, "default") is None


def test_replica_ports_are_never_handed_out_twice(monkeypatch):
    """The kernel may give a released free port out again before the replica it went to has bound it."""
    import autoscaler.local.platform as platform_mod
    from autoscaler.local.platform import Replica, SideRuntime

    kernel = iter([5000, 5000, 5001, 5002, 5001, 5003, 5004])
    monkeypatch.setattr(platform_mod, "free_port", lambda host="127.0.0.1": next(kernel))
    p = LocalPlatform()
    sr = SideRuntime("lp/a", "default", svc("a", ECHO).spec.default)
    sr.replicas["r1"] = Replica("r1", "default", 0, 5002, 5003)  # given out, maybe not bound yet
    p._sides[("lp/a", "default")] = sr
    assert p._free_ports(2) == [5000, 5001]
    sr.replicas["r2"] = Replica("r2", "default", 0, 5000, 5001)
    assert p._free_ports(1) == [5004]
