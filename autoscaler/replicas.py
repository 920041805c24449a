"""The one replica-count decision of a side, pure: the controller's tick, a poke at zero, an apply and a
release's floors all ask it. KPA answer (kpa.py) or last decision + release floor (rollout.py) + held
requests -> `replicas` -> controller -> platform.scale.
"""

from __future__ import annotations


def replicas(decided: int, *, min_scale: int = 0, max_scale: int = 0, floor: int = 0, held: bool = False) -> int:
    """The replicas one side runs: what the autoscaler decided (the KPA's answer at a tick, else its last
    decision), raised to the release's floor (a version proving itself, a side sized for its next
    share) and, while requests are held for the side, to one; always within minScale..maxScale
    (maxScale 0: unbounded; it is never below 1 when set, so a held request always gets a replica)."""
    n = max(decided, floor, 1 if held else 0, min_scale)
    return min(n, max_scale) if max_scale else n
