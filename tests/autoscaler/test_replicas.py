"""The one replica-count decision (autoscaler/replicas.py), table-driven."""

from __future__ import annotations

import pytest

from autoscaler.replicas import replicas


@pytest.mark.parametrize(("decided", "bounds", "floor", "held", "want"), [
    (0, (0, 0), 0, False, 0),  # idle at zero stays there
    (0, (0, 0), 0, True, 1),  # a request held at zero: one replica at once (the poke)
    (0, (2, 0), 0, True, 2),  # minScale asks for more at once
    (3, (0, 0), 0, True, 3),  # held requests never lower a decision
    (1, (0, 0), 2, False, 2),  # a release floor raises it (a side sized for its next share)
    (1, (0, 2), 5, False, 2),  # ... but never past maxScale
    (7, (0, 4), 0, False, 4),  # maxScale caps the KPA's answer
    (0, (0, 1), 3, True, 1),
    (2, (3, 0), 0, False, 3),  # minScale lifts a decision under it
])
def test_replicas(decided, bounds, floor, held, want) -> None:
    assert replicas(decided, min_scale=bounds[0], max_scale=bounds[1], floor=floor, held=held) == want
