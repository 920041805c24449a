"""Progress of one download, said as a line at most every few seconds (and once at the end) for
downloads big enough to be waited on; the pull's sources call `advance` as bytes arrive."""

from __future__ import annotations

import time
from collections.abc import Callable

from runtime.storage.errors import StorageError


class Progress:
    def __init__(self, what: str, say: Callable[[str], None], limit: int, deadline: float,
                 every: float = 5.0, min_bytes: int = 10_000_000, clock: Callable[[], float] = time.monotonic):
        self.what = what
        self.say = say
        self.limit = limit
        self.deadline = deadline  # on `clock`
        self.every = every
        self.min_bytes = min_bytes
        self.clock = clock
        self.total: int | None = None  # expected bytes, when the storage said
        self.done = 0
        self.started = clock()
        self._last = self.started
        self._said = False

    def expect(self, nbytes: int | None) -> None:
        self.total = nbytes
        if nbytes is not None and nbytes > self.limit:
            raise StorageError(f"model is {nbytes / 1e6:.1f} MB, over the {self.limit / 1e6:.0f} MB download limit",
                               retryable=False)

    def advance(self, n: int) -> None:
        self.done += n
        if self.done > self.limit:
            raise StorageError(f"download exceeds the {self.limit / 1e6:.0f} MB limit", retryable=False)
        now = self.clock()
        if now > self.deadline:
            raise StorageError(f"download not finished within its time limit ({self.done / 1e6:.1f} MB received)")
        big = max(self.total or 0, self.done) >= self.min_bytes
        if big and now - self._last >= self.every:
            self._last = now
            self._said = True
            self.say(self.line(now))

    def finish(self) -> None:
        if self._said or self.done >= self.min_bytes:
            self.say(self.line(self.clock(), final=True))

    def line(self, now: float, final: bool = False) -> str:
        secs = max(now - self.started, 1e-6)
        rate = f"{self.done / secs / 1e6:.1f} MB/s"
        if final:
            return f"pulled {self.what}: {self.done / 1e6:.1f} MB in {secs:.1f}s ({rate})"
        of = f" of {self.total / 1e6:.1f} MB ({100 * self.done / self.total:.0f} %)" if self.total else ""
        return f"pulling {self.what}: {self.done / 1e6:.1f} MB{of}, {rate}"
