"""Dynamic batching: concurrent requests to one model are merged into one backend call, up to
`max_batch_size` items within `batch_timeout`, and the results are split back per request. Models hand it
a blocking `run(items) -> results` (one result per item) that runs on their own inference thread;
protocol handlers just `await batcher.submit(items)`.

As in Triton's dynamic batcher (model_config.proto: `max_batch_size`, `max_queue_delay_microseconds`),
a batch never holds more than `max_batch_size` (items, or what `size` counts per item: a tensor
request's rows), and only requests that may run together share one: `key` names what must agree (for
tensors, `rows_key`: dtypes and every dimension after the first); the others wait, in arrival order,
for a later batch. The second half of this module is that rule for tensor requests, free of servers.

Two batches run on the event loop's thread instead of the inference thread:
- a one-item batch when `inline_if` answers True (the replica serves no other request). Measured on a
  2-vCPU VM (LAC, batch 1): the hop to the inference thread and back cost ~0.24 ms around a 0.18 ms run
  (two thread wake-ups on vCPUs that had gone idle), and Paddle's `predictor.run()` holds the GIL, so
  the loop could not have served anything else meanwhile. With other requests in flight it runs on the
  inference thread: they may reach the batcher during the run, and queue to merge into the next batch;
- a batch of several items while the last such batch took less than `inline_under` seconds: the hand-off
  and the GIL going back and forth cost more than the loop loses by running it. Side by side on that VM
  (a user's 4-16-3 and 256-256 models, 32 and 64 wrk clients, 2 ms window): 5-35 % more requests/s with
  merged batches under 1 ms run on the loop, Paddle and ONNX alike. It is timed by the CPU time of its
  thread (on the inference thread its wall time would count the waits for the GIL), so a model that gets
  slow goes back to the thread; that is its whole cost only for a model run on the calling thread
  (runtime.handlers.raw sets `inline_under` so).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime import tracing
from runtime.inference_thread import InferenceThread
from runtime.tensors import TensorSpec


@dataclass(eq=False)
class _Entry:
    """One `submit`: its items, what it weighs, what it may join and, queued, the future its caller awaits."""

    items: list[Any]
    size: int
    key: Hashable
    fut: asyncio.Future | None = None  # set when it queues (_loop's entries have one)
    batch: int = 0  # items in the batch it ran in, and when that batch started (tracing only)
    started_ns: int = 0


class _Alone:
    """The key of a submission that may not share a batch: equal only to itself."""


class Batcher:
    def __init__(self, run: Callable[[list[Any]], Sequence[Any]], executor: InferenceThread,
                 max_batch_size: int = 32, batch_timeout: float = 0.0,
                 on_batch: Callable[[int], None] | None = None,
                 inline_if: Callable[[], bool] | None = None,
                 key: Callable[[Any], Hashable | None] | None = None,
                 size: Callable[[Any], int] | None = None, inline_under: float = 0.0) -> None:
        """`key(item)`: items merge only with items of an equal key; None: the item's submission runs in a
        batch of its own. `size(item)`: what an item counts against `max_batch_size` (default 1).
        `inline_under`: seconds (0: never); the module docstring."""
        self.run = run
        self.inline_if = inline_if
        self.executor = executor
        self.max_batch_size = max(1, max_batch_size)
        self.batch_timeout = max(0.0, batch_timeout)
        self.on_batch = on_batch or (lambda n: None)
        self.key = key
        self.size = size
        self._queue: asyncio.Queue[_Entry] = asyncio.Queue()
        # Taken from the queue while a batch was formed but left for a later one (another key, or no room).
        self._carry: collections.deque[_Entry] = collections.deque()
        self._task: asyncio.Task | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None  # the loop it runs on (start)
        self._busy = False  # a batch is running (on the executor)
        self._free = asyncio.Event()
        self.inline_under = inline_under
        self._merged_seconds = float("inf")  # the last run of several items (none yet: on the thread)

    def start(self) -> None:
        # kept: asyncio.get_running_loop() costs a getpid() system call per call on Python 3.11
        self._event_loop = asyncio.get_running_loop()
        self._task = self._event_loop.create_task(self._loop(), name="batcher")

    def close(self) -> None:
        if self._task:
            self._task.cancel()

    def _entry(self, items: list[Any]) -> _Entry:
        if len(items) == 1:  # a tensor request: one item (~0.3 us less than the generic path's set and sum)
            size = 1 if self.size is None else self.size(items[0])
            key = None if self.key is None else self.key(items[0])
            if key is None:
                return _Entry(items, size, None if self.key is None else _Alone())
            return _Entry(items, size, key)
        size = len(items) if self.size is None else sum(map(self.size, items))
        if self.key is None:
            return _Entry(items, size, None)
        keys = set(map(self.key, items))
        key = keys.pop() if len(keys) == 1 else None
        return _Entry(items, size, _Alone() if key is None else key)

    async def submit(self, items: list[Any]) -> list[Any]:
        entry = self._entry(items)
        if not self._busy and not self.batch_timeout and self._queue.empty() and not self._carry:
            # Idle and no window to wait for: this request is the whole batch, run by its caller. Skipping the
            # hand-over to the batching task (and a future) saves two loop iterations (~30 us) at batch 1.
            results = await self._run([entry], entry.size)
            if tracing.ON:  # a batch of its own, without waiting
                tracing.annotate("elasticserving.batch_size", len(items))
            return list(results)
        entry.fut = self._event_loop.create_future()
        self._queue.put_nowait(entry)  # unbounded: the data plane bounds what is admitted
        if not tracing.ON:
            return await entry.fut
        queued_ns = time.time_ns()
        out = await entry.fut
        tracing.done("batch wait", queued_ns, entry.started_ns or queued_ns,
                     **{"elasticserving.batch_size": entry.batch})
        return out

    async def _gather(self) -> tuple[list[_Entry], int]:
        """The next batch: the oldest waiting submission, then (within the window) the later ones that
        may join it, in arrival order until one of its key does not fit; the others stay waiting, in
        order, for the next batch."""
        loop = asyncio.get_running_loop()
        batch = [self._carry.popleft() if self._carry else await self._queue.get()]
        while self._busy:  # a direct run (submit) is on the executor; requests keep queueing meanwhile
            self._free.clear()
            await self._free.wait()
        key, size, full = batch[0].key, batch[0].size, isinstance(batch[0].key, _Alone)
        left: collections.deque[_Entry] = collections.deque()

        def consider(entry: _Entry) -> None:
            nonlocal size, full
            if entry.key == key and size + entry.size <= self.max_batch_size:
                batch.append(entry)
                size += entry.size
                full = size >= self.max_batch_size
            else:
                left.append(entry)
                # FIFO within a key: a later, smaller request of it does not overtake this one
                full = full or entry.key == key

        while self._carry and not full:  # earlier arrivals first
            consider(self._carry.popleft())
        deadline = loop.time() + self.batch_timeout
        while not full:
            try:  # what already waits first: wait_for costs a task per call
                entry = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    entry = await asyncio.wait_for(self._queue.get(), timeout)
                except TimeoutError:
                    break
            consider(entry)
        left.extend(self._carry)
        self._carry = left
        return batch, size

    async def _loop(self) -> None:
        while True:
            batch, size = await self._gather()
            try:
                results = await self._run(batch, size)
            except Exception as exc:
                for entry in batch:
                    if not entry.fut.done():
                        entry.fut.set_exception(exc)
                continue
            k = 0
            for entry in batch:
                if not entry.fut.done():
                    entry.fut.set_result(list(results[k:k + len(entry.items)]))
                k += len(entry.items)

    async def _run(self, batch: list[_Entry], size: int) -> Sequence[Any]:
        """The one run path, of a caller's lone request (submit) and of a gathered batch (_loop) alike:
        one `run` of all their items (`size`: what they count against max_batch_size)."""
        items = batch[0].items if len(batch) == 1 else [x for entry in batch for x in entry.items]
        self.on_batch(size)
        if tracing.ON:
            started = time.time_ns()
            for entry in batch:
                entry.batch, entry.started_ns = len(items), started
        self._busy = True
        try:
            if len(items) == 1:
                if self.inline_if is not None and self.inline_if():
                    return self.run(items)  # the module docstring: cheaper than the thread hop
                return await self.executor.call(self.run, items)
            if self._merged_seconds < self.inline_under:
                return self._run_merged(items)
            return await self.executor.call(self._run_merged, items)
        finally:
            self._busy = False
            self._free.set()

    def _run_merged(self, items: list[Any]) -> Sequence[Any]:
        """`run` of several items, timed in CPU time of the thread it runs on (the module docstring): the next
        such batch runs where this one says."""
        started = time.thread_time()
        try:
            return self.run(items)
        finally:
            self._merged_seconds = time.thread_time() - started


# ---- which tensor requests may merge along the first dimension --------------------------------------

class NotRowAligned(ValueError):
    """A merged run's output does not have one row per input row: it cannot be split back."""


def row_batching_refusal(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> str | None:
    """Why requests to a model with these tensors must not be merged along dim 0, or None when they may:
    every input's first dimension is dynamic, and no output declares a first dimension of its own (an
    output of unknown shape is allowed: `split_rows` checks its rows after each merged run)."""
    if not inputs:
        return "the model has no inputs"
    for kind, specs in (("input", inputs), ("output", outputs)):
        for s in specs:
            if s.shape is None:
                if kind == "input":  # dim 0 might be fixed: only a declared -1 says rows may be stacked
                    return f"input `{s.name}` has no declared shape"
                continue
            if not s.shape:
                return f"{kind} `{s.name}` is a scalar"
            if s.shape[0] != -1:
                return f"{kind} `{s.name}` has a fixed first dimension ({s.shape[0]})"
    return None


def rows_of(request: Mapping[str, np.ndarray]) -> int:
    """The rows a tensor request carries (its inputs' common first dimension; 1 for scalars)."""
    if len(request) == 1:  # the common case, without a generator (0.5 -> 0.1 us a call, twice a request)
        (a,) = request.values()
        return a.shape[0] if a.ndim else 1
    return max((a.shape[0] if a.ndim else 1 for a in request.values()), default=1)


def rows_key(request: Mapping[str, np.ndarray]) -> Hashable | None:
    """Requests with equal keys may be stacked along dim 0: the same input names, and per input the same
    dtype and the same dimensions after the first. None: the request must run alone (a scalar input, no
    inputs, or inputs that disagree on their row count, so its rows could not be told apart)."""
    if len(request) == 1:  # the common case, without the generic path's lists (~1 us per request)
        ((name, a),) = request.items()
        return ((name, a.dtype.str, a.shape[1:]),) if a.ndim else None
    shapes = [a.shape for a in request.values()]
    if not shapes or not all(shapes) or any(s[0] != shapes[0][0] for s in shapes):
        return None
    return tuple(sorted((name, a.dtype.str, a.shape[1:]) for name, a in request.items()))


def merge_rows(requests: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One request of all their rows, in order (the requests share a `rows_key`)."""
    return {name: np.concatenate([r[name] for r in requests], axis=0) for name in requests[0]}


def split_rows(outputs: Mapping[str, np.ndarray], rows: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """A merged run's outputs back per request (`rows`: each request's row count, in merge order), or
    NotRowAligned when an output's first dimension is not the merged row count."""
    total = sum(rows)
    for name, arr in outputs.items():
        if arr.ndim == 0 or arr.shape[0] != total:
            got = "a scalar" if arr.ndim == 0 else f"{arr.shape[0]} rows"
            raise NotRowAligned(f"output `{name}` has {got} for {total} merged input rows")
    bounds = list(itertools.accumulate(rows, initial=0))
    return [{name: arr[a:b] for name, arr in outputs.items()} for a, b in itertools.pairwise(bounds)]
