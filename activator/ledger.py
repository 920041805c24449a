"""The end of each request, accounted in batches: the dispatcher records a finished request here (one
tuple), and a flush a few times a second, before every scrape and at shutdown turns the records into the
activator's Prometheus samples (activator.metrics) and access-log lines (activator.access_log).

Why batched: three locked metric updates and a formatted log line per request cost a measurable share of
the time the activator adds at one client (issue 27); folded in a batch they are off the request path.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from activator.access_log import AccessLog
from activator.metrics import SideMetrics

if TYPE_CHECKING:
    from activator.dispatcher import Call

FLUSH_SECONDS = 0.2  # how stale a scrape-free reader (the log) may find the figures
MAX_RECORDS = 4096  # flushed at once beyond this: a burst never holds more in memory


class RequestLedger:
    def __init__(self, access_log: AccessLog) -> None:
        self.access_log = access_log
        self._records: list[tuple[SideMetrics | None, Call, str, float]] = []
        self._timer: asyncio.TimerHandle | None = None

    def record(self, m: SideMetrics | None, call: Call, code: str, took: float) -> None:
        """A request ended with `code` after `took` seconds; `m` is its side's metrics (None: it was
        never routed to a side)."""
        self._records.append((m, call, code, took))
        if len(self._records) >= MAX_RECORDS:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
            except RuntimeError:  # no loop (a unit test calling directly): account at once
                self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        records, self._records = self._records, []
        log = self.access_log
        for m, call, code, took in records:
            if m is not None:
                m.count(code)
                if call.upstream_seconds is not None:
                    m.proxy_latency.observe(call.upstream_seconds)
                if call.span is not None and call.trace_id:  # an exemplar: a slow bucket leads to its trace
                    m.latency.observe(took, {"trace_id": call.trace_id})
                else:
                    m.latency.observe(took)
            log.request(call.request_id, call.protocol, call.service, call.side, call.replica, code, took,
                        call.trace_id)
        log.flush()
