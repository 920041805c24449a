"""Every bound the activator puts on its input, in one place: sizes and timeouts of the HTTP front door
(set from the command line) and the process-wide budget of buffered request and answer bytes."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.protocols.http_server import HttpLimits

MIB = 1 << 20


@dataclass(frozen=True)
class FrontLimits(HttpLimits):
    """The replica's HTTP limits (runtime.protocols.http_server: request line, headers, body, the header,
    body and idle timeouts), and what only a front door for many clients and replicas needs."""

    max_answer_bytes: int = 64 * MIB  # a replica's answer: 502 beyond
    max_pipelined_bytes: int = 1 * MIB  # complete requests read ahead on one connection: reading pauses
    # All request + answer bytes held by the process: 503 beyond. Below the activator Pod's memory limit
    # (512Mi in deploy/), so no client mix can push the front door out of memory for every tenant.
    max_buffered_bytes: int = 256 * MIB
    max_connections: int = 10_000  # open client connections: 503 and close beyond


class ByteBudget:
    """Bytes buffered in memory across all connections; `take` refuses what would exceed the total."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.total:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used = max(0, self.used - n)
