"""Replica output kept by the local platform for `elasticserving logs` (what `kubectl logs` gives in a
cluster): per service side, a ring of the last `max_bytes` of its replicas' lines (current and gone), which
followers get live.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass

DEFAULT_MAX_BYTES = 256 * 1024  # per service side
MAX_LINE_BYTES = 8 * 1024  # a longer line is cut (a replica printing a whole tensor)
FOLLOWER_QUEUE = 10_000  # lines a slow follower may lag behind before lines are dropped for it


@dataclass(frozen=True)
class LogLine:
    replica: str
    text: str  # without the newline

    def render(self) -> str:
        return f"[{self.replica}] {self.text}"


class SideLog:
    """The recent output of one service side, bounded in bytes, with live followers."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self._lines: collections.deque[LogLine] = collections.deque()
        self._bytes = 0
        self._followers: set[asyncio.Queue[LogLine | None]] = set()
        self.dropped: dict[int, int] = {}  # id(queue) -> lines a slow follower missed

    def append(self, replica: str, raw: bytes) -> None:
        text = raw[:MAX_LINE_BYTES].decode("utf-8", "replace").rstrip("\r\n")
        line = LogLine(replica, text)
        self._lines.append(line)
        self._bytes += len(text) + 1
        while self._bytes > self.max_bytes and len(self._lines) > 1:
            self._bytes -= len(self._lines.popleft().text) + 1
        for q in self._followers:
            try:
                q.put_nowait(line)
            except asyncio.QueueFull:
                self.dropped[id(q)] = self.dropped.get(id(q), 0) + 1

    def tail(self, lines: int | None = None) -> list[LogLine]:
        kept = list(self._lines)
        return kept if lines is None else kept[max(0, len(kept) - lines):]

    def follow(self) -> asyncio.Queue[LogLine | None]:
        """A queue of the lines appended from now on; None in it means the log was closed."""
        q: asyncio.Queue[LogLine | None] = asyncio.Queue(FOLLOWER_QUEUE)
        self._followers.add(q)
        return q

    def unfollow(self, q: asyncio.Queue[LogLine | None]) -> None:
        self._followers.discard(q)
        self.dropped.pop(id(q), None)

    def close(self) -> None:
        """Tell every follower the end (the side was removed, or the stack stops)."""
        for q in self._followers:
            if q.full():
                q.get_nowait()  # make room for the end mark: it matters more than one line
            q.put_nowait(None)
        self._followers.clear()
