"""The release (autoscaler/rollout.py): the split in force as a pure function of the spec, each side's
readiness and the time. Tables of ramps (Knative's 1 % first, then equal steps), the readiness gate,
default version changes with the outgoing version kept, promotion, floors of replicas, status round trip."""

from __future__ import annotations

from dataclasses import replace

import pytest

from autoscaler.rollout import (
    AT_TARGET,
    CANARY_NOT_READY,
    DEFAULT_NOT_READY,
    ROLLING_OUT,
    Observed,
    Ramp,
    Release,
    SideTraffic,
    Target,
    floors,
    from_status,
    revise,
    rfc3339,
    side_status,
    step,
)

T0 = 1_700_000_000.0  # a wall time


@pytest.mark.parametrize(("name", "start", "target", "duration", "timeline"), [
    ("4s to 100: 1, then 3 steps of 33 every second", 0, 100, 4.0,
     [(0, 1), (1.999, 1), (2, 34), (3, 67), (3.999, 67), (4, 100), (60, 100)]),
    ("4s to 50: steps of round(49/3)=16, one more to land", 0, 50, 4.0,
     [(0, 1), (2, 17), (3, 33), (4, 49), (5, 50)]),
    ("from 10 to 50 over 10s: 9 steps of 4", 10, 50, 10.0, [(0, 11), (1.5, 11), (2, 15), (9, 43), (10, 47), (11, 50)]),
    ("more seconds than points: 1-point steps", 0, 3, 60.0, [(0, 1), (30.4, 1), (30.5, 2), (60, 3)]),
    ("a duration under a step: everything at the second step", 0, 100, 1.0, [(0, 1), (1.9, 1), (2, 100)]),
    ("long ramp: 99 steps of 1 point", 0, 100, 120.0, [(0, 1), (1 + 119 / 99, 2), (120, 100)]),
])
def test_ramp_timeline(name, start, target, duration, timeline):
    ramp = Ramp(start=T0, start_percent=start, target=target, duration=duration)
    for t, want in timeline:
        assert ramp.percent_at(T0 + t) == want, (name, t)
    assert ramp.next_step(T0 + timeline[-1][0]) is None


def test_ramp_next_step_is_the_next_change():
    ramp = Ramp(start=T0, start_percent=0, target=100, duration=4.0)
    assert [ramp.next_step(T0 + t) for t in (0, 1.5, 2, 3.2)] == [T0 + 2, T0 + 2, T0 + 3, T0 + 4]


# ---- step ------------------------------------------------------------------------------------
def target(default="A", canary=None, pct=0, duration=0.0, keep=True) -> Target:
    return Target(default=default, canary=canary, canary_percent=pct, duration=duration, keep_previous=keep)


READY, DOWN = Observed(ready=1), Observed()


def run(prev: Release | None, tgt: Target, observed: dict, now: float = T0) -> Release:
    revised, _ = revise(prev, tgt)
    return step(revised, tgt, observed, now)


def test_a_new_canary_takes_its_share_only_once_ready():
    tgt = target(canary="B", pct=50)
    r = run(None, tgt, {"default": READY})
    assert r.split() == {"default": 100, "canary": 0} and r.reason == CANARY_NOT_READY
    assert "its 50% stays on default" in r.message and "starting" in r.message
    assert floors(r, tgt, 0) == {"canary": 1}  # it starts one replica to prove itself
    r = step(r, tgt, {"default": READY, "canary": Observed(error="exit code 3")}, T0 + 1)
    assert r.split()["canary"] == 0 and "exit code 3" in r.message and r.since == T0  # same reason: same since
    r = step(r, tgt, {"default": READY, "canary": READY}, T0 + 2)
    assert r.split() == {"default": 50, "canary": 50} and r.reason == AT_TARGET and r.since == T0 + 2


def test_a_canary_at_zero_percent_is_not_started():
    tgt = target(canary="B", pct=0)
    r = run(None, tgt, {"default": READY})
    assert r.reason == AT_TARGET and floors(r, tgt, 5) == {}


def test_a_proven_canary_at_zero_replicas_keeps_its_share_until_it_fails():
    tgt = target(canary="B", pct=30)
    r = run(None, tgt, {"default": READY, "canary": READY})
    r = step(r, tgt, {"default": DOWN, "canary": DOWN}, T0 + 60)  # both scaled to zero
    assert r.split() == {"default": 70, "canary": 30}
    r = step(r, tgt, {"canary": Observed(error="image pull failed")}, T0 + 61)
    assert r.split() == {"default": 100, "canary": 0} and r.reason == CANARY_NOT_READY


def test_a_raised_canary_share_ramps_and_a_lowered_one_drops_at_once():
    tgt = target(canary="B", pct=10, duration=4.0)
    r = run(None, tgt, {"default": READY, "canary": READY})
    assert r.split()["canary"] == 1 and r.reason == ROLLING_OUT  # 0 -> 10 ramps too: the canary is new
    r = step(r, tgt, {"default": READY, "canary": READY}, T0 + 10)
    assert r.split()["canary"] == 10 and r.reason == AT_TARGET and r.next_step is None
    up = replace(tgt, canary_percent=100)
    seen = {"default": READY, "canary": READY}
    got = []
    for t in (20, 21, 22, 23, 24):
        r = run(r, up, seen, T0 + t)
        got.append((r.split()["canary"], r.reason))
    # 10 -> 100: +1, then 3 steps of round(89 / 3) = 30.
    assert got == [(11, ROLLING_OUT), (11, ROLLING_OUT), (41, ROLLING_OUT), (71, ROLLING_OUT), (100, AT_TARGET)]
    r = run(r, replace(up, canary_percent=100), seen, T0 + 30)
    r = run(replace(r), replace(up, canary_percent=20), seen, T0 + 30.5)
    assert r.split()["canary"] == 20 and r.next_step is None


def test_a_canary_failing_mid_ramp_gives_its_share_back_and_starts_over_at_1():
    tgt = target(canary="B", pct=100, duration=4.0)
    r = run(None, tgt, {"default": READY, "canary": READY})
    r = step(r, tgt, {"default": READY, "canary": READY}, T0 + 2)
    assert r.split()["canary"] == 34
    r = step(r, tgt, {"default": READY, "canary": Observed(error="crashed")}, T0 + 2.5)
    assert r.split()["canary"] == 0 and r.next_step is None
    r = step(r, tgt, {"default": READY, "canary": READY}, T0 + 9)
    assert r.split()["canary"] == 1 and r.next_step == T0 + 11


def test_default_version_change_keeps_the_previous_version_until_the_new_one_is_proven():
    first = run(None, target("A"), {"default": READY})
    tgt = target("B", duration=4.0)
    revised, moves = revise(first, tgt)
    assert moves == [("default", "previous")]
    r = step(revised, tgt, {"default": DOWN, "previous": READY}, T0 + 1)
    assert r.split() == {"default": 0, "previous": 100} and r.reason == DEFAULT_NOT_READY
    assert floors(r, tgt, 3) == {"default": 1}
    r = step(r, tgt, {"default": Observed(error="exit code 3"), "previous": READY}, T0 + 5)
    assert r.split() == {"default": 0, "previous": 100} and "exit code 3" in r.message
    splits = []
    for t in (10, 12, 13, 14):
        r = step(r, tgt, {"default": READY, "previous": READY}, T0 + t)
        splits.append(r.split())
    assert splits == [{"default": 1, "previous": 99}, {"default": 34, "previous": 66},
                      {"default": 67, "previous": 33}, {"default": 100}]
    assert r.previous is None and r.reason == AT_TARGET


def test_without_a_duration_the_new_version_takes_over_once_proven():
    first = run(None, target("A"), {"default": READY})
    tgt = target("B")
    r = run(first, tgt, {"default": DOWN, "previous": READY})
    assert r.split() == {"default": 0, "previous": 100}
    r = step(r, tgt, {"default": READY, "previous": READY}, T0 + 1)
    assert r.split() == {"default": 100}


@pytest.mark.parametrize(("name", "first_ready", "keep"), [
    ("a platform that cannot keep two versions (kubernetes)", True, False),
    ("the old version never served", False, True),
])
def test_default_version_change_in_place(name, first_ready, keep):
    first = run(None, target("A", keep=keep), {"default": READY if first_ready else Observed(error="x")})
    revised, moves = revise(first, target("B", duration=4.0, keep=keep))
    assert moves == [] and revised.previous is None and revised.default.revision == "B", name
    assert step(revised, target("B", duration=4.0, keep=keep), {}, T0).split() == {"default": 100}, name


def test_promotion_hands_the_canary_replicas_share_and_proof_to_default():
    before = run(None, target("A", canary="B", pct=50), {"default": READY, "canary": READY})
    tgt = target("B", duration=4.0)
    revised, moves = revise(before, tgt)
    assert moves == [("default", "previous"), ("canary", "default")]
    assert revised.default.ready and revised.canary is None
    r = step(revised, tgt, {"default": READY, "previous": READY}, T0 + 1)
    assert r.split() == {"default": 51, "previous": 49} and r.reason == ROLLING_OUT  # no jump: 50 + 1 first
    r = step(r, tgt, {"default": READY, "previous": READY}, T0 + 10)
    assert r.split() == {"default": 100}


def test_a_new_version_during_a_ramp_keeps_the_version_with_the_larger_share():
    seen = {"default": READY, "previous": READY}
    r = run(run(None, target("A"), {"default": READY}), target("B", duration=4.0), seen)
    r = step(r, target("B", duration=4.0), seen, T0 + 3)
    assert r.split() == {"default": 67, "previous": 33}
    revised, moves = revise(r, target("C", duration=4.0))  # B carries more than A: B is kept
    assert moves == [("default", "previous")] and revised.previous.revision == "B"
    assert revised.previous.percent == 100 and revised.default == SideTraffic("C")
    early = step(run(None, target("A"), {"default": READY}), target("A"), {"default": READY}, T0)
    r = run(early, target("B", duration=4.0), seen)
    revised, moves = revise(r, target("C", duration=4.0))  # B at 1 %: A is kept, B replaced in place
    assert moves == [] and revised.previous.revision == "A" and revised.previous.percent == 100


def test_a_version_replacing_one_that_never_proved_itself_leaves_previous_serving():
    r = run(run(None, target("A"), {"default": READY}), target("B", duration=4.0), {"previous": READY})
    assert r.split() == {"default": 0, "previous": 100}
    revised, moves = revise(r, target("C", duration=4.0))
    assert moves == [] and revised.previous.revision == "A" and revised.default.revision == "C"
    assert step(revised, target("C"), {"previous": READY}, T0).split() == {"default": 0, "previous": 100}


def test_floors_size_each_side_for_its_next_share():
    r = run(run(None, target("A"), {"default": READY}), target("B", duration=4.0), {"default": READY})
    r = step(r, target("B", duration=4.0), {"default": READY, "previous": READY}, T0 + 2)
    assert r.split() == {"default": 34, "previous": 66}
    # The load needs 10 replicas; the default side is sized for its next step (67 %), previous for now.
    assert floors(r, target("B", duration=4.0), 10) == {"default": 7, "previous": 7}
    assert floors(r, target("B", duration=4.0), 0) == {"default": 0, "previous": 0}  # idle: nothing forced


def test_status_round_trip_lets_a_new_leader_go_on():
    tgt = target(canary="B", pct=100, duration=4.0)
    r = run(None, tgt, {"default": READY, "canary": READY})
    r = step(r, tgt, {"default": READY, "canary": READY}, T0 + 2)
    status = {side: side_status(t) for side, t in r.sides().items()}
    status["conditions"] = [{"type": "Released", "reason": r.reason, "lastTransitionTime": rfc3339(r.since)}]
    back = from_status(status)
    assert back is not None and back.split() == r.split() and back.canary.ramp == r.canary.ramp
    # The new leader steps it on from the same start time: the split is the one the old leader would have.
    assert step(back, tgt, {"default": READY, "canary": READY}, T0 + 3).split() == {"default": 33, "canary": 67}
    status["canary"]["percent"] = 90  # does not add up: discarded, as Knative discards a bad annotation
    assert from_status(status) is None
    assert from_status({}) is None
