"""The wire contract between activators and the autoscaler's control API, defined once for both ends.

Routes flow down (autoscaler -> activators, long-polled as versioned deltas); load reports and pokes
flow up (activators -> autoscaler). Each message is a frozen pydantic model: the sender builds it, the
receiver parses it with `model_validate_json` and gets a 400 reason instead of a `.get()` default.

Versioning: a controller instance stamps every update with its `epoch` (random, per process) and a
`version` that grows by one per change. An activator asks `GET /v1/routes?epoch=E&since=V&wait=S`; the
answer is a delta (`full=False`: the services changed since V and the keys removed) when the server
still has that history for epoch E, else the whole table (`full=True`). An activator never applies an
update of its own epoch with a version at or below the one it holds, so an older table cannot replace
a newer one; a different epoch (a new leader) is only accepted as a full table.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Side = Literal["default", "canary"]
SIDES: tuple[Side, ...] = ("default", "canary")
# A side load is reported and poked for: also `previous`, the outgoing default version while traffic
# moves to a new one (autoscaler/rollout.py). Routes carry it in their own field (`Route.previous`), so
# an activator that predates it ignores it instead of refusing the whole table.
LoadSide = Literal["default", "canary", "previous"]
LOAD_SIDES: tuple[LoadSide, ...] = ("default", "canary", "previous")

# `namespace/name`, both DNS-1123 labels (at most 63 characters), as PaddleService keys are everywhere.
_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_KEY_RE = re.compile(rf"^{_LABEL}/{_LABEL}$")
MAX_STATS_PER_REPORT = 20_000  # two sides of 10,000 services
MAX_WINDOW_SECONDS = 60.0  # a report covers at most this much time (activators send one per second)
MAX_CONCURRENCY = 1_000_000.0  # more in-flight requests than one activator can hold: a bogus report

Port = Annotated[int, Field(ge=1, le=65535)]
NonNegative = Annotated[float, Field(ge=0.0, le=MAX_CONCURRENCY, allow_inf_nan=False)]


class _Message(BaseModel):
    # Unknown fields are ignored so that a newer sender can talk to an older receiver during a rollout.
    model_config = ConfigDict(frozen=True, extra="ignore")


class _ServiceMessage(_Message):
    """A message about one service, named by its key."""

    service: str  # namespace/name

    @field_validator("service")
    @classmethod
    def _key(cls, value: str) -> str:
        if not _KEY_RE.match(value):
            raise ValueError(f"service {value[:80]!r} is not `namespace/name` (DNS-1123 labels)")
        return value


# ---- autoscaler -> activators -----------------------------------------------------------------
class Endpoint(_Message):
    """One ready replica: where the activator forwards HTTP and gRPC."""

    id: str = Field(min_length=1, max_length=253)
    host: str = Field(min_length=1, max_length=253)
    http_port: Port
    grpc_port: Port | None = None


class SideRoute(_Message):
    """One side (default or canary) of a service as the activator routes it."""

    ready: bool = False
    error: str | None = None  # why the side cannot start (held requests get 503 with this reason)
    desired: int = Field(default=0, ge=0)
    endpoints: tuple[Endpoint, ...] = ()


class Route(_ServiceMessage):
    """Everything an activator needs to serve one PaddleService.

    The split in force: `canary_percent` to the canary, `previous_percent` to `previous` (during a
    default version change), the rest to the default side. `tags`: hosts that reach one side only,
    whatever the split (`default-<name>.<namespace>.<domain>`, ...). A service's own `hosts` win over
    another service's tag host of the same name.
    """

    name: str
    namespace: str
    hosts: tuple[str, ...]
    canary_percent: int = Field(default=0, ge=0, le=100)
    container_concurrency: int = Field(default=0, ge=0)  # per replica; 0 = unlimited
    sides: dict[Side, SideRoute]
    tags: dict[Side, tuple[str, ...]] = Field(default_factory=dict)
    previous: SideRoute | None = None
    previous_percent: int = Field(default=0, ge=0, le=100)

    @model_validator(mode="after")
    def _split(self) -> Route:
        if self.canary_percent + self.previous_percent > 100:
            raise ValueError(f"canary_percent {self.canary_percent} + previous_percent {self.previous_percent} "
                             "exceed 100")
        return self

    def routed_sides(self) -> dict[LoadSide, SideRoute]:
        """Every side that takes requests: the spec's sides and, during a version change, `previous`."""
        out: dict[LoadSide, SideRoute] = dict(self.sides)
        if self.previous is not None:
            out["previous"] = self.previous
        return out


class RoutesUpdate(_Message):
    """An answer of `GET /v1/routes`: the whole table (`full`) or the changes since the asked version."""

    epoch: str = Field(min_length=1, max_length=64)
    version: int = Field(ge=0)
    full: bool
    services: tuple[Route, ...] = ()  # full: every service; delta: the services changed since `since`
    removed: tuple[str, ...] = ()  # delta only: keys of services deleted since `since`
    activators: int = Field(default=1, ge=1)  # activators reporting lately: each takes 1/N of capacity
    # The asking activator's position among them (their ids sorted), when it named itself: which share
    # of each replica's containerConcurrency is its own. None: it did not say who it is.
    activator_index: int | None = Field(default=None, ge=0)


# ---- activators -> autoscaler -----------------------------------------------------------------
class SideStats(_ServiceMessage):
    """One activator's load on one service side over the last `window` seconds."""

    side: LoadSide = "default"
    average_concurrency: NonNegative = 0.0  # time-weighted in-flight + held requests over the window
    concurrency: int = Field(default=0, ge=0, le=int(MAX_CONCURRENCY))  # at the end of the window
    requests: int = Field(default=0, ge=0)  # requests that arrived in the window
    window: float = Field(default=1.0, gt=0.0, le=MAX_WINDOW_SECONDS, allow_inf_nan=False)


class StatsReport(_Message):
    """`POST /v1/stats`: one activator's per-second report for every side it holds traffic for."""

    activator: str = Field(min_length=1, max_length=253)
    stats: tuple[SideStats, ...] = Field(default=(), max_length=MAX_STATS_PER_REPORT)


class Poke(_ServiceMessage):
    """`POST /v1/poke`: a request is held for this side at zero replicas; scale up now."""

    side: LoadSide = "default"
    # W3C `traceparent` of the held request that caused the poke (tracing on): the controller's scale
    # decision is a span linked to it. Absent from activators without tracing; 55 characters when valid.
    traceparent: str | None = Field(default=None, max_length=64)


__all__ = ["LOAD_SIDES", "SIDES", "Endpoint", "LoadSide", "Poke", "Route", "RoutesUpdate", "Side", "SideRoute", "SideStats", "StatsReport"]
