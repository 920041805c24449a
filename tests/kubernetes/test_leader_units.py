"""LeaderElector without a server: an in-memory Lease store with resourceVersion conflicts and an
injected clock decide who leads, when a silent leader may be replaced, and when a leader steps down."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from autoscaler.kube.client import KubeError
from autoscaler.kube.leader import LeaderElector
from tests.fakes import Clock


class FakeLeases:
    """The three calls the elector makes, with the API server's optimistic concurrency."""

    def __init__(self) -> None:
        self.leases: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.fail: KubeError | None = None  # every call raises this while set (an unreachable server)
        self.failed_calls = 0
        self.failed_enough = asyncio.Event()  # set once `failed_calls` reaches `wait_failures`
        self.wait_failures = 0

    def _check(self) -> None:
        if self.fail is not None:
            self.failed_calls += 1
            if self.failed_calls >= self.wait_failures:
                self.failed_enough.set()
            raise self.fail

    async def get_or_none(self, path: str) -> dict[str, Any] | None:
        self._check()
        lease = self.leases.get(path)
        return copy.deepcopy(lease) if lease else None

    async def create(self, collection: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check()
        path = f"{collection}/{body['metadata']['name']}"
        if path in self.leases:
            raise KubeError(409, "AlreadyExists")
        self.version += 1
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = str(self.version)
        self.leases[path] = body
        return body

    async def replace(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check()
        if self.leases[path]["metadata"]["resourceVersion"] != body["metadata"].get("resourceVersion"):
            raise KubeError(409, "Conflict")
        self.version += 1
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = str(self.version)
        self.leases[path] = body
        return body

    def holder(self) -> tuple[str, int]:
        spec = next(iter(self.leases.values()))["spec"]
        return spec["holderIdentity"], spec["leaseTransitions"]


def _elector(kube: FakeLeases, identity: str, clock: Clock, **kw: float) -> LeaderElector:
    return LeaderElector(kube, "es-system", "controller", identity, clock=clock, **kw)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_first_acquires_second_waits_until_the_lease_expires_by_its_own_clock() -> None:
    kube, clock = FakeLeases(), Clock()
    a, b = _elector(kube, "a", clock), _elector(kube, "b", clock)
    assert await a.try_acquire_or_renew()
    assert kube.holder() == ("a", 0)
    assert not await b.try_acquire_or_renew()  # held by a live leader
    clock.t += 10  # a renews within its lease: b's timer restarts at the new renewTime
    assert await a.try_acquire_or_renew()
    clock.t += 10
    assert not await b.try_acquire_or_renew()
    clock.t += 14.9  # 14.9 s since b saw the record change: still a's (lease 15 s)
    assert not await b.try_acquire_or_renew()
    clock.t += 0.2  # a went silent for longer than the lease
    assert await b.try_acquire_or_renew()
    assert kube.holder() == ("b", 1)  # one more transition
    assert not await a.try_acquire_or_renew()  # a's comeback sees b as a live holder


@pytest.mark.asyncio
async def test_a_stale_write_loses_on_resource_version() -> None:
    kube, clock = FakeLeases(), Clock()
    a = _elector(kube, "a", clock)
    assert await a.try_acquire_or_renew()
    lease = await kube.get_or_none(a.path)
    assert await a.try_acquire_or_renew()  # bumps resourceVersion
    with pytest.raises(KubeError) as exc:
        await kube.replace(a.path, lease)  # type: ignore[arg-type]
    assert exc.value.conflict


@pytest.mark.asyncio
async def test_a_leader_that_cannot_renew_steps_down_after_the_renew_deadline() -> None:
    kube, clock = FakeLeases(), Clock()
    a = _elector(kube, "a", clock, lease_duration=3.0, renew_deadline=2.0, retry_period=0.01)
    a.start()
    try:
        assert await asyncio.wait_for(a.wait_change(), 5) is True
        changed = asyncio.ensure_future(a.wait_change())
        clock.t += 1.5  # within the renew deadline: still the leader after several failed rounds
        kube.wait_failures = 5
        kube.fail = KubeError(0, "unreachable")
        await asyncio.wait_for(kube.failed_enough.wait(), 5)
        assert a.is_leader and not changed.done()
        clock.t += 1.0  # past it: the next failed round steps down
        assert await asyncio.wait_for(changed, 5) is False
        kube.fail = None
        assert await asyncio.wait_for(a.wait_change(), 5) is True  # renews again once the API answers
    finally:
        await a.stop()
    assert kube.holder()[0] == ""  # stop() released the lease for a fast failover


def test_timing_parameters_are_validated() -> None:
    with pytest.raises(ValueError):
        _elector(FakeLeases(), "a", Clock(), lease_duration=10, renew_deadline=10, retry_period=2)
