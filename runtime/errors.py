"""How a request ends, independent of the wire: one vocabulary of codes for the runtime and the activator
(which imports it), with the one HTTP table and the one gRPC table of both; the runtime's errors each
carry a stable `code` (others: "internal"), the activator's refusals (activator.outcomes.Failure) too."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

# The last three are the activator's only: the replica failed (502), did not answer in time, the client left.
Code = Literal["ok", "bad_input", "too_large", "not_found", "unavailable", "overloaded", "internal",
               "upstream_failed", "timeout", "cancelled"]
Statuses = Mapping[Code, int | str]  # a protocol's table: each code -> its status
HTTP_STATUS: dict[Code, int] = {
    "ok": 200, "bad_input": 400, "too_large": 413, "not_found": 404, "unavailable": 503, "overloaded": 503,
    "internal": 500, "upstream_failed": 502, "timeout": 504, "cancelled": 499,  # 499: nginx's "client left"
}
GRPC_STATUS: dict[Code, str] = {  # grpc.StatusCode names (no grpc import: the tables stay pure)
    "ok": "OK", "bad_input": "INVALID_ARGUMENT", "too_large": "INVALID_ARGUMENT", "not_found": "NOT_FOUND",
    "unavailable": "UNAVAILABLE", "overloaded": "RESOURCE_EXHAUSTED", "internal": "INTERNAL",
    "upstream_failed": "UNAVAILABLE", "timeout": "DEADLINE_EXCEEDED", "cancelled": "CANCELLED",
}


class InferError(Exception):
    """A request the runtime refuses, with a reason for the client."""

    code: Code = "internal"


class BadInput(InferError, ValueError):
    code: Code = "bad_input"


class TooLarge(InferError):
    """An input over a configured limit (body, text length, items, image pixels)."""

    code: Code = "too_large"


class NotFound(InferError):
    code: Code = "not_found"


class Unavailable(InferError):
    """The model is not loaded (yet, or it failed to load)."""

    code: Code = "unavailable"


class Overloaded(InferError):
    """The inference queue is full: the client (or the activator) should retry elsewhere or later."""

    code: Code = "overloaded"


def status_of(exc: BaseException, table: Statuses) -> int | str:
    """The protocol's status (in `table`) for a request that raised `exc`."""
    return table[exc.code if isinstance(exc, InferError) else "internal"]
