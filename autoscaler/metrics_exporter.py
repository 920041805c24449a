"""Prometheus view of the controller: replicas and autoscaler numbers per service and side.

Read at scrape time from the controller's state (a custom collector), served on `/metrics`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from autoscaler.controller import Controller

PREFIX = "elasticserving_autoscaler_"


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


class ControllerCollector(Collector):
    """Exports desired/actual/ready replicas, stable/panic concurrency, panic mode, burst capacity."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def collect(self) -> Iterator[Metric]:
        labels = ["service", "side"]
        fams = {
            "desired": GaugeMetricFamily(PREFIX + "desired_replicas", "Replicas the autoscaler wants.", labels=labels),
            "actual": GaugeMetricFamily(PREFIX + "actual_replicas", "Replicas started (ready or starting).", labels=labels),
            "ready": GaugeMetricFamily(PREFIX + "ready_replicas", "Replicas ready to serve.", labels=labels),
            "stable": GaugeMetricFamily(PREFIX + "stable_concurrency", "Average concurrency over the stable window.", labels=labels),
            "panic": GaugeMetricFamily(PREFIX + "panic_concurrency", "Average concurrency over the panic window.", labels=labels),
            "target": GaugeMetricFamily(PREFIX + "target_concurrency_per_pod", "Target per replica as the decider uses it: min(target, containerConcurrency) x utilization (rps: target x utilization).", labels=labels),
            "in_panic": GaugeMetricFamily(PREFIX + "panic_mode", "1 while the side is in panic mode.", labels=labels),
            "ebc": GaugeMetricFamily(PREFIX + "excess_burst_capacity", "Excess burst capacity (negative: activator in path).", labels=labels),
        }
        for key, entry in list(self.controller.services.items()):
            for side, sc in entry.sides.items():
                st = self.controller.platform.state(key, side)
                lv = [key, side]
                fams["desired"].add_metric(lv, sc.desired)
                fams["actual"].add_metric(lv, st.actual)
                fams["ready"].add_metric(lv, len(st.ready))
                fams["stable"].add_metric(lv, sc.stable)
                fams["panic"].add_metric(lv, sc.panic)
                fams["target"].add_metric(lv, sc.decider.spec.target_value)  # what scaling divides by
                fams["in_panic"].add_metric(lv, 1.0 if sc.in_panic else 0.0)
                fams["ebc"].add_metric(lv, sc.excess_burst_capacity)
        yield from fams.values()
