"""Prometheus view of the controller: replicas and autoscaler numbers per service and side.

Read at scrape time from the controller's state (a custom collector), served on `/metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from autoscaler.controller import Controller, SideScaler
    from autoscaler.platform import SideState

PREFIX = "elasticserving_autoscaler_"


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


# name, help, value of one side (its SideScaler, SideState), in export order.
_GAUGES: list[tuple[str, str, Callable[[SideScaler, SideState], float]]] = [
    ("desired_replicas", "Replicas the autoscaler wants.", lambda sc, st: sc.desired),
    ("actual_replicas", "Replicas started (ready or starting).", lambda sc, st: st.actual),
    ("ready_replicas", "Replicas ready to serve.", lambda sc, st: len(st.ready)),
    ("stable_concurrency", "Average concurrency over the stable window.", lambda sc, st: sc.stable),
    ("panic_concurrency", "Average concurrency over the panic window.", lambda sc, st: sc.panic),
    ("target_concurrency_per_pod", "Target per replica as the decider uses it: min(target, containerConcurrency)"
     " x utilization (rps: target x utilization).",
     lambda sc, st: sc.decider.spec.target_value),  # what scaling divides by
    ("panic_mode", "1 while the side is in panic mode.", lambda sc, st: 1.0 if sc.in_panic else 0.0),
    ("excess_burst_capacity", "Excess burst capacity (negative: activator in path).",
     lambda sc, st: sc.excess_burst_capacity),
]


class ControllerCollector(Collector):
    """Exports desired/actual/ready replicas, stable/panic concurrency, panic mode, burst capacity."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def collect(self) -> Iterator[Metric]:
        fams = [GaugeMetricFamily(PREFIX + name, doc, labels=["service", "side"]) for name, doc, _ in _GAUGES]
        for key, entry in list(self.controller.services.items()):
            for side, sc in entry.sides.items():
                st = self.controller.platform.state(key, side)
                for fam, (_, _, value) in zip(fams, _GAUGES, strict=True):
                    fam.add_metric([key, side], value(sc, st))
        yield from fams
