"""The machine's floor for the runtime hot path (benchmarks.runtime_bench): the least an HTTP server can
add on this machine around the same computation as the direct model call, measured with the same wrk.

A bare asyncio protocol on uvloop (no framework, no parsing beyond the request's framing): each request
on a keep-alive connection runs, on the loop as the runtime runs a lone LAC request, the direct LAC call
(`?lac=1`, when started with `--lac`: benchmarks.direct_lac) or a busy-wait of `?us=N` microseconds, and
answers a fixed 200. What wrk then measures beyond the direct call is the loopback round trip, the
wake-ups of idle vCPUs and what they and the network stack cost the call itself, which no server design
removes. Loopback only; benchmark use only.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

MAX_HEAD = 16 * 1024  # bytes of request line + headers
MAX_BODY = 1 << 20
MAX_BUSY_US = 1_000_000
_OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'
_BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"


def busy_wait(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def parse_head(head: bytes) -> tuple[float, int, bool]:
    """(busy seconds, body length, run LAC) from a request head; ValueError with a reason when malformed."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise ValueError("malformed request line")
    query = parse_qs(urlsplit(parts[1].decode("latin-1")).query)
    us = int(query.get("us", ["0"])[0])
    if not 0 <= us <= MAX_BUSY_US:
        raise ValueError(f"us must be 0..{MAX_BUSY_US}")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if not 0 <= length <= MAX_BODY:
        raise ValueError(f"body must be at most {MAX_BODY} bytes")
    return us / 1e6, length, query.get("lac", ["0"])[0] == "1"


class FloorProtocol(asyncio.Protocol):
    def __init__(self, lac: Callable[[], object] | None = None) -> None:
        self.lac = lac  # the direct LAC call, when the server was started with --lac
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self._refuse("request head too large")
                return
            try:
                busy, length, lac = parse_head(self.buf[:end])
                if lac and self.lac is None:
                    raise ValueError("lac=1 needs the server started with --lac")
            except ValueError as exc:
                self._refuse(str(exc))
                return
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length:]
            if lac:
                self.lac()  # type: ignore[misc]
            busy_wait(busy)
            self.transport.write(_OK)

    def _refuse(self, reason: str) -> None:
        assert self.transport is not None
        msg = reason.encode()
        self.transport.write(_BAD % (len(msg), msg))
        self.transport.close()
        self.buf = b""


async def serve(host: str, port: int, lac: Callable[[], object] | None = None) -> None:
    server = await asyncio.get_running_loop().create_server(lambda: FloorProtocol(lac), host, port)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.floor_server")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--lac", action="store_true", help="load LAC: `?lac=1` runs the direct LAC call")
    args = ap.parse_args(argv)
    lac = None
    if args.lac:
        from benchmarks.direct_lac import DirectLac

        lac = DirectLac().segment
        lac()  # warm-up: the first run allocates
    try:
        import uvloop  # the runtime's loop (runtime/server.py)
    except ImportError:
        asyncio.run(serve(args.host, args.port, lac))
    else:
        uvloop.run(serve(args.host, args.port, lac))


if __name__ == "__main__":
    main()
