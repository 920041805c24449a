"""Releases: which share of a service's traffic each side takes now. Pure logic, no I/O and no clock.

Data flow: spec (controller.apply) -> `revise` (which version each side runs) -> platform moves;
then on every change and at every step time: observed readiness + now -> `step` -> the split in force
-> controller -> routes (activators) and status. Whichever controller leads recomputes the same split
from the spec, the platform and the last release it wrote to status (`from_status`), as Knative's
route reconciler does from its rollout annotation (knative/serving pkg/reconciler/route/traffic/rollout.go).

Sides: `default` and `canary` as in the spec; `previous` is the outgoing default version while a
default version change moves traffic over (only on platforms that can run both: `Target.keep_previous`).

Rules:
 1. A side takes traffic only once its revision has proven it can serve: a ready replica now, or one
    since it was deployed and no failure since (a proven side at zero keeps its share and is woken on
    demand). `default` is the fallback and always takes what no other side can. (Knative routes only to
    Ready revisions.)
 2. A default version change keeps the outgoing version as `previous` with the default share until the
    new one is proven; the new version then ramps up. A promotion (the canary's revision becomes the
    default) hands the canary's replicas, share and proof to `default`. One outgoing version at most: a
    change during a ramp keeps the version with the larger share and gives it the other's share.
 3. Lowering a share applies at once (traffic goes to a proven side); raising one ramps when the
    duration is positive: +1 point first, then equal steps until the target (Knative's
    computeProperties, with the first step measured at MIN_STEP_SECONDS).
 4. Without a duration a change applies at once, still gated by rule 1.
"""

from __future__ import annotations

import calendar
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

SideName = Literal["default", "canary", "previous"]
ORDER: tuple[SideName, ...] = ("default", "canary", "previous")
# Knative stamps how long the ingress took to apply the first 1 % (at least 1 s) and spreads the rest of
# the duration over equal steps; our activators apply a route well within that second, so it is fixed.
MIN_STEP_SECONDS = 1.0
# Step times are sums of floats over wall times near 1.7e9 s (0.2 us apart): a microsecond early is on time.
_EPSILON = 1e-6

AT_TARGET, ROLLING_OUT = "AtTarget", "RollingOut"
CANARY_NOT_READY, DEFAULT_NOT_READY = "CanaryNotReady", "DefaultNotReady"


@dataclass(frozen=True)
class Target:
    """What the spec asks for."""

    default: str  # revision of spec.default
    canary: str | None = None  # revision of spec.canary
    canary_percent: int = 0
    duration: float = 0.0  # spec.rolloutDuration in seconds; 0: at once
    keep_previous: bool = False  # the platform can keep the outgoing default version beside the new one
    names: Mapping[str, str] = field(default_factory=dict)  # revision -> how to name it in messages


@dataclass(frozen=True)
class Observed:
    """What the platform reports of one side now."""

    ready: int = 0
    error: str | None = None


@dataclass(frozen=True)
class Ramp:
    """A share moving from `start_percent` to `target` over `duration` seconds from `start`."""

    start: float  # wall time of the first step (+1 point)
    start_percent: int
    target: int
    duration: float

    @property
    def plan(self) -> tuple[int, float]:
        """(step size in points, seconds between steps) after the first +1, as Knative computes them:
        the duration less the first step, in at most one step per point left."""
        left = self.target - self.start_percent - 1
        spread = max(1.0, self.duration - MIN_STEP_SECONDS)
        steps = max(1.0, min(spread / MIN_STEP_SECONDS, float(left)))
        # Rounded half up: rounding 1.9 down to 1 would nearly double the rollout (Knative's note).
        return max(1, math.floor(left / steps + 0.5)), spread / steps

    def steps_done(self, now: float) -> int:
        _, seconds = self.plan
        first = self.start + MIN_STEP_SECONDS  # the +1 holds for this long, then one step more
        return max(0, math.floor((now - first + _EPSILON) / seconds))

    def percent_at(self, now: float) -> int:
        size, _ = self.plan
        return min(self.target, self.start_percent + 1 + self.steps_done(now) * size)

    def next_step(self, now: float) -> float | None:
        """When the share changes next (None: it is at its target)."""
        if self.percent_at(now) >= self.target:
            return None
        _, seconds = self.plan
        return self.start + MIN_STEP_SECONDS + (self.steps_done(now) + 1) * seconds


@dataclass(frozen=True)
class SideTraffic:
    """One side in the release: its revision, its share in force and whether it has proven itself."""

    revision: str
    percent: int = 0
    ready: bool = False  # proven: a ready replica of this revision, and no failure since
    ramp: Ramp | None = None
    error: str | None = None  # the platform's reason while it has no ready replica


@dataclass(frozen=True)
class Release:
    """The split in force and why (`reason`, since `since`); `next_step`: when `step` must run again."""

    default: SideTraffic
    canary: SideTraffic | None = None
    previous: SideTraffic | None = None
    reason: str = AT_TARGET
    message: str = ""
    since: float = 0.0
    next_step: float | None = None

    def sides(self) -> dict[SideName, SideTraffic]:
        every: dict[SideName, SideTraffic | None] = {"default": self.default, "canary": self.canary,
                                                     "previous": self.previous}
        return {side: t for side, t in every.items() if t is not None}

    def split(self) -> dict[SideName, int]:
        return {side: t.percent for side, t in self.sides().items()}


# ---- revise: the spec changed ------------------------------------------------------------------
Move = tuple[SideName, SideName]  # the platform hands the replicas of side A to side B


def revise(prev: Release | None, target: Target) -> tuple[Release, list[Move]]:
    """Which revision each side runs after a spec change, and the platform moves that keep replicas
    running (before the platform applies the spec). Shares carry over; `step` then gates and ramps."""
    if prev is None:
        canary = SideTraffic(target.canary) if target.canary else None
        return Release(default=SideTraffic(target.default, percent=100), canary=canary), []
    default, canary, previous = prev.default, prev.canary, prev.previous
    moves: list[Move] = []
    if default.revision != target.default:
        promoted = (target.keep_previous and canary is not None and canary.revision == target.default
                    and target.canary != canary.revision)
        if target.keep_previous and default.ready:
            # Rule 2: the outgoing version goes on serving its share; one outgoing version at most.
            if previous is None or default.percent > previous.percent:
                moves.append(("default", "previous"))
                carried = previous.percent if previous else 0
                previous = replace(default, percent=default.percent + carried, ramp=None)
            else:
                previous = replace(previous, percent=previous.percent + default.percent)
            default_share = 0
        else:
            # Replaced in place: the platform keeps the old replicas until new ones are ready. With an
            # outgoing version kept, the one on its way in never proved itself (it has no traffic).
            default_share = default.percent
        if promoted:
            assert canary is not None
            moves.append(("canary", "default"))
            default = replace(canary, percent=default_share + canary.percent, ramp=None)
            canary = None
        else:
            default = SideTraffic(target.default, percent=default_share)
    if target.canary is None:
        if canary is not None:
            default = replace(default, percent=default.percent + canary.percent)
        canary = None
    elif canary is None or canary.revision != target.canary:
        # A new canary, or a new canary version replacing the old in place: it proves itself again.
        canary = SideTraffic(target.canary, percent=canary.percent if canary else 0)
    return replace(prev, default=default, canary=canary, previous=previous), moves


# ---- step: readiness and time ------------------------------------------------------------------
def _proven(t: SideTraffic, seen: Observed) -> SideTraffic:
    """Rule 1, for one side."""
    ready = seen.ready > 0 or (t.ready and seen.error is None)
    return replace(t, ready=ready, error=None if seen.ready > 0 else seen.error)


def _approach(current: int, ramp: Ramp | None, goal: int, duration: float, now: float) -> tuple[int, Ramp | None]:
    """Rule 3: the share in force on the way from `current` to `goal`."""
    if goal <= current or duration <= 0:
        return goal, None  # lower at once; or no ramp asked for
    if ramp is not None and ramp.duration == duration and goal <= ramp.target:
        # The same ramp goes on; a goal lowered under way caps it (Knative's adjustPercentage).
        share = min(goal, ramp.percent_at(now))
    else:
        ramp = Ramp(start=now, start_percent=current, target=goal, duration=duration)
        share = ramp.percent_at(now)
    return (goal, None) if share >= goal else (share, ramp)


def step(prev: Release, target: Target, observed: Mapping[str, Observed], now: float) -> Release:
    """The split in force at `now`, from the revised release, the target and each side's readiness."""
    seen = {side: observed.get(side, Observed()) for side in ORDER}
    default = _proven(prev.default, seen["default"])
    canary = _proven(prev.canary, seen["canary"]) if prev.canary else None
    previous = _proven(prev.previous, seen["previous"]) if prev.previous else None

    canary_share = 0
    if canary is not None:
        if canary.ready:
            canary_share, ramp = _approach(canary.percent, canary.ramp, target.canary_percent, target.duration, now)
        else:
            ramp = None  # rule 1: its share stays on default; once proven it starts from 0 again
        canary = replace(canary, percent=canary_share, ramp=ramp)
    share = 100 - canary_share  # what default and previous carry together
    if previous is not None and not default.ready:
        default = replace(default, percent=0, ramp=None)
        previous = replace(previous, percent=share)
    elif previous is not None and previous.ready:
        pct, ramp = _approach(default.percent, default.ramp, share, target.duration, now)
        default = replace(default, percent=pct, ramp=ramp)
        previous = replace(previous, percent=share - pct, ramp=None) if pct < share else None
    else:  # no outgoing version, or it can no longer serve: the new one takes everything
        default, previous = replace(default, percent=share, ramp=None), None

    release = Release(default=default, canary=canary, previous=previous)
    reason, message = _why(release, target)
    ramps = [t.ramp.next_step(now) for t in release.sides().values() if t.ramp is not None]
    return replace(release, reason=reason, message=message,
                   since=prev.since if prev.reason == reason and prev.since else now,
                   next_step=min((t for t in ramps if t is not None), default=None))


def _why(r: Release, target: Target) -> tuple[str, str]:
    def name(t: SideTraffic) -> str:
        return target.names.get(t.revision, t.revision)

    if r.canary is not None and not r.canary.ready and target.canary_percent > 0:
        return CANARY_NOT_READY, (f"canary {name(r.canary)} has no ready replica ({r.canary.error or 'starting'}): "
                                  f"its {target.canary_percent}% stays on default")
    if r.previous is not None and not r.default.ready:
        return DEFAULT_NOT_READY, (f"default {name(r.default)} has no ready replica ({r.default.error or 'starting'}): "
                                   f"traffic stays on the previous version {name(r.previous)}")
    moving = []
    for side, t in r.sides().items():
        if t.ramp is not None:
            size, seconds = t.ramp.plan
            moving.append(f"{side} {name(t)} at {t.percent}% on its way to {t.ramp.target}% "
                          f"(+{size}% every {seconds:g}s)")
    if moving:
        return ROLLING_OUT, "; ".join(moving)
    return AT_TARGET, ", ".join(f"{side} {t.percent}%" for side, t in r.sides().items())


# ---- sizing --------------------------------------------------------------------------------------
def floors(release: Release, target: Target, demand: int) -> dict[SideName, int]:
    """Replicas each side needs at least, whatever its own load says.

    - A side that must prove itself before it takes traffic gets one replica (Knative's initial scale):
      a canary with a positive target share, a new default version waiting beside the previous one.
      A canary at 0 % is not started: its tag route starts it on demand.
    - While shares move, each side gets its share of `demand` (the replicas the service's whole load
      needs), the growing side at the share of its *next* step: its replicas are started one step
      ahead, so a step never lands on a side that is still cold.
    """
    out: dict[SideName, int] = {}
    if release.canary is not None and not release.canary.ready and target.canary_percent > 0:
        out["canary"] = 1
    if release.previous is not None and not release.default.ready:
        out["default"] = 1
    if release.next_step is not None:
        for side, t in release.sides().items():
            share = max(t.percent, t.ramp.percent_at(release.next_step) if t.ramp else 0)
            out[side] = max(out.get(side, 0), math.ceil(demand * share / 100))
    return out


# ---- status --------------------------------------------------------------------------------------
def rfc3339(t: float) -> str:
    """Wall time as RFC 3339 with milliseconds (step times are sub-second)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def parse_rfc3339(text: str) -> float:
    base, _, frac = text.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + (float("0." + frac) if frac else 0.0)


def side_status(t: SideTraffic) -> dict[str, Any]:
    """The release fields of one side in status (`ready`: proven, see rule 1)."""
    out: dict[str, Any] = {"revision": t.revision, "percent": t.percent, "ready": t.ready}
    if t.ramp is not None:
        size, seconds = t.ramp.plan
        out["rollout"] = {"fromPercent": t.ramp.start_percent, "toPercent": t.ramp.target,
                          "startTime": rfc3339(t.ramp.start), "durationSeconds": t.ramp.duration,
                          "stepPercent": size, "stepSeconds": round(seconds, 3)}
    return out


def from_status(status: Mapping[str, Any]) -> Release | None:
    """The release a previous controller wrote to status, to go on from; None when there is none or it
    does not add up (as Knative discards a rollout annotation that fails Validate)."""
    try:
        sides: dict[str, SideTraffic] = {}
        for side in ORDER:
            s = status.get(side)
            if not isinstance(s, Mapping) or "revision" not in s or "percent" not in s:
                continue
            ramp = None
            ro = s.get("rollout")
            if isinstance(ro, Mapping):
                ramp = Ramp(start=parse_rfc3339(str(ro["startTime"])), start_percent=int(ro["fromPercent"]),
                            target=int(ro["toPercent"]), duration=float(ro["durationSeconds"]))
            sides[side] = SideTraffic(revision=str(s["revision"]), percent=int(s["percent"]),
                                      ready=bool(s.get("ready")), ramp=ramp)
        if "default" not in sides or sum(t.percent for t in sides.values()) != 100 \
                or any(not 0 <= t.percent <= 100 for t in sides.values()):
            return None
        cond = next((c for c in status.get("conditions") or [] if c.get("type") == RELEASED), {})
        reason = str(cond.get("reason") or AT_TARGET)
        since = parse_rfc3339(str(cond["lastTransitionTime"])) if cond.get("lastTransitionTime") else 0.0
        return Release(default=sides["default"], canary=sides.get("canary"), previous=sides.get("previous"),
                       reason=reason, since=since)
    except (KeyError, TypeError, ValueError):
        return None


RELEASED = "Released"  # the status condition: True when the split in force is the spec's


__all__ = ["Observed", "Ramp", "Release", "SideTraffic", "Target", "floors", "from_status", "revise", "step"]
