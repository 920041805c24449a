"""The default/canary split (pure logic): deterministic smooth weighted round robin, so p% of any
run of 100 requests go to the canary, without randomness."""

from __future__ import annotations


class CanarySplitter:
    def __init__(self) -> None:
        self._credit = 0.0

    def pick(self, canary_percent: int) -> str:
        """`canary` for canary_percent% of calls, `default` for the rest."""
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
