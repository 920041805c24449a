"""The pull's report handed from the storage sidecar to the model container of the same Pod: the sidecar
writes it (atomically) into their shared emptyDir and wakes the replica through a FIFO beside it; the
replica, started in parallel, waits for it before loading the model (no polling, no deadline: a failed
pull is retried by the kubelet, and the Pod's status says why meanwhile)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
from collections.abc import Callable
from pathlib import Path


def fifo_of(report: Path) -> Path:
    return report.with_name(report.name + ".fifo")


def _make_fifo(path: Path) -> None:
    """Either side may come first: both make it, the second finds it there."""
    with contextlib.suppress(FileExistsError):
        os.mkfifo(path, 0o600)


def clear(report: Path) -> None:
    """A restarted sidecar (a retry) removes the last attempt's report before it pulls again."""
    report.unlink(missing_ok=True)


def publish(report: Path, content: dict) -> None:
    """Write the report (a rename: a reader sees all of it or nothing), then wake a waiting reader. With no
    reader on the FIFO yet there is no one to wake: a reader opens it before it looks for the report."""
    tmp = report.with_name(report.name + ".tmp")
    tmp.write_text(json.dumps(content))
    os.replace(tmp, report)
    fifo = fifo_of(report)
    _make_fifo(fifo)
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno != errno.ENXIO:  # ENXIO: no reader
            raise
        return
    os.close(fd)  # the reader's end hangs up: that is the wake-up


def read(report: Path) -> dict | None:
    """The report, or None while there is none (or only part of a foreign write)."""
    try:
        content = json.loads(report.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return content if isinstance(content, dict) else None


async def wait_for_report(report: Path, on_failure: Callable[[str], None]) -> dict:
    """The first successful report. A failed attempt's reason goes to `on_failure` (once per attempt) and
    the wait goes on for the sidecar's next attempt."""
    content = read(report)
    if content is not None and "error" not in content:
        return content  # pulled before this process started (or a plain init container pulled it)
    fifo = fifo_of(report)
    _make_fifo(fifo)
    loop = asyncio.get_running_loop()
    said: str | None = None
    while True:
        # Open before looking: a report published after the look wakes this open end.
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            content = read(report)
            if content is not None and "error" not in content:
                return content
            if content is not None and content["error"] != said:
                said = str(content["error"])
                on_failure(said)
            woken = loop.create_future()
            loop.add_reader(fd, _wake, woken)
            try:
                await woken
            finally:
                loop.remove_reader(fd)
        finally:
            os.close(fd)


def _wake(woken: asyncio.Future) -> None:
    if not woken.done():
        woken.set_result(None)
