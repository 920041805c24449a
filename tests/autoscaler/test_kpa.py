"""Unit tests of the KPA decider (autoscaler.kpa): Knative's Scale semantics plus bounds and the
scale-to-zero grace, over scenarios with time passed in and exact numbers asserted."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.kpa import Decider, DeciderSpec, ScaleResult
from autoscaler.spec import PaddleService


def spec(**kw: Any) -> DeciderSpec:
    base: dict[str, Any] = dict(
        target_value=10.0, total_value=100.0, target_burst_capacity=211.0, panic_threshold=2.0,
        max_scale_up_rate=1000.0, max_scale_down_rate=2.0, stable_window=60.0,
        scale_to_zero_grace_period=30.0, min_scale=0, max_scale=0, reachable=True)
    base.update(kw)
    return DeciderSpec(**base)


def tick(d: Decider, now: float, stable: float, panic: float | None = None, ready: int = 1) -> ScaleResult:
    return d.scale(now=now, stable_concurrency=stable,
                   panic_concurrency=stable if panic is None else panic, ready_pods=ready)


def counts(d: Decider, ticks: list[tuple[float, float, float, int]]) -> list[int]:
    return [tick(d, *t).desired_pod_count for t in ticks]


# ---- steady load and step up ------------------------------------------------------------------
def test_steady_load_keeps_the_count():
    d = Decider(spec())
    for t in range(0, 100, 2):
        r = tick(d, t, 50, 50, 5)
        assert (r.desired_pod_count, r.in_panic, r.desired_stable, r.desired_panic) == (5, False, 5, 5)
    assert r.excess_burst_capacity == 5 * 100 - 211 - 50


def test_fractional_load_rounds_up():
    d = Decider(spec())
    assert tick(d, 0, 50.01, 50.01, 5).desired_pod_count == 6
    assert tick(d, 1, 49.99, 49.99, 6).desired_pod_count == 5


def test_step_up_without_panic_follows_stable():
    d = Decider(spec())
    r = tick(d, 0, 15, 15, 2)  # 2 wanted, 2 ready: 2/2 = 1 < 2
    assert (r.desired_pod_count, r.in_panic) == (2, False)
    r = tick(d, 2, 35, 35, 2)
    assert (r.desired_pod_count, r.in_panic) == (4, True)  # ceil(35/10)/2 = 2.0 >= 2.0: panic


# ---- rate limits ------------------------------------------------------------------------------
def test_scale_up_rate_limits_both_stable_and_panic():
    d = Decider(spec(max_scale_up_rate=2.0))
    r = tick(d, 0, 100, 300, 1)
    assert (r.desired_stable, r.desired_panic, r.desired_pod_count, r.in_panic) == (2, 2, 2, True)
    r = tick(d, 1, 100, 300, 2)
    assert (r.desired_stable, r.desired_panic, r.desired_pod_count) == (4, 4, 4)
    r = tick(d, 2, 100, 300, 4)
    assert (r.desired_stable, r.desired_panic, r.desired_pod_count) == (8, 8, 8)


def test_scale_up_rate_is_rounded_up_so_growth_never_stalls():
    d = Decider(spec(max_scale_up_rate=1.1, panic_threshold=10.0))
    # ceil(1.1 * 2) = 3, not floor(2.2) = 2
    assert tick(d, 0, 30, 30, 2).desired_pod_count == 3


def test_scale_down_rate_halves_at_most():
    d = Decider(spec(scale_to_zero_grace_period=0.0))
    assert counts(d, [(0, 0, 0, 10), (2, 0, 0, 5), (4, 0, 0, 2), (6, 0, 0, 1)]) == [5, 2, 1, 0]


def test_scale_down_rate_three():
    d = Decider(spec(max_scale_down_rate=3.0))
    r = tick(d, 0, 10, 10, 10)
    assert (r.desired_stable, r.desired_pod_count) == (3, 3)  # floor(10/3) = 3 >= ceil(10/10)
    r = tick(d, 1, 50, 50, 10)
    assert r.desired_pod_count == 5  # above the floor: no clamp


def test_unreachable_scales_down_without_the_rate_limit():
    reachable, unreachable = Decider(spec()), Decider(spec(reachable=False))
    assert tick(reachable, 0, 20, 20, 10).desired_pod_count == 5
    assert tick(unreachable, 0, 20, 20, 10).desired_pod_count == 2


def test_unreachable_still_holds_the_last_pod_for_the_grace():
    d = Decider(spec(reachable=False, scale_to_zero_grace_period=10.0))
    assert tick(d, 0, 0, 0, 10).desired_pod_count == 1
    assert tick(d, 10, 0, 0, 10).desired_pod_count == 0


# ---- panic mode -------------------------------------------------------------------------------
def test_panic_starts_takes_max_holds_and_exits():
    d = Decider(spec())
    # ceil(40/10) = 4 pods wanted with 1 ready -> 4/1 >= 2: panic
    r = tick(d, 0, 5, 40, 1)
    assert (r.in_panic, r.desired_pod_count, r.desired_stable, r.desired_panic) == (True, 4, 1, 4)
    # load drops inside the stable window since the last panic tick: never below the panic max
    r = tick(d, 10, 5, 5, 4)
    assert (r.in_panic, r.desired_pod_count, r.desired_stable) == (True, 4, 2)
    # refreshed by another over-threshold tick at t=20, and the max grows
    r = tick(d, 20, 10, 90, 4)
    assert (r.in_panic, r.desired_pod_count) == (True, 9)
    # exactly stable_window after the last panic tick: still panicking (strictly more is needed)
    r = tick(d, 80, 10, 10, 9)
    assert (r.in_panic, r.desired_pod_count) == (True, 9)
    r = tick(d, 80.5, 10, 10, 9)
    assert (r.in_panic, r.desired_pod_count) == (False, 4)  # stable 1, halving: floor(9/2)


def test_panic_threshold_is_inclusive():
    d = Decider(spec(panic_threshold=2.0))
    assert tick(d, 0, 10, 30, 2).in_panic is False  # 3/2 = 1.5
    assert tick(d, 1, 10, 31, 2).in_panic is True  # ceil(3.1) = 4, 4/2 = 2.0


def test_panic_uses_unclamped_want_and_one_for_zero_ready():
    d = Decider(spec(max_scale_up_rate=2.0))
    r = tick(d, 0, 0, 25, 0)  # 3 wanted, ready taken as 1 -> 3 >= 2, result clamped to ceil(2*1)
    assert (r.in_panic, r.desired_pod_count) == (True, 2)


def test_in_panic_a_larger_stable_wins():
    d = Decider(spec())
    tick(d, 0, 0, 30, 1)
    r = tick(d, 1, 70, 10, 3)
    assert (r.in_panic, r.desired_pod_count) == (True, 7)


def test_panic_exit_needs_a_calm_tick():
    d = Decider(spec(stable_window=10.0))
    tick(d, 0, 0, 30, 1)
    # still over the threshold long after: panic is extended every tick
    assert tick(d, 100, 0, 90, 3).in_panic is True
    assert tick(d, 111, 0, 10, 9).in_panic is False


def test_exit_resets_the_panic_maximum():
    d = Decider(spec(stable_window=10.0))
    assert tick(d, 0, 0, 80, 1).desired_pod_count == 8
    r = tick(d, 11, 20, 20, 8)
    assert (r.in_panic, r.desired_pod_count) == (False, 4)
    r = tick(d, 12, 20, 60, 2)  # panics again: the max restarts from this tick's result
    assert (r.in_panic, r.desired_pod_count) == (True, 6)


def test_new_decider_with_ready_pods_starts_in_panic():
    d = Decider(spec(stable_window=10.0), ready_pods=6, now=0.0)
    r = tick(d, 1, 0, 0, 6)
    assert (r.in_panic, r.desired_pod_count) == (True, 6)
    r = tick(d, 10.5, 0, 0, 6)
    assert (r.in_panic, r.desired_pod_count) == (False, 3)
    lazy = Decider(spec(stable_window=10.0), ready_pods=4)
    assert tick(lazy, 100, 0, 0, 4).desired_pod_count == 4
    assert tick(lazy, 110, 0, 0, 4).desired_pod_count == 4
    assert tick(lazy, 110.5, 0, 0, 4).desired_pod_count == 2
    single = Decider(spec(), ready_pods=1)
    assert tick(single, 0, 0, 0, 1).in_panic is False


# ---- bounds -----------------------------------------------------------------------------------
def test_min_and_max_scale():
    d = Decider(spec(min_scale=2, max_scale=4))
    r = tick(d, 0, 0, 0, 0)
    assert (r.desired_pod_count, r.desired_stable) == (2, 0)
    r = tick(d, 1, 500, 500, 2)
    assert (r.desired_pod_count, r.desired_stable, r.in_panic) == (4, 50, True)
    assert tick(d, 2, 25, 25, 4).desired_pod_count == 4  # panic max 50 held, capped at 4


def test_max_scale_zero_is_unbounded():
    d = Decider(spec(max_scale=0, panic_threshold=1000.0))
    assert tick(d, 0, 12345, 12345, 20).desired_pod_count == 1235


# ---- scale to zero ----------------------------------------------------------------------------
def test_scale_to_zero_waits_for_the_grace_since_last_activity():
    d = Decider(spec(scale_to_zero_grace_period=30.0))
    assert tick(d, 0, 3, 3, 1).desired_pod_count == 1
    assert tick(d, 10, 0, 0, 1).desired_pod_count == 1
    assert tick(d, 29.9, 0, 0, 1).desired_pod_count == 1
    assert tick(d, 30, 0, 0, 1).desired_pod_count == 0


def test_activity_restarts_the_grace():
    d = Decider(spec(scale_to_zero_grace_period=30.0))
    assert counts(d, [(0, 1, 1, 1), (20, 0.5, 0, 1), (49, 0, 0, 1), (50, 0, 0, 1)]) == [1, 1, 1, 0]
    r = tick(d, 50, 0, 0, 1)
    assert r.desired_stable == 0  # the grace only changes the final count


def test_idle_since_the_first_tick():
    d = Decider(spec(scale_to_zero_grace_period=5.0))
    assert tick(d, 100, 0, 0, 1).desired_pod_count == 1
    assert tick(d, 104.9, 0, 0, 1).desired_pod_count == 1
    assert tick(d, 105, 0, 0, 1).desired_pod_count == 0


def test_zero_ready_stays_at_zero():
    d = Decider(spec())
    assert tick(d, 0, 0, 0, 0).desired_pod_count == 0
    assert tick(d, 1, 0, 0, 0).desired_pod_count == 0
    busy = Decider(spec())
    tick(busy, 0, 5, 5, 2)
    assert tick(busy, 1, 0, 0, 0).desired_pod_count == 0  # recent activity, but nothing ready


def test_scale_from_zero_uses_one_ready():
    d = Decider(spec())
    r = tick(d, 0, 8, 8, 0)
    assert (r.desired_pod_count, r.in_panic) == (1, False)


def test_min_scale_keeps_pods_over_the_grace():
    d = Decider(spec(min_scale=1, scale_to_zero_grace_period=0.0))
    assert tick(d, 100, 0, 0, 1).desired_pod_count == 1


# ---- excess burst capacity --------------------------------------------------------------------
@pytest.mark.parametrize("tbc, expected", [
    (-1.0, -1), (0.0, 0), (211.0, 3 * 100 - 211 - 20), (400.0, -120), (50.5, 229)])
def test_excess_burst_capacity_modes(tbc: float, expected: int):
    d = Decider(spec(target_burst_capacity=tbc))
    assert tick(d, 0, 5, 20, 3).excess_burst_capacity == expected


def test_excess_burst_capacity_uses_panic_load_and_observed_ready():
    d = Decider(spec(total_value=10.0, target_burst_capacity=15.0))
    assert tick(d, 0, 0, 0, 0).excess_burst_capacity == -15  # 0 ready, not max(1, 0)
    assert tick(d, 1, 100, 2.5, 2).excess_burst_capacity == 2  # floor(20 - 15 - 2.5)
    assert tick(d, 2, 0, 5.5, 2).excess_burst_capacity == -1  # floor(-0.5)


# ---- live spec update -------------------------------------------------------------------------
def test_update_changes_target_and_keeps_panic():
    d = Decider(spec())
    tick(d, 0, 0, 40, 1)
    d.update(spec(target_value=20.0))
    r = tick(d, 1, 10, 10, 4)
    assert (r.in_panic, r.desired_pod_count, r.desired_stable) == (True, 4, 2)
    d.update(spec(target_value=2.0))
    r = tick(d, 2, 10, 10, 4)
    assert (r.in_panic, r.desired_pod_count) == (True, 5)  # 5/4 < 2 but still inside the window


def test_update_bounds_and_window_apply_at_the_next_tick():
    d = Decider(spec(stable_window=60.0))
    tick(d, 0, 0, 40, 1)
    d.update(spec(stable_window=5.0, max_scale=3))
    r = tick(d, 6, 0, 0, 4)
    assert (r.in_panic, r.desired_pod_count) == (False, 2)
    d.update(spec(min_scale=3))
    assert tick(d, 7, 0, 0, 2).desired_pod_count == 3


def test_spec_is_frozen_and_validated():
    s = spec()
    with pytest.raises(FrozenInstanceError):
        s.target_value = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        spec(target_value=0.0)


# ---- spec from a PaddleService ----------------------------------------------------------------
def service(annotations: dict[str, str] | None = None, **knobs: Any) -> PaddleService:
    return PaddleService.from_dict({
        "apiVersion": "elasticserving.paddlepaddle.org/v1", "kind": "PaddleService",
        "metadata": {"name": "a", "annotations": annotations or {}},
        "spec": {"default": {"containerImage": "i", "tag": "t", "port": 1}, "service": knobs}})


def test_from_config_defaults():
    s = DeciderSpec.from_config(service().autoscaling())
    assert s == DeciderSpec(target_value=70.0, total_value=100.0, target_burst_capacity=211.0,
                            panic_threshold=2.0, max_scale_up_rate=1000.0, max_scale_down_rate=2.0,
                            stable_window=60.0, scale_to_zero_grace_period=30.0, min_scale=1,
                            max_scale=10, reachable=True)


def test_from_config_knobs_and_cluster_defaults():
    cfg = service(target=10, targetUtilization="50", window="30s", panicThreshold="300",
                  minScale=0, maxScale=7).autoscaling()
    s = DeciderSpec.from_config(cfg, 0, {
        "scale-to-zero-grace-period": "1m", "max-scale-up-rate": "5", "max-scale-down-rate": 4,
        "target-burst-capacity": "-1", "activator-capacity": "250"})
    assert (s.target_value, s.total_value, s.stable_window, s.panic_threshold) == (5.0, 250.0, 30.0, 3.0)
    assert (s.min_scale, s.max_scale, s.scale_to_zero_grace_period) == (0, 7, 60.0)
    assert (s.max_scale_up_rate, s.max_scale_down_rate, s.target_burst_capacity) == (5.0, 4.0, -1.0)
    assert DeciderSpec.from_config(cfg, defaults={"scale-to-zero-grace-period": 12}).scale_to_zero_grace_period == 12.0


def test_from_config_container_concurrency():
    ann = {"elasticserving.paddlepaddle.org/container-concurrency": "8"}
    cfg = service(ann, target=10, targetUtilization="50").autoscaling()
    s = DeciderSpec.from_config(cfg)
    assert (s.target_value, s.total_value) == (4.0, 8.0)  # min(10, 8) * 0.5; capacity 8
    s = DeciderSpec.from_config(cfg, 20)  # an explicit containerConcurrency overrides the annotation
    assert (s.target_value, s.total_value) == (5.0, 20.0)
    s = DeciderSpec.from_config(cfg, 0)
    assert (s.target_value, s.total_value) == (5.0, 100.0)


def test_from_config_rps_and_legacy_call():
    cfg = service(metric="rps", target=50, targetUtilization="80", minScale=0).autoscaling()
    assert DeciderSpec.from_config(cfg).min_scale == 0
    s = DeciderSpec.from_config(cfg, {"enable-scale-to-zero": "false", "max-scale-up-rate": 3})
    assert (s.target_value, s.total_value, s.min_scale, s.max_scale_up_rate) == (40.0, 50.0, 1, 3.0)
    assert DeciderSpec.from_config(cfg, reachable=False).reachable is False


# ---- properties -------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 5000), st.floats(0, 5000), st.integers(0, 300)), min_size=1, max_size=30),
       st.integers(0, 5), st.integers(0, 50))
def test_result_always_within_bounds_and_rates(ticks: list[tuple[float, float, int]], lo: int, span: int):
    hi = lo + span if span else 0
    d = Decider(spec(min_scale=lo, max_scale=hi, scale_to_zero_grace_period=0.0))
    for i, (stable, panic, ready) in enumerate(ticks):
        r = tick(d, i * 2.0, stable, panic, ready)
        assert r.desired_pod_count >= lo
        if hi:
            assert r.desired_pod_count <= hi
        base = max(1, ready)
        assert base // 2 <= r.desired_stable <= 1000 * base
        assert base // 2 <= r.desired_panic <= 1000 * base
        if not r.in_panic and r.desired_pod_count not in (lo, hi):
            assert r.desired_pod_count == r.desired_stable
