"""Windowed load averages of one service side, from the activators' per-second stats reports.
Data flow: activator stats (POST /v1/stats) -> metrics.MetricCollector -> stable/panic averages -> kpa.Decider."""

from __future__ import annotations

import math
from dataclasses import dataclass

# Pure logic, time passed in. Modelled on Knative's TimedFloat64Buckets
# (pkg/autoscaler/aggregation/bucketing.go) with one-second buckets (config.BucketSize):
#
# - A report lands in the bucket floor(now). Reports of *different* sources (HA activators) in one
#   second are summed, as Knative's collector sums every Stat it records into the bucket.
# - Reports of the *same* source in one second: Knative's activator reports exactly once a second,
#   so it never has two; ours also reports early on a poke (a short window) and receive-time jitter
#   can put two one-second reports in one bucket. Summing those would double-count, so a source's
#   value for a second is its load-seconds divided by max(1 s, the seconds its reports covered):
#   two 1 s reports are averaged; a 0.3 s + 0.7 s split gives the true mean; a lone short report
#   counts like Knative's (its requests fall in that second). Concurrency load-seconds are
#   average_concurrency * window; for rps they are the request counts.
# - Each window (stable, panic) has its own first-write time, exactly as each of Knative's bucket
#   sets does: set by the first report, moved back by an accepted late report, and reset when a
#   report comes after a silence of at least the window (older data then no longer counts).
# - Window average at `now` (n = floor(now), d = n - last write):
#     d <= 0:        sum of the window's buckets / min(last - first + 1, N)
#     0 < d < W:     sum of the buckets still inside the window / min(last - first + 1, N - d)
#                    (a partly filled window averages over the seconds since the first report; a
#                    silence at the end shrinks the divisor instead of counting as zeros)
#     d >= W or no report yet: 0
#   N = ceil(W) buckets; seconds with no report between reports count as 0; results are rounded
#   to 6 digits as Knative does. Windows shorter than one bucket are raised to one second, as
#   Knative's MakeMetric does for the panic window.
# - A report older than the largest window (b + W <= last write) is ignored.
# - update_windows: a window that grows keeps only the span it knew (Knative copies just the old
#   buckets on ResizeWindow); a window that shrinks keeps its real first write (Knative resets it to
#   a full old window, which would dilute a partly filled one).

BUCKET = 1.0


@dataclass
class _Window:
    size: float
    first: int | None = None

    @property
    def buckets(self) -> int:
        return math.ceil(self.size / BUCKET)


@dataclass
class _Share:
    """One source's reports within one second."""

    load_seconds: float = 0.0  # sum of average_concurrency * window
    requests: float = 0.0
    covered: float = 0.0  # seconds covered by the reports

    def value(self, metric: str) -> float:
        total = self.requests if metric == "rps" else self.load_seconds
        return total / max(1.0, self.covered)


def _bucket(now: float) -> int:
    return math.floor(now / BUCKET)


class MetricCollector:
    """Stable and panic window averages of concurrency (metric `concurrency`) or requests per
    second (metric `rps`; any other metric name is treated as concurrency, Knative's default)."""

    def __init__(self, stable_window: float, panic_window: float, metric: str = "concurrency") -> None:
        self.metric = metric
        self._stable = _Window(max(BUCKET, float(stable_window)))
        self._panic = _Window(max(BUCKET, float(panic_window)))
        self._data: dict[int, dict[str, _Share]] = {}
        self._last: int | None = None  # bucket of the latest report (Knative's lastWrite)
        self._last_active: int | None = None

    # ---- configuration ---------------------------------------------------------------------
    @property
    def stable_window(self) -> float:
        return self._stable.size

    @property
    def panic_window(self) -> float:
        return self._panic.size

    def update_windows(self, stable_window: float, panic_window: float, now: float | None = None) -> None:
        """Resize the windows (a config change). With `now`, a window without a report within its
        old size starts afresh, as Knative's ResizeWindow does."""
        for win, size in ((self._stable, stable_window), (self._panic, panic_window)):
            size = max(BUCKET, float(size))
            if size != win.size and self._last is not None and win.first is not None:
                if now is not None and _bucket(now) - self._last > win.size:
                    win.first = None
                elif size > win.size:
                    win.first = max(win.first, self._last - win.buckets + 1)
            win.size = size
        self._prune()

    # ---- input -----------------------------------------------------------------------------
    def record(self, now: float, source: str, concurrency: float, requests: float,
               window: float = 1.0) -> None:
        """One report of `source` received at `now`: the average concurrency over its last
        `window` seconds (normally 1) and the number of requests in them."""
        b = _bucket(now)
        windows = (self._stable, self._panic)
        last = self._last
        if last is None or b > last:
            for win in windows:
                if last is None or win.first is None or b - last >= win.size:
                    win.first = b  # first report, or after a silence of a whole window
            self._last = b
        else:  # a late report, or another in the latest second (always within every window)
            accepted = [win for win in windows if b + win.size > last]
            if not accepted:
                return  # older than every window
            for win in accepted:
                if win.first is None or b < win.first:
                    win.first = b
        covered = max(0.0, float(window))
        share = self._data.setdefault(b, {}).setdefault(source, _Share())
        share.load_seconds += max(0.0, float(concurrency)) * covered
        share.requests += max(0.0, float(requests))
        share.covered += covered
        if (concurrency > 0 or requests > 0) and (self._last_active is None or b > self._last_active):
            self._last_active = b
        self._prune()

    def _prune(self) -> None:
        if self._last is None:
            return
        oldest = self._last - max(self._stable.buckets, self._panic.buckets) + 1
        for b in [b for b in self._data if b < oldest]:
            del self._data[b]

    # ---- output ----------------------------------------------------------------------------
    def _value(self, b: int, metric: str) -> float:
        return sum(share.value(metric) for share in self._data.get(b, {}).values())

    def _average(self, now: float, win: _Window, metric: str) -> float:
        if self._last is None or win.first is None:
            return 0.0
        last, first, n = self._last, win.first, win.buckets
        d = max(0, _bucket(now) - last)  # d <= 0 (a clock behind the last report) averages as d = 0
        if d >= win.size:
            return 0.0
        lo, count = last + d - n + 1, min(last - first + 1, n - d)
        total = sum(self._value(b, metric) for b in range(max(lo, first), last + 1))
        return round(total / count, 6)

    def stable_and_panic(self, now: float, metric: str | None = None) -> tuple[float, float]:
        """(stable, panic) window averages at `now`: concurrency, or requests per second for
        metric `rps` (`metric` overrides the collector's own)."""
        m = "rps" if (metric or self.metric) == "rps" else "concurrency"
        return self._average(now, self._stable, m), self._average(now, self._panic, m)

    def is_empty(self, now: float) -> bool:
        """No report within the stable window (Knative's IsEmpty)."""
        return self._last is None or _bucket(now) - self._last > self._stable.size

    def last_activity(self) -> float | None:
        """Start time of the latest one-second bucket with nonzero concurrency or requests."""
        return None if self._last_active is None else float(self._last_active * BUCKET)
