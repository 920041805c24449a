"""How a request through the activator can end, shared by the dispatcher and both front doors.

A front door's "send to this replica" callable raises `NotSent` (nothing was written: safe to resend
elsewhere) or `Broken` (the request was written, or the answer is unusable: never resent). The
dispatcher turns everything it refuses into a `Failure` with a code of runtime.errors (the one vocabulary
and status tables of both rooms); each front door answers its status and the reason goes verbatim.
"""

from __future__ import annotations

from runtime.errors import Code


class NotSent(Exception):
    """The request never left the activator (connect refused, pooled connection found closed)."""


class Broken(Exception):
    """The request was written and the exchange failed, or the answer is too large or not valid."""


class Failure(Exception):
    """The dispatcher's refusal: `code` says which (not_found: no route, bad_input: no canary, unavailable,
    overloaded: queue full, upstream_failed, timeout, cancelled), `reason` why, in words for the client."""

    def __init__(self, code: Code, reason: str, retry_after: int | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.retry_after = retry_after
