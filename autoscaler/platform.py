"""The interface between the controller and a platform that runs replicas.

The controller calls apply/delete/scale; the platform reports each side's replicas through `state`
and calls `on_change` whenever ready endpoints change, so routes reach the activator at once.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field

from autoscaler.spec import PaddleService


@dataclass(frozen=True)
class ReplicaAddress:
    """One ready replica as the activator reaches it."""

    id: str
    host: str
    http_port: int
    grpc_port: int | None = None


@dataclass
class SideState:
    """What a platform knows of one side (default or canary) of one service."""

    desired: int = 0
    ready: list[ReplicaAddress] = field(default_factory=list)
    starting: int = 0
    error: str | None = None  # the last reason replicas failed (exited, never ready, ...)
    error_reason: str = "ReplicaFailed"  # the condition's reason for `error` (ModelPullFailed: storageUri)
    last_start_seconds: float | None = None  # spawn-to-ready time of the newest ready replica
    standby: int = 0  # ready but unrouted (kubernetes standby Pods); not in `ready`, not replicas

    @property
    def actual(self) -> int:
        return len(self.ready) + self.starting


class Platform(abc.ABC):
    """Runs the replicas of PaddleServices. Implementations: local processes, kubernetes."""

    name: str = "abstract"
    # Whether `move` works: the outgoing default version can go on serving as side `previous` while
    # traffic moves to a new one, and a promoted canary's replicas become the default's (rollout.py).
    moves_sides: bool = False

    def __init__(self) -> None:
        # Called with a service key when its replicas' state changed (routes and status follow).
        self.on_change: Callable[[str], None] = lambda key: None
        # Called with a service key when something the platform created for it was changed or deleted
        # behind its back (kubectl delete/edit): the owner re-applies it at once. Platforms whose
        # objects nobody else can touch (local processes) never call it.
        self.on_drift: Callable[[str], None] = lambda key: None

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Start background work (watches, supervisors)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop everything this platform started."""

    @abc.abstractmethod
    async def apply(self, svc: PaddleService) -> None:
        """Create or update the workloads of every side of `svc`; drop a removed canary's."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove every workload of the service `namespace/name`."""

    @abc.abstractmethod
    async def scale(self, key: str, side: str, replicas: int) -> None:
        """Set the desired replica count of one side."""

    @abc.abstractmethod
    def state(self, key: str, side: str) -> SideState:
        """Current replicas of one side (a cached view; never blocks)."""

    async def move(self, key: str, from_side: str, to_side: str) -> None:  # noqa: B027 - optional
        """Hand the running replicas (and version) of `from_side` to `to_side`, replacing what `to_side`
        ran; `from_side` is then empty until `apply` gives it a spec. Only when `moves_sides`."""
        raise NotImplementedError(f"the {self.name} platform cannot move replicas between sides")

    async def drop(self, key: str, side: str) -> None:  # noqa: B027 - optional hook
        """Stop every replica of one side that is not in the spec (`previous` once its traffic is gone)."""
