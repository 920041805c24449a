"""The KPA scaling decider: (stable, panic load, ready pods, time) -> desired pods of a service side.
Data flow: activator stats -> metrics (window averages) -> kpa.Decider -> controller -> platform."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autoscaler.spec import AutoscalingConfig, parse_duration

# Pure logic, no I/O and no clock: the controller calls `Decider.scale` every tick with the time and the
# window averages. The behaviour follows Knative Serving's autoscaler (pkg/autoscaler/scaling, `Scale`)
# plus the part of its KPA reconciler (pkg/reconciler/autoscaling/kpa/scaler.go) that applies the
# min/max bounds and holds the last pod for the scale-to-zero grace period:
#
# 1. desired stable / panic pod counts are ceil(load / target_value), each clamped to
#    [floor(ready / max_scale_down_rate) (0 when unreachable), ceil(max_scale_up_rate * ready)],
#    with ready = max(1, ready_pods) so a side at zero can scale up;
# 2. panic mode starts, and its start time is refreshed, at every tick where
#    ceil(panic / target_value) / ready >= panic_threshold; it ends at the first tick below the
#    threshold once more than stable_window has passed since the last tick above it. In panic the
#    result is max(stable, panic) and never lower than the highest panic result so far;
# 3. excess burst capacity = floor(ready_pods * total_value - target_burst_capacity - panic load)
#    (ready_pods as observed, 0 allowed); -1 when target_burst_capacity is -1 (activator always in
#    the path), 0 when it is 0 (activator only at zero);
# 4. bounds: min_scale <= result <= max_scale (max_scale 0 = unbounded);
# 5. scale to zero: with ready pods, 0 is returned only once scale_to_zero_grace_period has passed
#    since the last tick with stable load > 0 (or since the first tick), 1 until then; with no ready
#    pods a 0 stands.

# Knative config-autoscaler defaults (pkg/autoscaler/config/config.go).
DEFAULT_MAX_SCALE_UP_RATE = 1000.0
DEFAULT_MAX_SCALE_DOWN_RATE = 2.0
DEFAULT_TARGET_BURST_CAPACITY = 211.0
DEFAULT_SCALE_TO_ZERO_GRACE = 30.0
DEFAULT_ACTIVATOR_CAPACITY = 100.0
# autoscaling.TargetMin: no per-pod target below this.
TARGET_MIN = 0.01


def _float(d: Mapping[str, Any], key: str, default: float) -> float:
    value = d.get(key, default)
    try:
        return float(str(value).strip())
    except ValueError:
        raise ValueError(f"{key}: {value!r} is not a number") from None


def _seconds(d: Mapping[str, Any], key: str, default: float) -> float:
    """A config-map duration: `30s`, `1m` or a bare number of seconds."""
    value = d.get(key, default)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        try:
            return parse_duration(text)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None


def _bool(value: Any) -> bool:
    return str(value).strip().lower() not in ("false", "0", "no", "off")


@dataclass(frozen=True)
class DeciderSpec:
    """Everything the decider needs for one service side (Knative's DeciderSpec + scale bounds)."""

    target_value: float  # per-pod target: target * target utilization
    total_value: float  # per-pod capacity: containerConcurrency, or the activator capacity
    target_burst_capacity: float  # -1: activator always in the path; 0: only at zero
    panic_threshold: float  # fraction: 2.0 = 200%
    max_scale_up_rate: float = DEFAULT_MAX_SCALE_UP_RATE
    max_scale_down_rate: float = DEFAULT_MAX_SCALE_DOWN_RATE
    stable_window: float = 60.0  # seconds
    scale_to_zero_grace_period: float = DEFAULT_SCALE_TO_ZERO_GRACE  # seconds
    min_scale: int = 0
    max_scale: int = 0  # 0 = unbounded
    reachable: bool = True

    def __post_init__(self) -> None:
        if not self.target_value > 0:
            raise ValueError(f"target_value must be positive, got {self.target_value}")
        if not self.max_scale_up_rate > 0 or not self.max_scale_down_rate > 0:
            raise ValueError("max_scale_up_rate and max_scale_down_rate must be positive")
        if self.min_scale < 0 or self.max_scale < 0:
            raise ValueError("min_scale and max_scale must be >= 0")

    @classmethod
    def from_config(
        cls,
        cfg: AutoscalingConfig,
        container_concurrency: int | Mapping[str, Any] | None = None,
        defaults: Mapping[str, Any] | None = None,
        *,
        reachable: bool = True,
    ) -> DeciderSpec:
        """Build from a PaddleService's effective autoscaling settings and the cluster defaults.

        `container_concurrency` overrides `cfg.container_concurrency` when given (0 = unlimited).
        `defaults` holds keys of Knative's config-autoscaler: `max-scale-up-rate`,
        `max-scale-down-rate`, `target-burst-capacity`, `scale-to-zero-grace-period` (`30s` or
        seconds), `activator-capacity`, `enable-scale-to-zero` (false keeps one pod).
        For compatibility `from_config(cfg, defaults)` (a mapping as second argument) also works.

        Target and capacity, as Knative's ResolveMetricTarget:
        - concurrency: per-pod target = min(target, containerConcurrency) * utilization when
          containerConcurrency is set, else target * utilization; total_value =
          containerConcurrency, or `activator-capacity` when it is 0 (unlimited);
        - rps: per-pod target = target * utilization and total_value = target (requests per
          second do not compare with a concurrency capacity, so Knative takes the rps target).
        """
        if isinstance(container_concurrency, Mapping):
            if defaults is not None:
                raise TypeError("defaults given twice")
            container_concurrency, defaults = None, container_concurrency
        d = defaults or {}
        cc = cfg.container_concurrency if container_concurrency is None else int(container_concurrency)
        if cc < 0:
            raise ValueError(f"container_concurrency must be >= 0, got {cc}")

        if cfg.metric == "rps":
            total = cfg.target
            target = cfg.target * cfg.target_utilization
        else:
            per_pod = min(cfg.target, float(cc)) if cc > 0 else cfg.target
            target = per_pod * cfg.target_utilization
            total = float(cc) if cc > 0 else _float(d, "activator-capacity", DEFAULT_ACTIVATOR_CAPACITY)

        min_scale = cfg.min_scale if _bool(d.get("enable-scale-to-zero", True)) else max(cfg.min_scale, 1)
        return cls(
            target_value=max(TARGET_MIN, target),
            total_value=total,
            target_burst_capacity=_float(d, "target-burst-capacity", DEFAULT_TARGET_BURST_CAPACITY),
            panic_threshold=cfg.panic_threshold,
            max_scale_up_rate=_float(d, "max-scale-up-rate", DEFAULT_MAX_SCALE_UP_RATE),
            max_scale_down_rate=_float(d, "max-scale-down-rate", DEFAULT_MAX_SCALE_DOWN_RATE),
            stable_window=cfg.stable_window,
            scale_to_zero_grace_period=_seconds(d, "scale-to-zero-grace-period", DEFAULT_SCALE_TO_ZERO_GRACE),
            min_scale=min_scale,
            max_scale=cfg.max_scale,
            reachable=reachable,
        )


@dataclass(frozen=True)
class ScaleResult:
    """One decision. `desired_stable` / `desired_panic` are the rate-clamped counts before panic
    hold, bounds and the scale-to-zero grace (for metrics and dashboards)."""

    desired_pod_count: int
    excess_burst_capacity: int
    in_panic: bool = False
    desired_stable: int = 0
    desired_panic: int = 0


class Decider:
    """The KPA decider of one service side; keeps panic and activity state between ticks.

    `ready_pods` > 1 at construction starts in panic mode (as Knative does after an autoscaler
    restart), so the lost metric history does not scale a running side down at once; the panic
    time is `now`, or the first tick when `now` is not given.
    """

    def __init__(self, spec: DeciderSpec, *, ready_pods: int = 0, now: float | None = None) -> None:
        self.spec = spec
        restarted = ready_pods > 1
        self.panic_time: float | None = now if restarted else None
        self.max_panic_pods = ready_pods if restarted else 0
        self._panic_at_first_tick = restarted and now is None
        self.last_active: float | None = None  # last tick with stable load > 0, else the first tick

    def update(self, spec: DeciderSpec) -> None:
        """Change the spec live (a config change); panic and activity state carry over."""
        self.spec = spec

    def scale(self, now: float, stable_concurrency: float, panic_concurrency: float,
              ready_pods: int) -> ScaleResult:
        """Decide for the tick at `now` from the window averages (concurrency, or requests per
        second for metric rps) and the number of ready pods."""
        spec = self.spec
        if self.last_active is None:  # the first tick
            self.last_active = now
            if self._panic_at_first_tick:
                self.panic_time = now
        if stable_concurrency > 0:
            self.last_active = now

        ready = float(max(1, ready_pods))
        max_up = math.ceil(spec.max_scale_up_rate * ready)
        max_down = math.floor(ready / spec.max_scale_down_rate) if spec.reachable else 0
        want_stable = math.ceil(stable_concurrency / spec.target_value)
        want_panic = math.ceil(panic_concurrency / spec.target_value)
        desired_stable = int(min(max(want_stable, max_down), max_up))
        desired_panic = int(min(max(want_panic, max_down), max_up))

        # Panic: entered or extended while over the threshold; left at the first tick under it
        # once a whole stable window has passed since the last tick over it.
        if want_panic / ready >= spec.panic_threshold:
            self.panic_time = now
        elif self.panic_time is not None and now - self.panic_time > spec.stable_window:
            self.panic_time = None
            self.max_panic_pods = 0

        if self.panic_time is not None:
            desired = max(desired_stable, desired_panic, self.max_panic_pods)
            self.max_panic_pods = desired  # only increases are applied while panicking
        else:
            desired = desired_stable

        if spec.target_burst_capacity == 0:
            excess = 0
        elif spec.target_burst_capacity < 0:
            excess = -1
        else:
            excess = math.floor(ready_pods * spec.total_value - spec.target_burst_capacity
                                - panic_concurrency)

        # Bounds (the KPA reconciler's applyBounds), then the scale-to-zero grace.
        desired = max(desired, spec.min_scale)
        if spec.max_scale > 0:
            desired = min(desired, spec.max_scale)
        if desired == 0 and ready_pods > 0 and now - self.last_active < spec.scale_to_zero_grace_period:
            desired = 1
        return ScaleResult(desired_pod_count=int(desired), excess_burst_capacity=int(excess),
                           in_panic=self.panic_time is not None, desired_stable=desired_stable,
                           desired_panic=desired_panic)
