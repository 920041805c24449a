"""The end of each request, accounted right after its answer is out: the dispatcher records a finished
request here (one tuple), and the loop's next turn turns the records into the activator's Prometheus
samples (activator.metrics) and access-log lines (activator.access_log), a few at a time.

Why: three locked metric updates and a formatted log line per request cost a measurable share of the time
the activator adds at one client (issue 27); done on the next turn, they run while the answer travels, not
before it is written. At most CHUNK records per turn: a backlog under load is spread over turns, never
one long stall for the requests in flight (a 0.2 s batch put 12 ms into the p99 at 64 connections).
"""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING

from activator.access_log import AccessLog
from activator.metrics import SideMetrics

if TYPE_CHECKING:
    from activator.dispatcher import Call

CHUNK = 32  # records accounted per turn of the loop


class RequestLedger:
    def __init__(self, access_log: AccessLog) -> None:
        self.access_log = access_log
        self._records: collections.deque[tuple[SideMetrics | None, Call, str, float]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None  # kept: asyncio.get_running_loop() costs a getpid()
        self._turn: asyncio.Handle | None = None

    def record(self, m: SideMetrics | None, call: Call, code: str, took: float) -> None:
        """A request ended with `code` after `took` seconds; `m` is its side's metrics (None: it was
        never routed to a side)."""
        self._records.append((m, call, code, took))
        if self._turn is None:
            self._schedule()

    def _schedule(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            try:
                loop = self._loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a unit test calling directly): account at once
                self.flush()
                return
        self._turn = loop.call_soon(self._account_some)

    def _account_some(self) -> None:
        self._turn = None
        self._account(CHUNK)
        if self._records:
            self._schedule()

    def flush(self) -> None:
        """Account every record now and write the log lines out (a scrape, shutdown, a test)."""
        if self._turn is not None:
            self._turn.cancel()
            self._turn = None
        self._account(len(self._records))
        self.access_log.flush()

    def _account(self, n: int) -> None:
        log, records = self.access_log, self._records
        for _ in range(min(n, len(records))):
            m, call, code, took = records.popleft()
            if m is not None:
                m.count(code)
                if call.upstream_seconds is not None:
                    m.proxy_latency.observe(call.upstream_seconds)
                m.latency.observe(took, call.trace_id if call.span is not None else "")  # an exemplar when traced
            log.request(call.request_id, call.protocol, call.service, call.side, call.replica, code, took,
                        call.trace_id)
