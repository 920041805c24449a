"""Request IDs and the one structured line per request (`--log-format text|json`), written by the
dispatcher when a request ends, for both front doors.

Lines are buffered and written a few times a second with one write call: at thousands of requests per
second a logging.Handler (a lock, a format and a flush per line) costs a measurable share of the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import sys
import time
from typing import IO, Literal

LogFormat = Literal["text", "json"]
REQUEST_ID_HEADER = "x-request-id"
_ID_OK = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")
FLUSH_SECONDS = 0.2
FLUSH_BYTES = 64 * 1024


# New ids: a random per-process prefix and a counter (32 hex digits, unique across processes without a
# getrandom call per request; ids name requests, they are not secrets).
_PREFIX = os.urandom(8).hex()
_COUNTER = itertools.count(int.from_bytes(os.urandom(4), "big"))


def request_id(given: str | bytes | None) -> str:
    """The client's id when it is a sane token (1-128 visible characters, no spaces), else a new one:
    an id goes into logs and headers, so nothing that could forge a log line or a header passes."""
    if given:
        text = given.decode("latin-1") if isinstance(given, bytes) else given
        if _ID_OK.match(text):
            return text
    return f"{_PREFIX}{next(_COUNTER) & 0xFFFFFFFFFFFFFFFF:016x}"


class AccessLog:
    def __init__(self, fmt: LogFormat = "text", stream: IO[str] | None = None, enabled: bool = True) -> None:
        self.fmt = fmt
        self.enabled = enabled
        self._stream = stream or sys.stderr
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._second, self._stamp = 0, ""

    def request(self, rid: str, protocol: str, service: str, side: str, replica: str, status: str,
                duration: float, trace_id: str = "") -> None:
        if not self.enabled:
            return
        if self.fmt == "json":
            line = json.dumps({"ts": round(time.time(), 3), "msg": "request", "request_id": rid,
                               "protocol": protocol, "service": service, "side": side, "replica": replica,
                               "status": status, "duration_ms": round(duration * 1000, 3),
                               **({"trace_id": trace_id} if trace_id else {})}) + "\n"
        else:
            now = int(time.time())
            if now != self._second:
                self._second, self._stamp = now, time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now))
            trace = f" trace_id={trace_id}" if trace_id else ""
            line = (f"{self._stamp} request id={rid}{trace} protocol={protocol} service={service} side={side} "
                    f"replica={replica} status={status} duration_ms={duration * 1000:.3f}\n")
        self._lines.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
            except RuntimeError:  # no loop (a unit test calling directly): write at once
                self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        text = "".join(self._lines)
        self._lines.clear()
        self._size = 0
        with contextlib.suppress(OSError, ValueError):  # a closed stderr must not take a request down with it
            self._stream.write(text)
            self._stream.flush()
