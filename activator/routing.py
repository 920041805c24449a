"""Which service and which side a request is for (pure logic): the host index over the route table
from the autoscaler, and the default/canary pick. First step of the dispatcher's path."""

from __future__ import annotations

from collections.abc import Iterable

from autoscaler.wire import Route, RoutesUpdate, Side


def normalize_host(host: str | None) -> str:
    """Lower-case host without port or trailing dot (`A.b.example.com:8080` -> `a.b.example.com`)."""
    if not host:
        return ""
    h = host.strip().lower()
    if h.startswith("["):  # IPv6 literal
        return h.split("]")[0] + "]"
    return h.rsplit(":", 1)[0].rstrip(".") if ":" in h else h.rstrip(".")


class CanarySplitter:
    """Deterministic smooth weighted round robin: p% of any run of 100 picks go to the canary."""

    def __init__(self) -> None:
        self._credit = 0.0

    def pick(self, canary_percent: int) -> Side:
        p = max(0, min(100, canary_percent))
        if p == 0:
            return "default"
        if p == 100:
            return "canary"
        self._credit += p
        if self._credit >= 100:
            self._credit -= 100
            return "canary"
        return "default"


PIN_TRUE = ("true", "1", "yes")
PIN_FALSE = ("false", "0", "no")


class RouteTable:
    """The services this activator serves, indexed by every host form; updated by full tables or deltas."""

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self.routes: dict[str, Route] = {}
        self._by_host: dict[str, Route] = {}
        self._splitters: dict[str, CanarySplitter] = {}
        self.apply(RoutesUpdate(epoch="-", version=0, full=True, services=tuple(routes)))

    def apply(self, update: RoutesUpdate) -> list[str]:
        """Apply a full table or a delta; returns the keys of the services that are gone."""
        if update.full:
            fresh = {r.service: r for r in update.services}
            gone = [k for k in self.routes if k not in fresh]
            self.routes = fresh
        else:
            gone = [k for k in update.removed if k in self.routes]
            for k in gone:
                del self.routes[k]
            for r in update.services:
                self.routes[r.service] = r
        for k in gone:
            self._splitters.pop(k, None)
        self._by_host = {normalize_host(h): r for r in self.routes.values() for h in r.hosts}
        return gone

    def resolve(self, host: str | None) -> Route | None:
        return self._by_host.get(normalize_host(host))

    def pick_side(self, route: Route, pin: str) -> Side | None:
        """Pinned by the x-paddleservice-canary header, else the traffic split; None when the canary is
        pinned but the service has none."""
        pin = pin.strip().lower()
        has_canary = "canary" in route.sides
        if pin in PIN_TRUE:
            return "canary" if has_canary else None
        if pin in PIN_FALSE or not has_canary:
            return "default"
        splitter = self._splitters.get(route.service)
        if splitter is None:
            splitter = self._splitters[route.service] = CanarySplitter()
        return splitter.pick(route.canary_percent)
