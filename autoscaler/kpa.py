"""The Knative-KPA scaling decider: (stable, panic concurrency, ready pods, time) -> desired pods.

Pure logic, no I/O: the controller feeds it window averages from autoscaler.metrics every tick.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from autoscaler.spec import AutoscalingConfig, parse_duration

# Knative config-autoscaler defaults.
DEFAULT_MAX_SCALE_UP_RATE = 1000.0
DEFAULT_MAX_SCALE_DOWN_RATE = 2.0
DEFAULT_TARGET_BURST_CAPACITY = 211.0
DEFAULT_SCALE_TO_ZERO_GRACE = 30.0
DEFAULT_ACTIVATOR_CAPACITY = 100.0


@dataclass(frozen=True)
class DeciderSpec:
    target_value: float
    total_value: float
    target_burst_capacity: float
    panic_threshold: float
    max_scale_up_rate: float = DEFAULT_MAX_SCALE_UP_RATE
    max_scale_down_rate: float = DEFAULT_MAX_SCALE_DOWN_RATE
    stable_window: float = 60.0
    scale_to_zero_grace_period: float = DEFAULT_SCALE_TO_ZERO_GRACE
    min_scale: int = 0
    max_scale: int = 0
    reachable: bool = True

    @classmethod
    def from_config(cls, cfg: AutoscalingConfig, defaults: dict[str, Any] | None = None) -> DeciderSpec:
        """Build from a PaddleService's autoscaling settings and cluster defaults
        (Knative config-autoscaler keys)."""
        d = defaults or {}

        def seconds(key: str, fallback: float) -> float:
            v = d.get(key)
            if v is None:
                return fallback
            return parse_duration(v) if isinstance(v, str) else float(v)

        cc = cfg.container_concurrency
        total = float(cc) if cc > 0 else float(d.get("activator-capacity", DEFAULT_ACTIVATOR_CAPACITY))
        target = cfg.target_per_pod
        if cc > 0:
            target = min(target, cc * cfg.target_utilization)
        return cls(
            target_value=max(target, 0.01),
            total_value=total,
            target_burst_capacity=float(d.get("target-burst-capacity", DEFAULT_TARGET_BURST_CAPACITY)),
            panic_threshold=cfg.panic_threshold,
            max_scale_up_rate=float(d.get("max-scale-up-rate", DEFAULT_MAX_SCALE_UP_RATE)),
            max_scale_down_rate=float(d.get("max-scale-down-rate", DEFAULT_MAX_SCALE_DOWN_RATE)),
            stable_window=cfg.stable_window,
            scale_to_zero_grace_period=seconds("scale-to-zero-grace-period", DEFAULT_SCALE_TO_ZERO_GRACE),
            min_scale=cfg.min_scale,
            max_scale=cfg.max_scale,
        )


@dataclass(frozen=True)
class ScaleResult:
    desired_pod_count: int
    excess_burst_capacity: int
    in_panic: bool = False
    desired_stable: int = 0
    desired_panic: int = 0


class Decider:
    """One decider per service side; keeps panic state and the last activity time between ticks."""

    def __init__(self, spec: DeciderSpec) -> None:
        self.spec = spec
        self.panic_time: float | None = None
        self.max_panic_pods = 0
        self.first_tick: float | None = None
        self.last_active: float | None = None

    def update(self, spec: DeciderSpec) -> None:
        """Change the spec live (config change); panic state carries over."""
        self.spec = replace(spec)

    def scale(self, now: float, stable_concurrency: float, panic_concurrency: float,
              ready_pods: int) -> ScaleResult:
        spec = self.spec
        if self.first_tick is None:
            self.first_tick = now
        if stable_concurrency > 0:
            self.last_active = now
        ready = max(1.0, float(ready_pods))
        max_up = math.ceil(spec.max_scale_up_rate * ready)
        max_down = math.floor(ready / spec.max_scale_down_rate) if spec.reachable else 0
        dspc = math.ceil(stable_concurrency / spec.target_value)
        dppc = math.ceil(panic_concurrency / spec.target_value)
        desired_stable = int(min(max(dspc, max_down), max_up))
        desired_panic = int(min(max(dppc, max_down), max_up))

        over_threshold = dppc / ready >= spec.panic_threshold
        if over_threshold:
            self.panic_time = now
        elif self.panic_time is not None and now - self.panic_time > spec.stable_window:
            self.panic_time = None
            self.max_panic_pods = 0

        in_panic = self.panic_time is not None
        if in_panic:
            desired = max(desired_stable, desired_panic)
            if desired > self.max_panic_pods:
                self.max_panic_pods = desired
            desired = self.max_panic_pods
        else:
            desired = desired_stable

        if spec.target_burst_capacity == 0:
            ebc = 0
        elif spec.target_burst_capacity < 0:
            ebc = -1
        else:
            ebc = int(math.floor(ready_pods * spec.total_value - spec.target_burst_capacity - panic_concurrency))

        desired = max(desired, spec.min_scale)
        if spec.max_scale > 0:
            desired = min(desired, spec.max_scale)

        if desired == 0 and ready_pods > 0:
            since = self.last_active if self.last_active is not None else self.first_tick
            if now - since < spec.scale_to_zero_grace_period:
                desired = 1
        return ScaleResult(desired, ebc, in_panic, desired_stable, desired_panic)
