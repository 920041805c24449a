"""Autoscaler simulation, no servers: load traces -> simulated HA activators' reports -> metrics + kpa.
Data flow: trace -> MetricCollector -> Decider (or a naive policy) -> modelled pods with a start-up delay.

Each trace gives the offered concurrency over time (requests in flight that the service should carry).
Two activators report every second, each its share of the load, as the real ones do; the policy
decides every 2 s (Knative's tick); a new pod is ready STARTUP seconds after the decision; removed
pods go at once (starting ones first). Per policy we count:

- replica_seconds: pods allocated (starting or ready) integrated over time — the cost;
- over_target_seconds: time during which load > ready pods * target (including waits at zero);
- excess_concurrency_seconds: the integral of max(0, load - ready * target) — how far over;
- cold_wait_seconds: time with load and no ready pod; peak_replicas; scale_changes.

Policies: `kpa` (target 10 per pod, utilization 100%), `kpa_util70` (Knative's default 70%
utilization: target 7, more headroom) and `naive` (ceil(last second's load / 10) every tick, to zero
at once). The load is an open model: it does not grow when pods are short (no queueing feedback).
Every trace runs smooth and `_noisy` (seeded Poisson-like noise per second), where the naive policy
flaps: it scales down on every dip and then waits STARTUP seconds for the next bump.

`python -m benchmarks.autoscaler_sim [--quick]` prints a table; `run(quick)` returns the numbers.
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autoscaler.kpa import Decider, DeciderSpec
from autoscaler.metrics import MetricCollector
from benchmarks.stats import fmt, summarize

TARGET = 10.0  # concurrency per pod the service should not exceed
TICK = 2  # seconds between decisions
STARTUP = 5.0  # seconds from a scale-up decision to a ready pod
SUBSTEPS = 4  # load samples per second
ACTIVATOR_SHARES = (0.6, 0.4)  # two HA activators, unevenly loaded
POLICIES = ("kpa", "kpa_util70", "naive")

Trace = Callable[[float], float]


def traces(duration: int) -> dict[str, Trace]:
    third, half = duration / 3, duration / 2

    def step(t: float) -> float:
        return 60.0 if third <= t < 2 * third else 5.0

    def ramp(t: float) -> float:
        return 100.0 * (t / half if t < half else max(0.0, 2.0 - t / half))

    def spike(t: float) -> float:
        return 120.0 if half <= t < half + 20 else 4.0

    def diurnal(t: float) -> float:
        return 30.0 + 28.0 * math.sin(2 * math.pi * t / duration)

    def bursty(t: float) -> float:  # idle with short bursts: scale to zero and back
        return 30.0 if t % 150 < 10 else 0.0

    return {"step": step, "ramp": ramp, "spike": spike, "diurnal": diurnal, "bursty": bursty}


def noisy(mean: Trace, duration: int, seed: int) -> Trace:
    """`mean` plus, each second, Gaussian noise of standard deviation sqrt(mean) (Poisson-like
    arrivals), fixed by `seed` so every policy sees the same load."""
    rng = random.Random(seed)
    noise = [rng.gauss(0.0, 1.0) for _ in range(duration + 1)]

    def load(t: float) -> float:
        m = mean(t)
        return max(0.0, m + noise[int(t)] * math.sqrt(m))

    return load


@dataclass
class Pods:
    ready: int = 0
    starting: list[float] = field(default_factory=list)  # ready times

    @property
    def allocated(self) -> int:
        return self.ready + len(self.starting)

    def promote(self, t: float) -> None:
        done = [p for p in self.starting if p <= t]
        if done:
            self.ready += len(done)
            self.starting = [p for p in self.starting if p > t]

    def scale(self, t: float, desired: int) -> None:
        have = self.allocated
        if desired > have:
            self.starting += [t + STARTUP] * (desired - have)
        elif desired < have:
            drop = have - desired
            cut = min(drop, len(self.starting))
            if cut:
                self.starting = self.starting[: len(self.starting) - cut]
            self.ready -= drop - cut


def _decider(target_value: float) -> Decider:
    return Decider(DeciderSpec(
        target_value=target_value, total_value=100.0, target_burst_capacity=211.0, panic_threshold=2.0,
        max_scale_up_rate=1000.0, max_scale_down_rate=2.0, stable_window=60.0,
        scale_to_zero_grace_period=30.0, min_scale=0, max_scale=0))


def simulate(load: Trace, duration: int, policy: str,
             timeline: list[tuple[int, float, int]] | None = None) -> dict[str, float]:
    """Run one policy over one trace; `timeline`, when given, receives (second, load, ready pods)."""
    decider = _decider(TARGET * 0.7 if policy == "kpa_util70" else TARGET)
    collector = MetricCollector(stable_window=60.0, panic_window=6.0)
    pods = Pods()
    desired = 0
    replica_s = over_s = excess = cold_s = 0.0
    peak = changes = 0
    dt = 1.0 / SUBSTEPS
    for sec in range(duration):
        second_load = 0.0
        for sub in range(SUBSTEPS):
            t = sec + sub * dt
            pods.promote(t)
            conc = load(t)
            second_load += conc / SUBSTEPS
            replica_s += pods.allocated * dt
            short = conc - pods.ready * TARGET
            if short > 1e-9:
                over_s += dt
                excess += short * dt
                if pods.ready == 0:
                    cold_s += dt
        now = float(sec + 1)
        if timeline is not None:
            timeline.append((sec, second_load, pods.ready))
        for i, share in enumerate(ACTIVATOR_SHARES):
            collector.record(now, f"activator-{i}", concurrency=second_load * share,
                             requests=second_load * share)
        if (sec + 1) % TICK:
            continue
        pods.promote(now)
        if policy == "naive":
            want = math.ceil(round(second_load, 9) / TARGET)
        else:
            stable, panic = collector.stable_and_panic(now)
            want = decider.scale(now=now, stable_concurrency=stable, panic_concurrency=panic,
                                 ready_pods=pods.ready).desired_pod_count
        if want != desired:
            changes += 1
            desired = want
        pods.scale(now, desired)
        peak = max(peak, pods.allocated)
    return {"replica_seconds": round(replica_s, 1), "over_target_seconds": round(over_s, 2),
            "excess_concurrency_seconds": round(excess, 1), "cold_wait_seconds": round(cold_s, 2),
            "peak_replicas": peak, "scale_changes": changes}


def run(quick: bool = False) -> dict[str, Any]:
    """Every trace under every policy; `quick` shortens the traces (600 s instead of 1800 s)."""
    duration = 600 if quick else 1800
    out: dict[str, Any] = {"params": {"duration_s": duration, "target": TARGET, "startup_s": STARTUP,
                                      "tick_s": TICK, "stable_window_s": 60.0, "panic_window_s": 6.0,
                                      "grace_s": 30.0}}
    for i, (name, mean) in enumerate(traces(duration).items()):
        out[name] = _compare([mean], duration)
        # Noise differs per seed: three seeds, each figure their median with min-max.
        out[f"{name}_noisy"] = _compare([noisy(mean, duration, seed=s * 1000 + i) for s in (1, 2, 3)], duration)
    out["charts"] = [_timeline_chart(noisy(traces(duration)["bursty"], duration, seed=1004), duration, "bursty_noisy"),
                     _timeline_chart(noisy(traces(duration)["step"], duration, seed=1000), duration, "step_noisy")]
    return out


def _compare(loads: list[Trace], duration: int) -> dict[str, Any]:
    """Every policy over the same load(s); with several loads (noise seeds) each figure is summarized."""
    runs = [{p: simulate(load, duration, p) for p in POLICIES} for load in loads]
    for r in runs:
        r["kpa_vs_naive_replica_seconds"] = round(r["kpa"]["replica_seconds"] / max(1.0, r["naive"]["replica_seconds"]), 3)
    if len(runs) == 1:
        return runs[0]
    res: dict[str, Any] = {p: {k: summarize([r[p][k] for r in runs]) for k in runs[0][p]} for p in POLICIES}
    res["kpa_vs_naive_replica_seconds"] = summarize([r["kpa_vs_naive_replica_seconds"] for r in runs])
    return res


def _timeline_chart(load: Trace, duration: int, name: str) -> dict[str, Any]:
    """Load (in pods' worth of target concurrency) and ready pods over time, KPA vs naive."""
    series: dict[str, list[list[float]]] = {}
    for policy in ("kpa", "naive"):
        tl: list[tuple[int, float, int]] = []
        simulate(load, duration, policy, tl)
        series[f"{policy}: ready pods"] = [[t, ready] for t, _, ready in tl]
        series["load / target"] = [[t, round(conc / TARGET, 3)] for t, conc, _ in tl]
    return {"name": f"autoscaler-{name.replace('_', '-')}", "kind": "step",
            "title": f"KPA vs naive on the {name} trace: ready pods against load",
            "xlabel": "seconds", "ylabel": "pods (load as pods' worth at target)", "series": series}


COLUMNS = (("replica_seconds", "replica-s"), ("over_target_seconds", "over-target s"),
           ("excess_concurrency_seconds", "excess conc-s"), ("cold_wait_seconds", "cold wait s"),
           ("peak_replicas", "peak"), ("scale_changes", "changes"))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    res = run(quick="--quick" in args)
    p = res["params"]
    print(f"trace {p['duration_s']} s, target {p['target']:g}/pod, start-up {p['startup_s']:g} s, "
          f"tick {p['tick_s']} s, windows {p['stable_window_s']:g}/{p['panic_window_s']:g} s, "
          f"grace {p['grace_s']:g} s")
    header = f"{'trace':14} {'policy':11}" + "".join(f" {title:>14}" for _, title in COLUMNS)
    print(header)
    print("-" * len(header))
    for name, r in res.items():
        if name in ("params", "charts"):
            continue
        for pol in POLICIES:
            print(f"{name:14} {pol:11}" + "".join(f" {fmt(r[pol][key]):>14}" for key, _ in COLUMNS))
        print(f"{name:14} {'kpa/naive':11} {fmt(r['kpa_vs_naive_replica_seconds']):>14} (replica-seconds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
