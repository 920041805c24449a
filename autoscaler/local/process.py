"""Child processes the stack starts (activator, Prometheus, zygotes, replicas): tied to the stack's life,
and stopped with SIGTERM, then SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal


def die_with_parent() -> None:
    """preexec_fn for children of the stack: SIGKILL when the process that started them dies (Linux),
    so nothing outlives `elasticserving up`, even after a kill -9."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


async def terminate(proc: asyncio.subprocess.Process | None, timeout: float = 10.0) -> None:
    if proc is None or proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def pipe_reader(fd: int) -> asyncio.StreamReader:
    """An asyncio reader of the read end `fd` of a pipe (closed with the reader's transport)."""
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                       os.fdopen(fd, "rb", buffering=0))
    return reader
