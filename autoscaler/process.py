"""Stopping child processes the stack started (activator, Prometheus): SIGTERM, then SIGKILL.

Shared by `elasticserving up` and its optional helpers."""

from __future__ import annotations

import asyncio
import signal


async def terminate(proc: asyncio.subprocess.Process | None, timeout: float = 10.0) -> None:
    """Ask `proc` to exit (SIGTERM); kill it if it is still there after `timeout` seconds."""
    if proc is None or proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
