"""Progress of one download, said as a line at most every few seconds (and once at the end) for
downloads big enough to be waited on; the pull's sources call `advance` as bytes arrive."""

from __future__ import annotations

import time
from collections.abc import Callable

from runtime.storage.errors import StorageError

EVERY = 5.0  # seconds between two progress lines
MIN_BYTES = 10_000_000  # smaller downloads get no progress lines


class Progress:
    def __init__(self, what: str, say: Callable[[str], None], limit: int, deadline: float) -> None:
        self.what = what
        self.say = say
        self.limit = limit
        self.deadline = deadline  # on time.monotonic
        self.total: int | None = None  # expected bytes, when the storage said
        self.done = 0
        self.started = time.monotonic()
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
        now = time.monotonic()
        if now > self.deadline:
            raise StorageError(f"download not finished within its time limit ({self.done / 1e6:.1f} MB received)")
        big = max(self.total or 0, self.done) >= MIN_BYTES
        if big and now - self._last >= EVERY:
            self._last = now
            self._said = True
            self.say(self.line(now))

    def finish(self) -> None:
        if self._said or self.done >= MIN_BYTES:
            self.say(self.line(time.monotonic(), final=True))

    def line(self, now: float, final: bool = False) -> str:
        secs = max(now - self.started, 1e-6)
        rate = f"{self.done / secs / 1e6:.1f} MB/s"
        if final:
            return f"pulled {self.what}: {self.done / 1e6:.1f} MB in {secs:.1f}s ({rate})"
        of = f" of {self.total / 1e6:.1f} MB ({100 * self.done / self.total:.0f} %)" if self.total else ""
        return f"pulling {self.what}: {self.done / 1e6:.1f} MB{of}, {rate}"
