"""The storage sidecar's hand-over to the runtime beside it: the report written atomically and a FIFO
that wakes the waiting runtime, whichever of the two comes first; a failed attempt is said and waited
past; and the real sidecar process (`python -m runtime.storage --stay`) pulling from an origin on
loopback, handing over, idling, and ending at SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.storage import handoff
from tests.storage.http_origin import Blob, Origin

ROOT = Path(__file__).resolve().parents[2]


class Waiter:
    """wait_for_report as a task, with the failures it says and an event for each one."""

    def __init__(self, report: Path) -> None:
        self.said: list[str] = []
        self.failed = asyncio.Event()
        self.task = asyncio.ensure_future(handoff.wait_for_report(report, self._say))

    def _say(self, why: str) -> None:
        self.said.append(why)
        self.failed.set()

    async def parked(self) -> None:
        """Let the task run to its first wait (a task's first step runs on the loop's next turn)."""
        for _ in range(3):
            await asyncio.sleep(0)


def test_a_report_published_before_the_wait_is_taken_at_once(tmp_path):
    report = tmp_path / "pull.json"
    handoff.publish(report, {"uri": "s3://b/m", "cache": "hit"})  # no reader: nobody to wake, no error
    said: list[str] = []
    got = asyncio.run(asyncio.wait_for(handoff.wait_for_report(report, said.append), 10))
    assert got == {"uri": "s3://b/m", "cache": "hit"} and said == []


def test_the_waiter_is_woken_by_a_later_report_and_says_a_failed_attempt_once(tmp_path):
    report = tmp_path / "pull.json"
    denied = "cannot pull s3://b/m: access denied (HTTP 403)"

    async def scenario() -> dict:
        w = Waiter(report)
        await w.parked()
        assert handoff.fifo_of(report).exists() and not w.task.done()
        handoff.publish(report, {"uri": "s3://b/m", "error": denied})
        await asyncio.wait_for(w.failed.wait(), 10)
        await w.parked()
        assert w.said == [denied] and not w.task.done()
        handoff.clear(report)  # the sidecar's next attempt
        handoff.publish(report, {"uri": "s3://b/m", "cache": "miss"})
        got = await asyncio.wait_for(w.task, 10)
        assert w.said == [denied]
        return got

    assert asyncio.run(scenario()) == {"uri": "s3://b/m", "cache": "miss"}


def test_a_torn_or_foreign_file_is_not_a_report(tmp_path):
    report = tmp_path / "pull.json"
    report.write_text('{"uri": "s3://b')
    assert handoff.read(report) is None
    report.write_text("[1, 2]")
    assert handoff.read(report) is None
    handoff.clear(report)
    handoff.clear(report)  # twice: nothing there is fine
    assert handoff.read(report) is None


def _sidecar(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runtime.storage", *args, "--stay"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def origin():
    with Origin() as o:
        yield o


def test_the_sidecar_hands_over_idles_and_ends_at_sigterm(origin, tmp_path):
    origin.blobs["/iris.onnx"] = Blob(b"onnx", etag='"a"')
    report, dest = tmp_path / "run" / "pull.json", tmp_path / "mnt-models"
    report.parent.mkdir()
    report.write_text(json.dumps({"uri": "stale", "cache": "hit"}))  # a previous attempt's: cleared first

    async def scenario() -> tuple[dict, subprocess.Popen]:
        handoff.clear(report)  # (as the sidecar does; here so the waiter cannot take the stale one)
        w = Waiter(report)
        proc = _sidecar([origin.url("/iris.onnx"), "--cache", str(tmp_path / "cache"), "--dest", str(dest),
                         "--report", str(report), "--termination-log", str(tmp_path / "term")])
        return await asyncio.wait_for(w.task, 60), proc

    got, proc = asyncio.run(scenario())
    try:
        assert got["cache"] == "miss" and got["uri"] == origin.url("/iris.onnx")
        assert (dest / "iris.onnx").read_bytes() == b"onnx"
        with pytest.raises(subprocess.TimeoutExpired):  # it stays: an exited sidecar would be restarted
            proc.wait(0.5)
        # idle as a bare interpreter: the pull's modules are gone (the command line is the idle one)
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert b"-S" in cmdline and b"runtime.storage" not in cmdline
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_a_failed_sidecar_pull_is_handed_over_and_exits_for_a_retry(origin, tmp_path):
    report = tmp_path / "pull.json"

    async def scenario() -> list[str]:
        w = Waiter(report)
        proc = _sidecar([origin.url("/absent.onnx"), "--cache", str(tmp_path / "cache"),
                         "--report", str(report), "--termination-log", str(tmp_path / "term")])
        await asyncio.wait_for(w.failed.wait(), 60)
        assert await asyncio.to_thread(proc.wait, 30) == 4
        assert not w.task.done()  # waiting for the kubelet's restart of the sidecar
        w.task.cancel()
        return w.said

    said = asyncio.run(scenario())
    assert said == [f"cannot pull {origin.url('/absent.onnx')}: not found (HTTP 404)"]
    assert (tmp_path / "term").read_text() == said[0]
    assert os.path.exists(handoff.fifo_of(report))


def test_a_failed_pull_hands_over_the_uri_without_its_secrets(origin, tmp_path):
    """The failure report names the URI as conditions show it: no user info, no query string."""
    report = tmp_path / "pull.json"
    url = origin.url("/absent.onnx").replace("http://", "http://reader:s3cret-pw@") + "?X-Amz-Signature=s3cret-sig"
    proc = _sidecar([url, "--cache", str(tmp_path / "cache"), "--report", str(report),
                     "--termination-log", str(tmp_path / "term")])
    assert proc.wait(60) == 4
    got = handoff.read(report)
    assert got is not None and got["uri"] == origin.url("/absent.onnx") + "?…", got
    assert "s3cret" not in report.read_text() and "s3cret" not in (tmp_path / "term").read_text()
