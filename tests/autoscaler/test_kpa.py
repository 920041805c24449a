"""Unit tests of the KPA decider (autoscaler.kpa) and the window collector (autoscaler.metrics):
Knative's semantics over scenarios, with time passed in and exact numbers asserted."""

from __future__ import annotations

import pytest

from autoscaler.kpa import Decider, DeciderSpec
from autoscaler.metrics import MetricCollector
from autoscaler.spec import PaddleService


def spec(**kw) -> DeciderSpec:
    base = dict(target_value=10.0, total_value=100.0, target_burst_capacity=211.0, panic_threshold=2.0,
                max_scale_up_rate=1000.0, max_scale_down_rate=2.0, stable_window=60.0,
                scale_to_zero_grace_period=30.0, min_scale=0, max_scale=0, reachable=True)
    base.update(kw)
    return DeciderSpec(**base)


def test_steady_load():
    d = Decider(spec())
    r = d.scale(now=0, stable_concurrency=50, panic_concurrency=50, ready_pods=5)
    assert (r.desired_pod_count, r.in_panic) == (5, False)
    assert r.excess_burst_capacity == 5 * 100 - 211 - 50


def test_step_up_limited_by_scale_up_rate():
    d = Decider(spec(max_scale_up_rate=2.0, panic_threshold=100.0))
    assert d.scale(now=0, stable_concurrency=100, panic_concurrency=100, ready_pods=1).desired_pod_count == 2
    assert d.scale(now=1, stable_concurrency=100, panic_concurrency=100, ready_pods=2).desired_pod_count == 4


def test_scale_down_limited_by_scale_down_rate():
    d = Decider(spec())
    assert d.scale(now=0, stable_concurrency=0, panic_concurrency=0, ready_pods=10).desired_pod_count == 5
    assert d.scale(now=1, stable_concurrency=0, panic_concurrency=0, ready_pods=5).desired_pod_count == 2


def test_unreachable_may_scale_down_freely():
    d = Decider(spec(reachable=False, scale_to_zero_grace_period=0))
    assert d.scale(now=0, stable_concurrency=0, panic_concurrency=0, ready_pods=10).desired_pod_count == 0


def test_panic_starts_takes_max_and_holds():
    d = Decider(spec())
    # panic: ceil(40/10)=4 pods wanted with 1 ready -> 4/1 >= 2
    r = d.scale(now=0, stable_concurrency=5, panic_concurrency=40, ready_pods=1)
    assert r.in_panic and r.desired_pod_count == 4 and r.desired_stable == 1 and r.desired_panic == 4
    # load drops, still inside stable window since the last panic tick: never below the panic max
    r = d.scale(now=10, stable_concurrency=5, panic_concurrency=5, ready_pods=4)
    assert r.in_panic and r.desired_pod_count == 4
    # refreshed by another over-threshold tick at t=20
    r = d.scale(now=20, stable_concurrency=10, panic_concurrency=90, ready_pods=4)
    assert r.in_panic and r.desired_pod_count == 9
    # exits at the first calm tick more than stable_window after t=20
    r = d.scale(now=80, stable_concurrency=10, panic_concurrency=10, ready_pods=9)
    assert r.in_panic and r.desired_pod_count == 9
    r = d.scale(now=80.5, stable_concurrency=10, panic_concurrency=10, ready_pods=9)
    assert not r.in_panic and r.desired_pod_count == 4  # stable 1, but halving: floor(9/2)


def test_in_panic_stable_larger_than_panic_wins():
    d = Decider(spec())
    d.scale(now=0, stable_concurrency=0, panic_concurrency=30, ready_pods=1)
    r = d.scale(now=1, stable_concurrency=70, panic_concurrency=10, ready_pods=3)
    assert r.in_panic and r.desired_pod_count == 7


def test_min_and_max_bounds():
    d = Decider(spec(min_scale=2, max_scale=4))
    assert d.scale(now=0, stable_concurrency=0, panic_concurrency=0, ready_pods=0).desired_pod_count == 2
    assert d.scale(now=1, stable_concurrency=500, panic_concurrency=500, ready_pods=2).desired_pod_count == 4


def test_scale_to_zero_waits_for_grace():
    d = Decider(spec(scale_to_zero_grace_period=30.0))
    assert d.scale(now=0, stable_concurrency=3, panic_concurrency=3, ready_pods=1).desired_pod_count == 1
    assert d.scale(now=10, stable_concurrency=0, panic_concurrency=0, ready_pods=1).desired_pod_count == 1
    assert d.scale(now=29.9, stable_concurrency=0, panic_concurrency=0, ready_pods=1).desired_pod_count == 1
    assert d.scale(now=30, stable_concurrency=0, panic_concurrency=0, ready_pods=1).desired_pod_count == 0


def test_idle_from_first_tick_and_zero_stays_zero():
    d = Decider(spec(scale_to_zero_grace_period=5.0))
    assert d.scale(now=100, stable_concurrency=0, panic_concurrency=0, ready_pods=1).desired_pod_count == 1
    assert d.scale(now=105, stable_concurrency=0, panic_concurrency=0, ready_pods=1).desired_pod_count == 0
    d2 = Decider(spec())
    assert d2.scale(now=0, stable_concurrency=0, panic_concurrency=0, ready_pods=0).desired_pod_count == 0


@pytest.mark.parametrize("tbc, expected", [(-1.0, -1), (0.0, 0), (211.0, 3 * 100 - 211 - 20), (400.0, -120)])
def test_excess_burst_capacity_modes(tbc, expected):
    d = Decider(spec(target_burst_capacity=tbc))
    assert d.scale(now=0, stable_concurrency=20, panic_concurrency=20, ready_pods=3).excess_burst_capacity == expected


def test_ebc_uses_observed_ready_pods_zero():
    d = Decider(spec())
    assert d.scale(now=0, stable_concurrency=0, panic_concurrency=0, ready_pods=0).excess_burst_capacity == -211


def test_live_update_keeps_panic():
    d = Decider(spec())
    d.scale(now=0, stable_concurrency=0, panic_concurrency=40, ready_pods=1)
    d.update(spec(target_value=20.0))
    r = d.scale(now=1, stable_concurrency=10, panic_concurrency=10, ready_pods=4)
    assert r.in_panic and r.desired_pod_count == 4


def test_spec_from_paddleservice_config():
    svc = PaddleService.from_dict({
        "apiVersion": "elasticserving.paddlepaddle.org/v1", "kind": "PaddleService", "metadata": {"name": "a"},
        "spec": {"default": {"containerImage": "i", "tag": "t", "port": 1},
                 "service": {"target": 10, "targetUtilization": "50", "window": "30s", "panicThreshold": "300",
                             "minScale": 1, "maxScale": 7}}})
    s = DeciderSpec.from_config(svc.autoscaling(), {"scale-to-zero-grace-period": "10s", "max-scale-up-rate": 5})
    assert (s.target_value, s.stable_window, s.panic_threshold) == (5.0, 30.0, 3.0)
    assert (s.min_scale, s.max_scale, s.scale_to_zero_grace_period, s.max_scale_up_rate) == (1, 7, 10.0, 5.0)
    assert s.total_value == 100.0


def test_collector_windows_and_ha_sum():
    c = MetricCollector(stable_window=10, panic_window=2)
    for t in range(10):
        c.record(t + 0.5, "a", concurrency=4, requests=4)
        c.record(t + 0.5, "b", concurrency=6, requests=6)
    stable, panic = c.stable_and_panic(9.9)
    assert (stable, panic) == (10.0, 10.0)
    c.record(10.5, "a", concurrency=30, requests=30)
    c.record(11.5, "a", concurrency=30, requests=30)
    stable, panic = c.stable_and_panic(11.9)
    assert panic == 30.0 and stable == pytest.approx((8 * 10 + 60) / 10)


def test_collector_partial_window_and_replacement():
    c = MetricCollector(stable_window=60, panic_window=6)
    c.record(0.1, "a", concurrency=5, requests=1)
    c.record(0.9, "a", concurrency=7, requests=1)  # same source, same second: replaces
    assert c.stable_and_panic(0.95) == (7.0, 7.0)
    c.record(1.5, "a", concurrency=1, requests=1)
    assert c.stable_and_panic(1.6) == (4.0, 4.0)  # two seconds of data so far
    assert c.stable_and_panic(200) == (0.0, 0.0)
    assert c.last_activity() == 1.0


def test_collector_rps():
    c = MetricCollector(stable_window=10, panic_window=2, metric="rps")
    c.record(0.5, "a", concurrency=1, requests=50)
    c.record(1.5, "a", concurrency=1, requests=150)
    assert c.stable_and_panic(1.9) == (100.0, 100.0)
