"""Test doubles shared by the controller, control API, fuzz and leader-election tests: a platform that
records what the controller asks of it, a settable clock, and a PaddleService builder."""

from __future__ import annotations

import asyncio

from autoscaler.platform import Platform, ReplicaAddress, SideState
from autoscaler.spec import PaddleService


class FakePlatform(Platform):
    def __init__(self) -> None:
        super().__init__()
        self.applied: list[str] = []
        self.deleted: list[str] = []
        self.scales: list[tuple[str, str, int]] = []
        self.states: dict[tuple[str, str], SideState] = {}

    async def apply(self, svc: PaddleService) -> None:
        self.applied.append(svc.key)

    async def delete(self, key: str) -> None:
        self.deleted.append(key)

    async def scale(self, key: str, side: str, replicas: int) -> None:
        self.scales.append((key, side, replicas))

    def state(self, key: str, side: str) -> SideState:
        return self.states.get((key, side), SideState())

    def set_ready(self, key: str, side: str, n: int, error: str | None = None) -> None:
        eps = [ReplicaAddress(f"{side}-{i}", "127.0.0.1", 9000 + i, 9500 + i) for i in range(n)]
        self.states[(key, side)] = SideState(desired=n, ready=eps, error=error)
        self.on_change(key)


class Clock:
    """Time passed in: starts at 1000.0, moves only when a test adds to `t`; `read` is set by each reading
    (an async test waits on it to know a task has looked at the time)."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.read = asyncio.Event()

    def __call__(self) -> float:
        self.read.set()
        return self.t

    async def read_by(self, task: asyncio.Task) -> None:
        """Until `task` (or anything) reads the clock again, or `task` ends."""
        self.read.clear()
        reading = asyncio.ensure_future(self.read.wait())
        await asyncio.wait({reading, task}, return_when=asyncio.FIRST_COMPLETED)
        reading.cancel()


def svc(min_scale=0, canary=False, percent=None, target=10, max_scale=None, window="6s",
        name="s") -> PaddleService:
    spec = {"default": {"containerImage": "img", "tag": "v1", "port": 9292, "arg": "x"},
            "service": {"minScale": min_scale, "target": target, "targetUtilization": "100", "window": window}}
    if max_scale is not None:
        spec["service"]["maxScale"] = max_scale
    if canary:
        spec["canary"] = {"containerImage": "img", "tag": "v2", "port": 9292, "arg": "y"}
    if percent is not None:
        spec["canaryTrafficPercent"] = percent
    return PaddleService.from_dict({"apiVersion": "elasticserving.paddlepaddle.org/v1", "kind": "PaddleService",
                                    "metadata": {"name": name, "namespace": "ns"}, "spec": spec})
