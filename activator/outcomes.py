"""How a request through the activator can end, shared by the dispatcher and both front doors.

A front door's "send to this replica" callable raises `NotSent` (nothing was written: safe to resend
elsewhere) or `Broken` (the request was written, or the answer is unusable: never resent). The
dispatcher turns everything it refuses into a `Failure` with a kind; each front door maps the kind to
its wire format (HTTP status, gRPC code) and the reason goes to the client verbatim.
"""

from __future__ import annotations

from typing import Literal

FailureKind = Literal["no_route", "no_canary", "unavailable", "queue_full", "broken", "timeout", "cancelled"]


class NotSent(Exception):
    """The request never left the activator (connect refused, pooled connection found closed)."""


class Broken(Exception):
    """The request was written and the exchange failed, or the answer is too large or not valid."""


class Failure(Exception):
    """The dispatcher's refusal: `kind` says which, `reason` says why, in words for the client."""

    def __init__(self, kind: FailureKind, reason: str, retry_after: int | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.retry_after = retry_after


# The HTTP status for each failure kind; gRPC has its own table in activator.grpc_front.
HTTP_STATUS: dict[FailureKind, int] = {
    "no_route": 404, "no_canary": 400, "unavailable": 503, "queue_full": 503, "broken": 502,
    "timeout": 504, "cancelled": 499,  # 499: the client went away (nginx's convention)
}
