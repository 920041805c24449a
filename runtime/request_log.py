"""Request IDs and the one log line per inference request: taken from `X-Request-Id` (HTTP) or
`x-request-id` (gRPC metadata) when sane, else made here; `--log-format json` writes one JSON object
per line for every log record, with the request's fields as keys.

The request line is on every request's path, so once configure_logging has set up the process's log
stream it is not a logging.LogRecord: `AccessLog` keeps the line's fields (a tuple), and a loop timer hands
the lines of FLUSH_INTERVAL, after their responses have gone out, to a writer thread in one hand-off. A
hand-off per loop iteration woke the writer once per request at batch 1: on the 2-vCPU VM of the 2026-12
report that wake-up and the GIL hand-over cost the replica ~0.1-0.18 ms p50 and as much CPU per LAC
request (log level INFO vs WARNING, wrk on one connection). A line reaches stderr at most FLUSH_INTERVAL
plus the write later; a SIGKILL loses at most that much.
The writer formats the lines as the logging formatters below would (text or JSON), FORMAT_CHUNK lines at a
time, offering the GIL between chunks: a whole hand-off (a thousand lines under load) formatted at once
held the GIL for up to the interpreter's 5 ms switch interval while the event loop waited: a 256-256 ONNX
model at 32 wrk clients (2 ms window) had a p99 of 3.8 ms with the request log on, 1.7 ms with it off,
2.1 ms with the chunks (16-line chunks: 1.8 ms, but 11 % fewer requests/s in GIL hand-overs). The GIL the
writer holds is the loop's lost time, so a chunk is formatted column by column (AccessLog.lines): 0.56 us a
text line, 0.92 us a JSON one, against 1.39 / 2.09 us formatting each line by its own f-string and 9-11 us
through the logging module; a 4-16-3 ONNX model at 32 wrk clients answered 5 % more requests/s side by side
(batched, the loop saturated: each request's line costs it).
The write is on that thread because stderr is a pipe (to the local platform, or the container runtime),
and a reader that stops reading (a frozen `elasticserving up`) must not stop the replica from serving.
Lines are written in order; while the reader is stuck, lines beyond MAX_QUEUED_LINES waiting are dropped
and counted (`dropped`, exported as elasticserving_runtime_log_lines_dropped_total) rather than blocking
the event loop. `flush()` runs at shutdown and at exit and waits (bounded) for the writer.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import itertools
import json
import logging
import os
import re
import sys
import threading
import time

import numpy as np

_SANE_ID = re.compile(r"^[\x21-\x7e]{1,128}$")  # printable ASCII, no spaces: safe in logs and headers
REQUESTS_LOGGER = "elasticserving.runtime.requests"
REQUESTS = logging.getLogger(REQUESTS_LOGGER)
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def request_id(incoming: str | None) -> str:
    """The client's id when sane, else a new one: 32 hex digits, a random per-process prefix and a counter
    (unique across processes without a getrandom system call per request; ids name requests, they are
    not secrets)."""
    if incoming and _SANE_ID.match(incoming):
        return incoming
    return f"{_prefix}{next(_counter) & 0xFFFFFFFFFFFFFFFF:016x}"


def _new_id_prefix() -> None:
    """A process's own prefix and counter start: at import, and in each child the zygote forks."""
    global _prefix, _counter
    _prefix = os.urandom(8).hex()
    _counter = itertools.count(int.from_bytes(os.urandom(4), "big"))


_prefix, _counter = "", itertools.count()
_new_id_prefix()
os.register_at_fork(after_in_child=_new_id_prefix)


def _json_str(s: str) -> str:
    # ids are printable ASCII (request_id) and model names rarely need escaping: skip json.dumps then
    return f'"{s}"' if s.isprintable() and '"' not in s and "\\" not in s else json.dumps(s, ensure_ascii=False)


FLUSH_INTERVAL = 0.05  # seconds: request lines are handed to the writer thread at most this often
MAX_QUEUED_LINES = 10_000  # waiting for a stalled stderr reader (~2 MB); beyond: dropped and counted
EXIT_FLUSH_SECONDS = 2.0  # how long exit waits for a stalled reader
FORMAT_CHUNK = 128  # lines the writer formats between two offers of the GIL (~80 us)
# AccessLog.lines' formats: TEXT_FORMAT's and JsonFormatter's request line
_TEXT_LINE = (f"%s,%03d {REQUESTS_LOGGER} INFO request request_id=%s model=%s protocol=%s status=%s "
              "duration_ms=%s\n")
_JSON_LINE = ('{"time": "%s,%03d", "level": "INFO", "logger": "' + REQUESTS_LOGGER + '", "request_id": %s, '
              '"model": %s, "protocol": %s, "status": %s, "duration_ms": %s}\n')


class AccessLog:
    """Request lines to a logging.StreamHandler's stream, under its lock (the module docstring)."""

    def __init__(self, handler: logging.StreamHandler, fmt: str, flush_interval: float = FLUSH_INTERVAL) -> None:
        self.handler = handler
        self.flush_interval = flush_interval
        self.handoffs = 0  # batches handed to the writer thread
        self.json = fmt == "json"
        self._pending: list[tuple[float, str, str, str, int | str, float]] = []  # Entry: line()'s arguments
        self._second = -1
        self._stamp_text = ""
        self.dropped = 0  # lines dropped because stderr was not being read
        self._queue: collections.deque[list[tuple[float, str, str, str, int | str, float]]] = collections.deque()
        self._queued_lines = 0
        self._wake = threading.Condition()
        self._format = threading.Lock()  # the writer thread and a write from another thread share _stamp's cache
        self._idle = threading.Event()
        self._idle.set()
        self._writer: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the event loop whose timer hands lines over
        self._loop_thread = 0

    def _stamp(self, second: int) -> str:
        """logging.Formatter.formatTime's default without the milliseconds, strftime'd once a second."""
        if second != self._second:
            self._second, self._stamp_text = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return self._stamp_text

    def line(self, now: float, request_id: str, model: str, protocol: str, status: int | str,
             seconds: float) -> str:
        """The line of a request that ended at `now` (time.time())."""
        return self.lines([(now, request_id, model, protocol, status, seconds)])

    def lines(self, entries: list[tuple[float, str, str, str, int | str, float]]) -> str:
        """The lines of `entries` (write()'s tuples), column by column (the module docstring): the numbers
        with numpy, as the per-line arithmetic computes them (the same float operations, rounded half to
        even as round()), the rest by one %-format per line run from C (map)."""
        nows, ids, models, protocols, statuses, seconds = zip(*entries, strict=True)
        now = np.array(nows)
        whole = now.astype(np.int64)
        wholes = whole.tolist()
        millis = ((now - whole) * 1000).astype(np.int64).tolist()
        stamps = {w: self._stamp(w) for w in dict.fromkeys(wholes)}
        ms = (np.rint(np.array(seconds) * 1e6) / 1000).tolist()  # milliseconds() of each
        if self.json:
            names = {n: _json_str(n) for n in dict.fromkeys(models + protocols)}
            ids = map(_json_str, ids)
            models, protocols = map(names.__getitem__, models), map(names.__getitem__, protocols)
            statuses = [s if isinstance(s, int) else _json_str(s) for s in statuses]
        return "".join(map((_JSON_LINE if self.json else _TEXT_LINE).__mod__,
                           zip(map(stamps.__getitem__, wholes), millis, ids, models, protocols, statuses, ms,
                               strict=True)))

    def write(self, request_id: str, model: str, protocol: str, status: int | str, seconds: float) -> None:
        entry = (time.time(), request_id, model, protocol, status, seconds)
        loop = self._loop
        # The loop's thread is known by its id: asyncio.get_running_loop() costs a getpid() system call
        # per call on Python 3.11. A loop closed since (asyncio.run again, as tests do) is looked up anew.
        if loop is None or threading.get_ident() != self._loop_thread or loop.is_closed():
            try:
                loop = self._loop = asyncio.get_running_loop()
                self._loop_thread = threading.get_ident()
            except RuntimeError:  # not on an event loop's thread: write now, leaving the loop's queue alone
                with self._format:
                    line = self.line(*entry)
                self._write(line)
                return
        self._pending.append(entry)
        if len(self._pending) == 1:
            loop.call_later(self.flush_interval, self.flush)

    def flush(self) -> None:
        """Hand the lines pending since the last hand-off to the writer thread (never blocks)."""
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        with self._wake:
            if self._queued_lines + len(lines) > MAX_QUEUED_LINES:
                self.dropped += len(lines)  # the reader is stuck: keep serving, count what is lost
                return
            self._queue.append(lines)
            self._queued_lines += len(lines)
            self.handoffs += 1
            self._idle.clear()
            if self._writer is None:
                self._writer = threading.Thread(target=self._drain, name="request-log", daemon=True)
                self._writer.start()
            self._wake.notify()

    def wait_written(self, timeout: float = EXIT_FLUSH_SECONDS) -> bool:
        """At shutdown: flush, then wait (bounded: the reader may be gone) until the writer is idle."""
        self.flush()
        return self._idle.wait(timeout)

    def _drain(self) -> None:
        while True:
            with self._wake:
                while not self._queue:
                    self._idle.set()
                    self._wake.wait()
                entries = self._queue.popleft()
            with self._format:  # outside the condition: neither formatting nor a blocked write blocks flush()
                chunks = []
                for i in range(0, len(entries), FORMAT_CHUNK):
                    chunks.append(self.lines(entries[i:i + FORMAT_CHUNK]))
                    time.sleep(0)  # the GIL back to the event loop between chunks, not after 5 ms (p99)
                text = "".join(chunks)
            self._write(text)
            with self._wake:
                self._queued_lines -= len(entries)

    def _write(self, text: str) -> None:
        # stderr closed or gone (OSError, ValueError): as logging's handleError, never raise
        with self.handler.lock, contextlib.suppress(OSError, ValueError):
            self.handler.stream.write(text)
            self.handler.stream.flush()


_access_log: AccessLog | None = None


def milliseconds(seconds: float) -> float:
    """A request line's duration_ms: whole microseconds (AccessLog.lines computes the same with numpy)."""
    return round(seconds * 1e6) / 1000


def log_request(request_id: str, model: str, protocol: str, status: int | str, seconds: float) -> None:
    if not REQUESTS.isEnabledFor(logging.INFO):
        return
    if _access_log is not None:
        _access_log.write(request_id, model, protocol, status, seconds)
        return
    # logging not set up by configure_logging (the runtime used as a library, tests): a LogRecord
    fields = {"request_id": request_id, "model": model, "protocol": protocol, "status": status,
              "duration_ms": milliseconds(seconds)}
    REQUESTS.info("request %s", " ".join(f"{k}={v}" for k, v in fields.items()), extra={"fields": fields})


def flush() -> None:
    """Shutdown and exit: write what is queued, waiting a bounded time for a stalled reader."""
    if _access_log is not None:
        _access_log.wait_written()


def dropped_lines() -> int:
    return _access_log.dropped if _access_log is not None else 0


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        out = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name}
        out.update(fields or {"message": record.getMessage()})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(level: str, fmt: str) -> None:
    global _access_log
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if _access_log is None:
        atexit.register(flush)
    _access_log = AccessLog(handler, fmt)
