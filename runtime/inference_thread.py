"""The one thread a handler's backend runs on (Paddle predictors must not hop between threads): the
batcher and the handlers hand it model calls with `call(fn, *args)` and await the answer on the loop.

Why not `loop.run_in_executor` on a ThreadPoolExecutor(1), as before: its concurrent future, the
wrapping asyncio future and the pool's idle semaphore (contended by the worker and the submitter, each
contention a GIL hand-over) cost ~20 us of CPU per hand-off on the 2-vCPU VM; a queue and one
`call_soon_threadsafe` back cost ~9 us. A lone request, or each batch, makes one hand-off. It is still a
`concurrent.futures.Executor` (`submit`, `shutdown`), so loading and `run_in_executor` work as before.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Any

_STOP = object()


class InferenceThread(concurrent.futures.Executor):
    def __init__(self, name: str = "inference") -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._shutdown = False
        self._lock = threading.Lock()  # shutdown vs a submission from another thread
        # A daemon, as the pool's threads were not: at exit nothing waits for a model call in progress.
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def call(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """`fn(*args)` on the thread; the future (of the running loop) gets its result or exception.
        Cancelling the future does not stop a call that has started; its result is dropped."""
        fut = asyncio.get_running_loop().create_future()
        self._put((fut, fn, args))
        return fut

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        cfut: concurrent.futures.Future = concurrent.futures.Future()
        self._put((cfut, fn, args, kwargs))
        return cfut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if not self._shutdown:
                self._shutdown = True
                self._queue.put(_STOP)
        if wait and self._thread is not threading.current_thread():
            self._thread.join()

    def _put(self, item: tuple) -> None:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new calls after shutdown")
            self._queue.put(item)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if len(item) == 4:  # submit(): a concurrent future
                cfut, fn, args, kwargs = item
                if cfut.set_running_or_notify_cancel():
                    try:
                        cfut.set_result(fn(*args, **kwargs))
                    except BaseException as exc:
                        cfut.set_exception(exc)
                continue
            fut, fn, args = item
            if fut.cancelled():
                continue
            try:
                result, error = fn(*args), None
            except BaseException as exc:
                result, error = None, exc
            try:
                fut.get_loop().call_soon_threadsafe(_settle, fut, result, error)
            except RuntimeError:  # the loop is closed: nobody waits for the answer any more
                pass


def _settle(fut: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if fut.done():  # cancelled while the call ran
        return
    if error is None:
        fut.set_result(result)
    else:
        fut.set_exception(error)
