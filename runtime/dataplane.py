"""The data plane between the protocol adapters and the model handler: one request type in, named
numpy arrays out. It owns what every protocol shares: model lookup, readiness and draining, input
checks against the handler's tensor specs, the admission limits, metrics and the request log line.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime import tracing
from runtime.errors import BadInput, NotFound, Overloaded, Statuses, TooLarge, Unavailable, status_of
from runtime.handlers.base import Handler
from runtime.metrics import RuntimeMetrics
from runtime.request_log import log_request
from runtime.tensors import TensorSpec, datatype_of


@dataclass
class InferRequest:
    model: str
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None = None  # requested outputs; None: all
    id: str | None = None  # the protocol's own id (v2 `id`), echoed back


def index_specs(specs: list[TensorSpec]) -> dict[str, list[TensorSpec]]:
    """Specs by input name; several under one name are alternatives (image bytes or pixels)."""
    by_name: dict[str, list[TensorSpec]] = {}
    for s in specs:
        by_name.setdefault(s.name, []).append(s)
    return by_name


MAX_SIGNATURES = 256  # input signatures remembered as valid (a client of varying shapes: cleared when full)
ALONE_AFTER = 0.01  # seconds of requests on one connection only before the replica counts as alone()


@dataclass(frozen=True)
class QueueLimits:
    max_batch_size: int = 32  # items (first dimension) one request may carry
    max_queue: int = 256  # items admitted for inference at once (queued or running)


@dataclass(eq=False)
class RequestRecord:
    """One request as the data plane accounts for it, and the context manager of DataPlane.track (a
    class: cheaper than a generator on the hot path); adapters may set `status` on success."""

    plane: DataPlane
    request_id: str
    protocol: str
    statuses: Statuses  # the protocol's table (runtime.errors)
    status: int | str
    started: float  # time.perf_counter()

    def __enter__(self) -> RequestRecord:
        return self

    def __exit__(self, _type: Any, exc: BaseException | None, _tb: Any) -> None:
        self.plane.end(self, exc)


class DataPlane:
    def __init__(self, name: str, metrics: RuntimeMetrics, limits: QueueLimits | None = None,
                 drain_quiet: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.name = name
        self.metrics = metrics
        self.limits = limits or QueueLimits()
        self._handler: Handler | None = None
        self._specs: dict[str, list[TensorSpec]] = {}
        self._inflight_by_protocol: dict[str, int] = {}  # read by the in-flight gauge when scraped
        self.load_error: str | None = None
        self.draining = False
        self.inflight = 0
        self.admitted = 0
        self._drain_quiet = drain_quiet
        self._last_active = time.monotonic()
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_conn: object = None
        self._shared_until = 0.0  # monotonic; see alone()
        # Input signatures (name, dtype, shape per input) that passed check_inputs -> their items: a
        # client sends the same shapes again and again (~2 us per request saved).
        self._valid: dict[tuple, int] = {}

    # ---- state -------------------------------------------------------------------------------
    @property
    def handler(self) -> Handler | None:
        return self._handler

    @handler.setter
    def handler(self, handler: Handler | None) -> None:
        """Set once the handler is loaded: from then on inference is served."""
        self._specs = index_specs(handler.inputs) if handler is not None else {}
        self._valid.clear()
        self._handler = handler

    @property
    def ready(self) -> bool:
        """Readiness (routing): loaded and not draining. Inference is served whenever loaded."""
        return self._handler is not None and not self.draining

    def not_ready_reason(self) -> str:
        return self.load_error or ("draining" if self.draining else "model is loading")

    def check_model(self, name: str) -> None:
        if name != self.name:
            raise NotFound(f"unknown model {name!r}; this server serves {self.name!r}")

    def metadata(self) -> dict[str, Any]:
        handler = self.loaded_handler()
        first: dict[str, TensorSpec] = {}
        for s in handler.inputs:  # alternatives share a name; metadata shows the first
            first.setdefault(s.name, s)
        return {"name": self.name, "versions": ["1"], "platform": handler.platform,
                "inputs": [s.as_dict() for s in first.values()],
                "outputs": [s.as_dict() for s in handler.outputs]}

    def loaded_handler(self) -> Handler:
        if self.handler is None:
            raise Unavailable(f"model {self.name} is not ready: {self.not_ready_reason()}")
        return self.handler

    # ---- one request -------------------------------------------------------------------------
    def track(self, protocol: str, request_id: str, statuses: Statuses, conn: object = None) -> RequestRecord:
        """`with plane.track(...) as rec:` around one request's whole handling (parsing included): in-flight
        count, metrics, log line; the status is `rec.status`, else the exception's in `statuses` (the
        protocol's table). `conn`: the client connection when it carries one request at a time, else None."""
        if conn is None or conn is not self._last_conn:
            self._shared_until = self._clock() + ALONE_AFTER
            self._last_conn = conn
        self.inflight += 1
        self._idle.clear()
        by_protocol = self._inflight_by_protocol
        if protocol not in by_protocol:
            self._count_inflight(protocol)
        by_protocol[protocol] += 1
        return RequestRecord(self, request_id, protocol, statuses, statuses["ok"], time.perf_counter())

    def end(self, rec: RequestRecord, exc: BaseException | None = None) -> None:
        if exc is not None:
            rec.status = status_of(exc, rec.statuses)
        seconds = time.perf_counter() - rec.started
        self._inflight_by_protocol[rec.protocol] -= 1
        self.metrics.observe(self.name, rec.protocol, rec.status, seconds,
                             tracing.current_trace_id() if tracing.ON else "")
        log_request(rec.request_id, self.name, rec.protocol, rec.status, seconds)
        self.inflight -= 1
        self._last_active = time.monotonic()
        if self.inflight == 0:
            self._idle.set()

    def alone(self) -> bool:
        """One client, one request: nothing else in flight, and for ALONE_AFTER every request came on
        the same one-request-at-a-time connection. Requests waiting unread in other sockets are invisible
        to the in-flight count; a second connection (or a multiplexed one: None) is what reveals them."""
        return self.inflight <= 1 and self._clock() >= self._shared_until

    def _count_inflight(self, protocol: str) -> None:
        """The in-flight gauge of `protocol` reads the count when scraped: two locked updates of a
        prometheus_client value per request cost more than the dict update."""
        self._inflight_by_protocol[protocol] = 0
        self.metrics.inflight.labels(self.name, protocol).set_function(
            lambda: self._inflight_by_protocol[protocol])

    async def infer(self, req: InferRequest) -> dict[str, np.ndarray]:
        self.check_model(req.model)
        handler = self.loaded_handler()
        signature = tuple([(n, a.dtype, a.shape) for n, a in req.inputs.items()])
        items = self._valid.get(signature)
        if items is None:
            items = self.check_inputs(self._specs, req.inputs)
            if len(self._valid) >= MAX_SIGNATURES:
                self._valid.clear()
            self._valid[signature] = items
        if items > self.limits.max_batch_size:
            raise TooLarge(f"{items} items in one request; the limit is {self.limits.max_batch_size} "
                           "(--max-batch-size)")
        names = [s.name for s in handler.outputs]
        unknown = [n for n in req.outputs or () if n not in names]
        if unknown:
            raise BadInput(f"unknown output {unknown[0]!r}: this model outputs {', '.join(names)}")
        if self.admitted + items > self.limits.max_queue:
            raise Overloaded(f"inference queue full ({self.admitted} items waiting, --max-queue "
                             f"{self.limits.max_queue}); retry later")
        self.admitted += items
        try:
            # Batch wait and the run itself: the handler's batcher decides how this request is grouped.
            if tracing.ON:  # tracing off: no span's keyword dict and `with` (~0.7 us of a batched request's ~25)
                with tracing.step("inference", **{"elasticserving.items": items}):
                    outputs = await handler.infer(req.inputs)
            else:
                outputs = await handler.infer(req.inputs)
        finally:
            self.admitted -= items
        if req.outputs:
            return {n: outputs[n] for n in req.outputs}
        return outputs

    @staticmethod
    def check_inputs(by_name: dict[str, list[TensorSpec]], inputs: dict[str, np.ndarray]) -> int:
        """Names, datatypes and shapes against the specs (by name: index_specs); returns the items
        (first dimension) the request carries."""
        unknown = [n for n in inputs if n not in by_name]
        if unknown:
            raise BadInput(f"unknown input {unknown[0]!r}; inputs are {', '.join(by_name)}")
        missing = [n for n in by_name if n not in inputs]
        if missing:
            raise BadInput(f"missing input(s) {', '.join(missing)}")
        items = 0
        for name, arr in inputs.items():
            alternatives = by_name[name]
            reasons = [r for s in alternatives if (r := s.mismatch(arr)) is not None]
            if len(reasons) == len(alternatives):
                same_type = [s for s in alternatives if s.datatype == datatype_of(arr)]
                if same_type:
                    reason = same_type[0].mismatch(arr)
                else:
                    reason = (f"must have datatype {' or '.join(s.datatype for s in alternatives)}, "
                              f"not {datatype_of(arr)!r}")
                raise BadInput(f"input `{name}` {reason}")
            n = arr.shape[0] if arr.ndim else 1
            if n == 0:
                raise BadInput(f"input `{name}` has no elements")
            items = max(items, n)
        return items

    # ---- shutdown ----------------------------------------------------------------------------
    async def drain(self, timeout: float) -> bool:
        """Stop readiness, keep serving until no request has been in flight for a short quiet time
        (the router has seen readiness fail), at most `timeout` seconds. True when idle."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._idle.wait(), remaining)
            except TimeoutError:
                return False
            quiet_left = self._last_active + self._drain_quiet - time.monotonic()
            if self.inflight == 0 and quiet_left <= 0:
                return True
            await asyncio.sleep(min(max(quiet_left, 0.01), max(deadline - loop.time(), 0)))
