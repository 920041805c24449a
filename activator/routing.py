"""Which service and which side a request is for (pure logic): the host index over the route table
from the autoscaler (service hosts and tag hosts), and the pick of a side by the split in force. First
step of the dispatcher's path."""

from __future__ import annotations

import difflib
from collections import defaultdict
from collections.abc import Iterable
from typing import NamedTuple

from autoscaler.wire import LoadSide, Route, RoutesUpdate


def normalize_host(host: str | None) -> str:
    """Lower-case host without port or trailing dot (`A.b.example.com:8080` -> `a.b.example.com`)."""
    if not host:
        return ""
    h = host.strip().lower()
    if h.startswith("["):  # IPv6 literal
        return h.split("]")[0] + "]"
    return h.rsplit(":", 1)[0].rstrip(".") if ":" in h else h.rstrip(".")


class CanarySplitter:
    """Deterministic smooth weighted round robin (nginx's): with fixed shares, exactly p % of any run
    of 100 picks go to a side with p %; when the shares move (a gradual rollout) the credits carry over,
    so no side gets a burst."""

    def __init__(self) -> None:
        self._credit: dict[LoadSide, int] = {"default": 0, "canary": 0, "previous": 0}

    def pick(self, canary_percent: int, previous_percent: int = 0) -> LoadSide:
        c = max(0, min(100, canary_percent))
        p = max(0, min(100 - c, previous_percent))
        weights: dict[LoadSide, int] = {"default": 100 - c - p, "canary": c, "previous": p}
        if max(weights.values()) == 100:  # one side takes everything: no credit moves
            return max(weights, key=weights.__getitem__)
        for side, w in weights.items():
            # A side without a share takes nothing, whatever credit it had left from an earlier split.
            self._credit[side] = self._credit[side] + w if w else 0
        best = max((s for s, w in weights.items() if w), key=lambda s: (self._credit[s], weights[s]))
        self._credit[best] -= 100
        return best


class Target(NamedTuple):
    route: Route
    tag: LoadSide | None  # a tag host reaches this side only; None: the split decides


MAX_HINT_HOSTS = 3  # hosts a 404 names
MAX_HINT_INPUT = 253  # a longer Host is no DNS name: compared only by its first 253 characters
PIN_TRUE = ("true", "1", "yes")
PIN_FALSE = ("false", "0", "no")


class RouteTable:
    """The services this activator serves, indexed by every host form; updated by full tables or deltas."""

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self.routes: dict[str, Route] = {}
        self._by_host: dict[str, Route] = {}
        self._splitters: defaultdict[str, CanarySplitter] = defaultdict(CanarySplitter)
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
            self.routes.update((r.service, r) for r in update.services)
        for k in gone:
            self._splitters.pop(k, None)
        by_host: dict[str, Target] = {}
        for r in self.routes.values():
            for side, hosts in r.tags.items():
                if side in r.sides:
                    by_host.update((normalize_host(h), Target(r, side)) for h in hosts)
        # A service's own host wins over a tag host of the same name (`default-a` the service, not the
        # default side of `a`): names are the user's, tags are ours.
        by_host.update((normalize_host(h), Target(r, None)) for r in self.routes.values() for h in r.hosts)
        self._by_host = by_host
        return gone

    def resolve(self, host: str | None) -> Route | None:
        found = self._by_host.get(normalize_host(host))
        return found.route if found else None

    def target(self, host: str | None) -> Target | None:
        """The service a host names, and the side when it is a tag host."""
        # A Host header as clients send it is usually the served name itself: looked up as is first.
        return self._by_host.get(host) or self._by_host.get(normalize_host(host))  # type: ignore[arg-type]

    def closest_hosts(self, host: str | None, n: int = MAX_HINT_HOSTS) -> list[str]:
        """The served hosts (service and tag hosts, every form) most like `host`, best first (difflib's
        ratio of at least 0.6); for the 404 of a host no service serves."""
        wanted = normalize_host(host)[:MAX_HINT_INPUT]
        return difflib.get_close_matches(wanted, list(self._by_host), n=n, cutoff=0.6) if wanted else []

    def unknown_host_hint(self, host: str | None) -> str:
        """What a 404 for `host` adds: the closest served hosts (a typo's fix), else that nothing is
        served at all. The door is public: it never lists the services to a host unlike all of them."""
        if close := self.closest_hosts(host):
            return "; did you mean " + " or ".join(repr(h) for h in close) + "?"
        return "" if self.routes else "; no PaddleService is served here yet"

    def pick_side(self, route: Route, pin: str) -> LoadSide | None:
        """Pinned by the x-paddleservice-canary header, else the traffic split in force; None when the
        canary is pinned but the service has none."""
        pin = pin.strip().lower()
        has_canary = "canary" in route.sides
        if pin in PIN_TRUE:
            return "canary" if has_canary else None
        if pin in PIN_FALSE:
            return "default"
        previous = route.previous_percent if route.previous is not None else 0
        if not has_canary and not previous:
            return "default"
        return self._splitters[route.service].pick(route.canary_percent if has_canary else 0, previous)
