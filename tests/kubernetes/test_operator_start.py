"""PaddleServiceOperator.start() without an API server: it returns only once every PaddleService of the
first list was reconciled (a new leader's first route table holds them), and at most after its timeout
when one keeps failing."""

from __future__ import annotations

import asyncio
import types

from autoscaler.kube.operator import PaddleServiceOperator


class ListedInformer:
    """The informer's surface start() uses: a store filled by the first list, then synced."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        self.store: dict[str, dict] = {}
        self.synced = asyncio.Event()
        self.on_event = None

    def start(self) -> None:
        async def list_them() -> None:
            await asyncio.sleep(0.01)
            for key in self.keys:
                self.store[key] = {}
                self.on_event("ADDED", key)
            self.synced.set()
        asyncio.get_running_loop().create_task(list_them())

    async def wait_synced(self) -> None:
        await self.synced.wait()

    async def stop(self) -> None:
        pass


def _operator(keys: list[str], reconcile) -> PaddleServiceOperator:
    controller = types.SimpleNamespace(platform=types.SimpleNamespace(), on_status=None)
    op = PaddleServiceOperator(None, controller)  # type: ignore[arg-type]
    op.informer = ListedInformer(keys)  # type: ignore[assignment]
    op.informer.on_event = lambda kind, key: op.enqueue(key)
    op.reconcile = reconcile  # type: ignore[method-assign]
    return op


async def test_start_returns_once_every_listed_service_was_reconciled() -> None:
    done: list[str] = []

    async def slow_reconcile(key: str) -> None:
        await asyncio.sleep(0.02)
        done.append(key)

    op = _operator([f"ns/s{i}" for i in range(5)], slow_reconcile)
    try:
        await op.start(initial_timeout=10)
        assert sorted(done) == [f"ns/s{i}" for i in range(5)]
    finally:
        await op.close()


async def test_a_service_that_keeps_failing_delays_start_only_until_the_timeout() -> None:
    async def reconcile(key: str) -> None:
        if key == "ns/bad":
            raise RuntimeError("boom")

    op = _operator(["ns/good", "ns/bad"], reconcile)
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await op.start(initial_timeout=0.5)
        assert 0.5 <= loop.time() - t0 < 5
        assert "ns/good" in op._reconciled and "ns/bad" not in op._reconciled
    finally:
        await op.close()
