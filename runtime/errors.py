"""Why an inference request failed, independent of the wire: one vocabulary, each error with a stable
`code`. Each protocol maps the codes (and "ok") to its status in one table (http_api.HTTP_STATUS,
v2_grpc_tensors.GRPC_STATUS); the data plane records it in metrics and the log. Others: "internal"."""

from __future__ import annotations

from collections.abc import Mapping

Statuses = Mapping[str, int | str]  # a protocol's table: "ok" and each error code -> its status


class InferError(Exception):
    """A request the runtime refuses, with a reason for the client."""

    code = "internal"


class BadInput(InferError, ValueError):
    code = "bad_input"


class TooLarge(InferError):
    """An input over a configured limit (body, text length, items, image pixels)."""

    code = "too_large"


class NotFound(InferError):
    code = "not_found"


class Unavailable(InferError):
    """The model is not loaded (yet, or it failed to load)."""

    code = "unavailable"


class Overloaded(InferError):
    """The inference queue is full: the client (or the activator) should retry elsewhere or later."""

    code = "overloaded"


def status_of(exc: BaseException, table: Statuses) -> int | str:
    """The protocol's status (in `table`) for a request that raised `exc`."""
    return table[exc.code if isinstance(exc, InferError) else "internal"]
