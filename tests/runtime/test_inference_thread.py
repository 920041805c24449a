"""runtime.inference_thread: every call on one thread, in order, answered on the loop; cancellation and
shutdown without a hang."""

from __future__ import annotations

import asyncio
import threading

import pytest

from runtime.inference_thread import InferenceThread


@pytest.fixture
def worker():
    w = InferenceThread()
    yield w
    w.shutdown(wait=True)


async def test_calls_run_in_order_on_one_thread_and_answer_on_the_loop(worker):
    seen: list[tuple[int, int]] = []

    def work(i: int) -> int:
        seen.append((i, threading.get_ident()))
        return i * i

    results = await asyncio.gather(*(worker.call(work, i) for i in range(50)))
    assert results == [i * i for i in range(50)]
    assert [i for i, _ in seen] == list(range(50))
    assert len({ident for _, ident in seen}) == 1 and seen[0][1] != threading.get_ident()


async def test_an_exception_reaches_the_caller_and_the_thread_goes_on(worker):
    def boom() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        await worker.call(boom)
    assert await worker.call(lambda: 7) == 7


async def test_a_cancelled_call_drops_its_answer_and_the_next_one_is_answered(worker):
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        assert release.wait(30)
        return "late"

    fut = worker.call(slow)
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 30)
    fut.cancel()
    queued = worker.call(lambda: "never run")
    queued.cancel()  # cancelled before it started: skipped
    release.set()
    assert await worker.call(lambda: "next") == "next"
    assert fut.cancelled() and queued.cancelled()


async def test_it_is_an_executor_for_run_in_executor(worker):
    assert await asyncio.get_running_loop().run_in_executor(worker, sum, [1, 2, 3]) == 6
    assert worker.submit(pow, 2, exp=5).result(30) == 32


async def test_after_shutdown_new_calls_are_refused_and_the_thread_ends():
    w = InferenceThread()
    assert await w.call(lambda: 1) == 1
    w.shutdown(wait=True)
    assert not w._thread.is_alive()
    with pytest.raises(RuntimeError, match="after shutdown"):
        w.call(lambda: 2)
    with pytest.raises(RuntimeError, match="after shutdown"):
        w.submit(lambda: 2)
    w.shutdown(wait=True)  # twice is fine


def test_a_call_whose_loop_has_closed_is_dropped_without_killing_the_thread(worker):
    loop = asyncio.new_event_loop()
    release = threading.Event()

    async def start() -> asyncio.Future:
        return worker.call(release.wait, 30)

    fut = loop.run_until_complete(start())
    loop.close()
    release.set()  # the answer goes to a closed loop: dropped
    assert worker.submit(lambda: "alive").result(30) == "alive"
    assert not fut.done()
