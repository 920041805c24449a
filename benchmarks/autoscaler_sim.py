"""Autoscaler simulation (no servers): load traces replayed through the collector + KPA decider with a
modelled pod start-up delay, beside a naive "ceil(load/target) every tick" policy.

Prints replica-seconds used and seconds of over-target concurrency per trace and policy.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

from autoscaler.kpa import Decider, DeciderSpec
from autoscaler.metrics import MetricCollector

TARGET = 10.0
TICK = 2.0
STARTUP = 3.0  # seconds from a scale-up decision to a ready pod


def traces(duration: int) -> dict[str, Callable[[float], float]]:
    return {
        "step": lambda t: 5.0 if t < duration / 3 else 60.0,
        "ramp": lambda t: 80.0 * t / duration,
        "spike": lambda t: 100.0 if duration / 2 <= t < duration / 2 + 15 else 4.0,
        "diurnal": lambda t: 30.0 + 28.0 * math.sin(2 * math.pi * t / duration),
    }


def simulate(load: Callable[[float], float], duration: int, policy: str) -> dict[str, float]:
    decider = Decider(DeciderSpec(target_value=TARGET, total_value=100.0, target_burst_capacity=211.0,
                                  panic_threshold=2.0, stable_window=60.0, scale_to_zero_grace_period=30.0))
    collector = MetricCollector(60.0, 6.0)
    ready = 0
    pending: list[float] = []  # ready times of pods being started
    desired = 0
    replica_seconds = over_target = 0.0
    dt = 0.5
    t = 0.0
    next_tick = 0.0
    while t < duration:
        conc = load(t)
        ready += sum(1 for p in pending if p <= t)
        pending = [p for p in pending if p > t]
        if int(t) != int(t + dt) or t == 0:
            collector.record(t, "sim", concurrency=conc, requests=conc)
        if t >= next_tick:
            next_tick += TICK
            if policy == "kpa":
                s, p = collector.stable_and_panic(t)
                desired = decider.scale(now=t, stable_concurrency=s, panic_concurrency=p,
                                        ready_pods=ready).desired_pod_count
            else:
                desired = math.ceil(conc / TARGET)
            have = ready + len(pending)
            if desired > have:
                pending += [t + STARTUP] * (desired - have)
            elif desired < have:
                drop = have - desired
                cut = min(drop, len(pending))
                pending = pending[cut:]
                ready -= drop - cut
        replica_seconds += (ready + len(pending)) * dt
        if conc > max(ready, 0) * TARGET:
            over_target += dt
        t += dt
    return {"replica_seconds": round(replica_seconds, 1), "over_target_seconds": round(over_target, 1)}


def run(quick: bool = False) -> dict:
    duration = 300 if quick else 1200
    out = {}
    for name, load in traces(duration).items():
        kpa, naive = simulate(load, duration, "kpa"), simulate(load, duration, "naive")
        out[name] = {"kpa": kpa, "naive": naive,
                     "replica_seconds_ratio": round(kpa["replica_seconds"] / max(1.0, naive["replica_seconds"]), 3)}
    return out


def main() -> int:
    res = run(quick="--quick" in sys.argv)
    print(f"{'trace':10} {'policy':6} {'replica-s':>10} {'over-target s':>14}")
    for name, r in res.items():
        for pol in ("kpa", "naive"):
            print(f"{name:10} {pol:6} {r[pol]['replica_seconds']:>10} {r[pol]['over_target_seconds']:>14}")
        print(f"{name:10} ratio  {r['replica_seconds_ratio']:>10} (kpa / naive replica-seconds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
