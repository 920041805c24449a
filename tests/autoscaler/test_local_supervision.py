"""The local platform's supervision without processes (`ReplicaJudge`: when a started replica is ready,
failed, or started again plainly), and `up`'s teardown: a start that fails leaves nothing running."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

import pytest

from autoscaler.local.platform import EXITED, FAILED, PLAIN, STOPPED, ReplicaJudge, Verdict
from autoscaler.local.running import record_path
from autoscaler.local.stack import PortTaken, StackOptions, run_stack
from tests.helpers import ROOT, paddleservice, replica_pids, write_yaml

ECHO = f"{sys.executable} {ROOT}/tests/fixtures/echo_replica.py"
NEVER_READY = f"replica not ready after {120:g}s"

# forked, probe answers in order, seconds since the start, exit code (None: running), stopping -> verdict
JUDGE_CASES = [
    ("starting", False, [], 1.0, None, False, None),
    ("still starting just before the deadline", False, [False] * 50, 119.99, None, False, None),
    ("ready answers once", False, [True], 1.0, None, False, None),
    ("never ready", False, [False], 120.0, None, False, Verdict(FAILED, NEVER_READY, "never ready")),
    ("exits before ready", False, [False], 3.0, 7, False,
     Verdict(EXITED, "replica command exited before it was ready (exit code 7)")),
    ("crashes once ready", False, [True], 300.0, -9, False, Verdict(EXITED, "replica command crashed (exit code -9)")),
    ("no deadline once ready", False, [True, True], 1e6, None, False, None),
    ("two misses are forgiven", False, [True, False, False], 5.0, None, False, None),
    ("an answer resets the misses", False, [True, False, False, True, False, False], 8.0, None, False, None),
    ("three misses in a row", False, [True, False, False, False], 5.0, None, False,
     Verdict(FAILED, "replica stopped answering its readiness probe", "unhealthy")),
    ("misses before ready are not counted", False, [False] * 10 + [True], 5.0, None, False, None),
    ("stopping wins over an exit", False, [True], 5.0, 0, True, Verdict(STOPPED)),
    ("stopping wins over the deadline", False, [], 500.0, None, True, Verdict(STOPPED)),
    ("forked: hangs", True, [False], 10.0, None, False, Verdict(PLAIN, "was not ready after 10s")),
    ("forked: within its short deadline", True, [False], 9.5, None, False, None),
    ("forked: dies of a signal", True, [], 0.5, -11, False, Verdict(PLAIN, "exited (code -11)")),
    ("forked: exits 1", True, [], 0.5, 1, False, Verdict(PLAIN, "exited (code 1)")),
    ("forked: bad arguments fail as a plain start would", True, [], 0.5, 2, False,
     Verdict(EXITED, "replica command exited before it was ready (exit code 2)")),
    ("forked: the model does not load", True, [], 0.5, 3, False,
     Verdict(EXITED, "replica command exited before it was ready (exit code 3)")),
    ("forked and ready: a crash is a crash", True, [True], 50.0, 1, False,
     Verdict(EXITED, "replica command crashed (exit code 1)")),
    ("forked and ready: no short deadline", True, [True], 50.0, None, False, None),
    ("forked and stopping", True, [], 50.0, None, True, Verdict(STOPPED)),
]


@pytest.mark.parametrize("forked, answers, elapsed, exit_code, stopping, expected",
                         [case[1:] for case in JUDGE_CASES], ids=[case[0] for case in JUDGE_CASES])
def test_replica_judge(forked, answers, elapsed, exit_code, stopping, expected):
    judge = ReplicaJudge(forked, ready_timeout=120.0, prewarm_ready_timeout=10.0)
    turned_ready = [judge.probed(a) for a in answers]
    assert turned_ready.count(True) == (1 if True in answers else 0)  # ready once, at the first answer
    assert judge.verdict(elapsed, exit_code, stopping) == expected


def test_replica_judge_timeouts_print_as_given():
    assert ReplicaJudge(False, 0.5, 10.0).verdict(0.5, None).message == "replica not ready after 0.5s"
    assert ReplicaJudge(True, 120.0, 2.5).verdict(2.5, None).message == "was not ready after 2.5s"


# ---- `up`'s teardown when a start fails ----------------------------------------------------------


def _children() -> set[int]:
    """Live (not zombie) child processes of this one."""
    out = set()
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            state, ppid = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[:2]
        except OSError:
            continue
        if int(ppid) == os.getpid() and state != "Z":
            out.add(int(d))
    return out


def _free(port: int) -> bool:
    """Nobody listens on or holds 127.0.0.1:port."""
    try:
        socket.create_server(("127.0.0.1", port)).close()
    except OSError:
        return False
    return True


@pytest.fixture
def up_files(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))  # token and record files of this test only
    return [str(write_yaml(tmp_path / "s.yaml", paddleservice("echo", "teardown", ECHO, minScale=1)))]


@pytest.mark.timeout(120)
async def test_a_failing_later_start_stops_everything_started(up_files, tmp_path, monkeypatch):
    """Prometheus (the last start) fails once the activator and a replica run: all of it stops, ports close."""
    before = _children()
    seen: dict[str, object] = {}

    async def failing_start(prometheus) -> None:
        for _ in range(600):  # the replica of minScale 1 is running
            if replica_pids("teardown/echo"):
                break
            await asyncio.sleep(0.05)
        seen["replicas"] = replica_pids("teardown/echo")
        seen["children"] = _children() - before
        seen["record"] = record_path().read_text()
        raise RuntimeError("prometheus failed to start")

    from autoscaler.local.prometheus import LocalPrometheus

    monkeypatch.setattr(LocalPrometheus, "start", failing_start)
    opts = StackOptions(files=up_files, http_port=0, grpc_port=0, control_port=0, prometheus_port=1,
                        log_dir=str(tmp_path / "logs"), token_file=str(tmp_path / "t.token"))
    with pytest.raises(RuntimeError, match="prometheus failed to start"):
        await run_stack(opts, asyncio.Event())
    assert seen["replicas"] and seen["children"], seen  # the activator and a replica had started
    ports = json.loads(seen["record"])["ports"]
    assert {"activator HTTP", "gRPC", "control API", "admin"} <= set(ports)
    assert [role for role, port in ports.items() if role != "Prometheus" and not _free(port)] == []
    assert _children() - before == set()
    assert replica_pids("teardown/echo") == []
    assert not (tmp_path / "t.token").exists() and not record_path().exists()


@pytest.mark.timeout(60)
async def test_a_taken_port_stops_what_started_before_it(up_files, tmp_path):
    """The activator's port is taken: the control API, the controller and the zygote launcher stop."""
    before = _children()
    with socket.create_server(("127.0.0.1", 0)) as taken:
        control = socket.create_server(("127.0.0.1", 0))
        control_port = control.getsockname()[1]
        control.close()
        opts = StackOptions(files=up_files, http_port=taken.getsockname()[1], grpc_port=0,
                            control_port=control_port, prewarm=True, token_file=str(tmp_path / "t.token"))
        with pytest.raises(PortTaken, match="cannot listen on"):
            await run_stack(opts, asyncio.Event())
    assert _free(control_port)
    assert _children() - before == set()
    assert not (tmp_path / "t.token").exists() and not record_path().exists()


@pytest.mark.timeout(60)
async def test_a_failing_early_start_stops_the_zygotes(up_files, tmp_path, monkeypatch):
    """`up --prewarm --log-dir FILE`: the platform cannot start once the zygote launcher runs; it stops."""
    from autoscaler.local.platform import LocalPlatform

    before, platform_start = _children(), LocalPlatform.start

    async def start_once_a_zygote_runs(platform) -> None:
        for _ in range(400):
            if _children() - before:
                break
            await asyncio.sleep(0.05)
        await platform_start(platform)

    monkeypatch.setattr(LocalPlatform, "start", start_once_a_zygote_runs)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the launcher's working directory
    (tmp_path / "not-a-dir").write_text("")
    opts = StackOptions(files=up_files, prewarm=True, log_dir=str(tmp_path / "not-a-dir"))
    with pytest.raises(FileExistsError):
        await run_stack(opts, asyncio.Event())
    await asyncio.sleep(1.0)  # a zygote left to itself would restart by now
    assert _children() - before == set()
    assert list(tmp_path.glob("elasticserving-zygote-*")) == []
