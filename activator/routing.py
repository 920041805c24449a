"""Host-header routing: which PaddleService a request is for (pure logic).

The route table from the autoscaler lists each service's hosts; the proxy asks `resolve(host)`.
"""

from __future__ import annotations

from typing import Any


def normalize_host(host: str | None) -> str:
    """Lower-case host without port or trailing dot (`A.b.example.com:8080` -> `a.b.example.com`)."""
    if not host:
        return ""
    h = host.strip().lower()
    if h.startswith("["):  # IPv6 literal
        return h.split("]")[0] + "]"
    return h.rsplit(":", 1)[0].rstrip(".") if ":" in h else h.rstrip(".")


class HostIndex:
    """Maps every host form of every service to its route."""

    def __init__(self, routes: list[dict[str, Any]] | None = None) -> None:
        self._by_host: dict[str, dict[str, Any]] = {}
        self.update(routes or [])

    def update(self, routes: list[dict[str, Any]]) -> None:
        by_host = {}
        for r in routes:
            for h in r.get("hosts", []):
                by_host[normalize_host(h)] = r
        self._by_host = by_host

    def resolve(self, host: str | None) -> dict[str, Any] | None:
        return self._by_host.get(normalize_host(host))
