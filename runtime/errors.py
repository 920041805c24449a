"""Why an inference request failed, independent of the wire: protocol adapters turn these into an HTTP
status or a gRPC code with the reason; the data plane records the same code in metrics and the log."""

from __future__ import annotations


class InferError(Exception):
    """A request the runtime refuses, with a reason for the client."""

    http_status = 500
    grpc_code = "INTERNAL"


class BadInput(InferError, ValueError):
    http_status = 400
    grpc_code = "INVALID_ARGUMENT"  # a grpc.StatusCode name


class TooLarge(InferError):
    """An input over a configured limit (body, text length, items, image pixels)."""

    http_status = 413
    grpc_code = "INVALID_ARGUMENT"  # a grpc.StatusCode name


class NotFound(InferError):
    http_status = 404
    grpc_code = "NOT_FOUND"  # a grpc.StatusCode name


class Unavailable(InferError):
    """The model is not loaded (yet, or it failed to load)."""

    http_status = 503
    grpc_code = "UNAVAILABLE"  # a grpc.StatusCode name


class Overloaded(InferError):
    """The inference queue is full: the client (or the activator) should retry elsewhere or later."""

    http_status = 503
    grpc_code = "RESOURCE_EXHAUSTED"  # a grpc.StatusCode name
