"""Windowed load averages per service side, from the activators' per-second reports.

Reports land in one-second buckets (summed across activators, so HA activators add up; a source
reporting twice in a second replaces its value); the decider reads stable and panic averages.
"""

from __future__ import annotations

import math
from collections import OrderedDict


class MetricCollector:
    """Stable/panic window averages of concurrency (or requests per second for metric `rps`)."""

    def __init__(self, stable_window: float, panic_window: float, metric: str = "concurrency") -> None:
        self.metric = metric
        self.stable_window = stable_window
        self.panic_window = panic_window
        self._buckets: OrderedDict[int, dict[str, float]] = OrderedDict()
        self._first: int | None = None

    def update_windows(self, stable_window: float, panic_window: float) -> None:
        self.stable_window, self.panic_window = stable_window, panic_window

    def record(self, now: float, source: str, concurrency: float, requests: float) -> None:
        sec = int(math.floor(now))
        value = requests if self.metric == "rps" else concurrency
        self._buckets.setdefault(sec, {})[source] = float(value)
        if self._first is None:
            self._first = sec
        horizon = sec - int(math.ceil(max(self.stable_window, self.panic_window))) - 1
        while self._buckets and next(iter(self._buckets)) < horizon:
            self._buckets.popitem(last=False)

    def _average(self, now: float, window: float) -> float:
        if self._first is None:
            return 0.0
        sec = int(math.floor(now))
        size = max(1, int(math.ceil(window)))
        start = sec - size + 1
        total = sum(sum(v.values()) for s, v in self._buckets.items() if start <= s <= sec)
        # A window only partly filled since the first report averages over the part that exists.
        elapsed = sec - self._first + 1
        n = max(1, min(size, elapsed))
        return total / n

    def stable_and_panic(self, now: float) -> tuple[float, float]:
        return self._average(now, self.stable_window), self._average(now, self.panic_window)

    def last_activity(self) -> float | None:
        for sec in reversed(self._buckets):
            if any(v > 0 for v in self._buckets[sec].values()):
                return float(sec)
        return None
