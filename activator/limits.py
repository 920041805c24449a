"""Every bound the activator puts on its input, in one place: sizes and timeouts of the HTTP front door
(set from the command line) and the process-wide budget of buffered request and answer bytes."""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class FrontLimits:
    max_request_line: int = 8 * KIB  # 414 beyond
    max_header_bytes: int = 64 * KIB  # 431 beyond (all header lines together)
    max_header_fields: int = 100  # 431 beyond
    max_body_bytes: int = 64 * MIB  # 413 beyond
    max_answer_bytes: int = 64 * MIB  # a replica's answer: 502 beyond
    max_pipelined_bytes: int = 1 * MIB  # complete requests read ahead on one connection: reading pauses
    # All request + answer bytes held by the process: 503 beyond. Below the activator Pod's memory limit
    # (512Mi in deploy/), so no client mix can push the front door out of memory for every tenant.
    max_buffered_bytes: int = 256 * MIB
    max_connections: int = 10_000  # open client connections: 503 and close beyond
    header_timeout: float = 10.0  # from the first byte of a request to the end of its headers: 408
    body_timeout: float = 60.0  # from the end of the headers to the end of the body: 408
    idle_timeout: float = 75.0  # a keep-alive connection with nothing to do is closed

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value <= 0:
                raise ValueError(f"{name} must be positive, not {value}")


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
