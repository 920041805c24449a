"""Dynamic batching without a server: an idle batcher runs a lone request at once, requests that
arrive while a batch runs are merged into the next one, results and errors go back to their callers."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from runtime.batching import Batcher
from runtime.inference_thread import InferenceThread


class Model:
    """`run` doubles each item; the first call blocks until `release` is set; records batch sizes."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.batches: list[list[int]] = []

    def run(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.entered.set()
        assert self.release.wait(60)
        if any(i < 0 for i in items):
            raise ValueError("negative item")
        return [2 * i for i in items]


@pytest.fixture
def pool():
    ex = InferenceThread()
    yield ex
    ex.shutdown(wait=True)


async def _entered(model: Model) -> None:
    await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 60)


@pytest.mark.parametrize("timeout", [0.0, 0.002])
async def test_requests_arriving_during_a_run_are_merged_into_the_next_batch(pool, timeout):
    model, sizes = Model(), []
    b = Batcher(model.run, pool, max_batch_size=8, batch_timeout=timeout, on_batch=sizes.append)
    b.start()
    try:
        first = asyncio.create_task(b.submit([1]))
        await _entered(model)  # the first batch is running: the next requests must wait for it
        rest = [asyncio.create_task(b.submit([i, i + 1])) for i in (10, 20, 30)]
        await asyncio.sleep(0)  # let them queue
        model.release.set()
        assert await first == [2]
        assert [await t for t in rest] == [[20, 22], [40, 42], [60, 62]]
        assert model.batches == [[1], [10, 11, 20, 21, 30, 31]] and sizes == [1, 6]
    finally:
        b.close()


async def test_an_idle_batcher_runs_a_lone_request_and_reports_its_error(pool):
    model = Model()
    model.release.set()
    b = Batcher(model.run, pool, max_batch_size=4)
    b.start()
    try:
        assert await b.submit([3]) == [6]
        with pytest.raises(ValueError, match="negative"):
            await b.submit([-1])
        assert await b.submit([4, 5]) == [8, 10]  # still serving after an error
    finally:
        b.close()


async def test_an_error_in_a_merged_batch_reaches_every_request_of_it(pool):
    model = Model()
    b = Batcher(model.run, pool, max_batch_size=8)
    b.start()
    try:
        first = asyncio.create_task(b.submit([1]))
        await _entered(model)
        merged = [asyncio.create_task(b.submit([i])) for i in (2, -3)]
        await asyncio.sleep(0)
        model.release.set()
        assert await first == [2]
        for t in merged:
            with pytest.raises(ValueError, match="negative"):
                await t
    finally:
        b.close()


class Where:
    """Records the thread each batch ran on."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def run(self, items: list[int]) -> list[int]:
        self.threads.append(threading.get_ident())
        return [2 * i for i in items]


@pytest.mark.parametrize(("inline", "items", "on_loop"), [
    (True, [1], True),        # alone, one item: run on the loop's own thread
    (True, [1, 2], False),    # several items: the inference thread
    (False, [1], False),      # not alone: the inference thread
])
async def test_a_lone_item_runs_inline_only_when_alone(pool, inline, items, on_loop):
    model = Where()
    b = Batcher(model.run, pool, max_batch_size=8, inline_if=lambda: inline)
    b.start()
    try:
        assert await b.submit(items) == [2 * i for i in items]
        assert (model.threads == [threading.get_ident()]) is on_loop
    finally:
        b.close()


class Timed(Where):
    """As Where; the runs numbered in `slow` take 0.2 s of CPU (a model that got slow)."""

    def __init__(self, slow: set[int]) -> None:
        super().__init__()
        self.slow = slow

    def run(self, items: list[int]) -> list[int]:
        if len(self.threads) in self.slow:
            started = time.thread_time()
            while time.thread_time() - started < 0.2:
                pass
        return super().run(items)


@pytest.mark.parametrize(("inline_under", "slow", "on_loop"), [
    (0.0, set(), [False, False, False, False]),    # the default: never on the loop
    (60.0, set(), [False, True, True, True]),      # the first is timed on the thread, then all quick
    (0.1, {1}, [False, True, False, True]),        # the second took 0.2 s of CPU: the third on the thread
    (1e-9, set(), [False, False, False, False]),   # no run is that quick
])
async def test_a_batch_of_several_items_runs_on_the_loop_while_the_last_was_quick(pool, inline_under, slow, on_loop):
    model = Timed(slow)
    b = Batcher(model.run, pool, max_batch_size=8, inline_under=inline_under)
    b.start()
    try:
        for i in range(4):
            assert await b.submit([i, i + 1]) == [2 * i, 2 * i + 2]
        assert [t == threading.get_ident() for t in model.threads] == on_loop
        assert await b.submit([7]) == [14] and model.threads[-1] != threading.get_ident()  # one item: the thread
    finally:
        b.close()
