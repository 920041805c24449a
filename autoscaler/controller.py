"""The platform-agnostic controller: PaddleServices in, replica counts and routes out.

It takes load reports and pokes from activators, runs the KPA decider for each service side every
tick, tells the platform how many replicas to run, and publishes routes and status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autoscaler.kpa import Decider, DeciderSpec
from autoscaler.metrics import MetricCollector
from autoscaler.platform import Platform
from autoscaler.spec import AutoscalingConfig, PaddleService, SpecError

log = logging.getLogger("elasticserving.controller")

DEFAULT_TICK_SECONDS = 2.0


@dataclass
class SideScaler:
    """Autoscaling state of one side (default or canary) of one service."""

    collector: MetricCollector
    decider: Decider
    desired: int = 0
    in_panic: bool = False
    stable: float = 0.0
    panic: float = 0.0
    excess_burst_capacity: int = 0
    waiting_since: float | None = None  # an activator holds requests for this side


@dataclass
class ServiceEntry:
    svc: PaddleService
    config: AutoscalingConfig
    sides: dict[str, SideScaler] = field(default_factory=dict)
    created: float = field(default_factory=time.time)


class RouteTable:
    """Routes for activators, versioned so they can long-poll for changes."""

    def __init__(self) -> None:
        self.version = 0
        self.routes: list[dict[str, Any]] = []
        self.closed = False
        self._changed = asyncio.Event()

    def publish(self, routes: list[dict[str, Any]]) -> None:
        if routes == self.routes:
            return
        self.routes = routes
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def close(self) -> None:
        """Answer every long-poll now (shutdown)."""
        self.closed = True
        self._changed.set()

    async def wait_newer(self, since: int, timeout: float) -> None:
        if self.version > since or self.closed:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)


class Controller:
    """Holds the PaddleServices, autoscales each side and keeps routes/status current."""

    def __init__(
        self,
        platform: Platform,
        domain: str = "example.com",
        defaults: dict[str, Any] | None = None,
        tick_seconds: float = DEFAULT_TICK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.platform = platform
        self.domain = domain
        self.defaults = dict(defaults or {})
        self.tick_seconds = tick_seconds
        self.clock = clock
        self.services: dict[str, ServiceEntry] = {}
        self.routes = RouteTable()
        self.on_status: Callable[[str, dict[str, Any]], None] = lambda key, status: None
        self._tick_task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        platform.on_change = self._platform_changed

    # ---- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        await self.platform.start()
        self._tick_task = asyncio.create_task(self._tick_loop(), name="autoscaler-tick")

    async def close(self) -> None:
        self.routes.close()
        if self._tick_task:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick_task
        await self.platform.close()

    # ---- services ---------------------------------------------------------------------------
    def _decider_spec(self, cfg: AutoscalingConfig) -> DeciderSpec:
        return DeciderSpec.from_config(cfg, self.defaults)

    def _new_side(self, cfg: AutoscalingConfig) -> SideScaler:
        return SideScaler(
            collector=MetricCollector(cfg.stable_window, cfg.panic_window, cfg.metric),
            decider=Decider(self._decider_spec(cfg)),
        )

    async def apply(self, svc: PaddleService) -> None:
        """Create or update a service (already validated); raises SpecError on bad autoscaling values."""
        cfg = svc.autoscaling(self.defaults)
        async with self._lock:
            entry = self.services.get(svc.key)
            if entry is None:
                entry = ServiceEntry(svc=svc, config=cfg)
                self.services[svc.key] = entry
            else:
                entry.svc, entry.config = svc, cfg
            spec = self._decider_spec(cfg)
            for side in svc.sides:
                scaler = entry.sides.get(side)
                if scaler is None:
                    scaler = entry.sides[side] = self._new_side(cfg)
                    # A side the platform already runs (a controller restart, a new leader) keeps its
                    # replicas until the autoscaler decides otherwise, instead of dropping to minScale.
                    scaler.desired = self.platform.state(svc.key, side).desired
                else:
                    scaler.collector.update_windows(cfg.stable_window, cfg.panic_window, now=self.clock())
                    scaler.decider.update(spec)
            for side in [s for s in entry.sides if s not in svc.sides]:
                del entry.sides[side]
            await self.platform.apply(svc)
            for side, scaler in entry.sides.items():
                want = self._bounded(cfg, scaler.desired)
                if want != scaler.desired or scaler.desired == 0:
                    scaler.desired = want
                    await self.platform.scale(svc.key, side, want)
        self._publish()

    async def delete(self, key: str) -> bool:
        async with self._lock:
            entry = self.services.pop(key, None)
            if entry is None:
                return False
            await self.platform.delete(key)
        self._publish()
        return True

    @staticmethod
    def _bounded(cfg: AutoscalingConfig, n: int) -> int:
        n = max(n, cfg.min_scale)
        if cfg.max_scale:
            n = min(n, cfg.max_scale)
        return n

    # ---- load signals -----------------------------------------------------------------------
    def record_stats(self, source: str, stats: list[dict[str, Any]]) -> None:
        """Take one activator's per-second report."""
        now = self.clock()
        for s in stats:
            entry = self.services.get(str(s.get("service")))
            scaler = entry.sides.get(str(s.get("side", "default"))) if entry else None
            if scaler is None:
                continue
            scaler.collector.record(
                now,
                source=source,
                concurrency=float(s.get("average_concurrency", 0.0)),
                requests=float(s.get("requests", 0)),
                window=float(s.get("window", 1.0)),
            )

    async def poke(self, key: str, side: str) -> bool:
        """A request waits for `side` of `key`: scale from zero at once instead of at the next tick."""
        entry = self.services.get(key)
        scaler = entry.sides.get(side) if entry else None
        if scaler is None:
            return False
        scaler.waiting_since = scaler.waiting_since or self.clock()
        if scaler.desired == 0:
            cfg = entry.config
            if cfg.max_scale == 0 or cfg.max_scale >= 1:
                scaler.desired = 1
                log.info("poke: scaling %s/%s from zero", key, side)
                await self.platform.scale(key, side, 1)
                self._publish()
        return True

    # ---- the autoscaling tick ---------------------------------------------------------------
    async def _tick_loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # a tick must never kill the loop
                log.exception("autoscaler tick failed")
            await asyncio.sleep(self.tick_seconds)

    async def tick(self) -> None:
        now = self.clock()
        async with self._lock:
            for key, entry in list(self.services.items()):
                for side, scaler in entry.sides.items():
                    state = self.platform.state(key, side)
                    ready = len(state.ready)
                    stable, panic = scaler.collector.stable_and_panic(now)
                    result = scaler.decider.scale(
                        now=now, stable_concurrency=stable, panic_concurrency=panic, ready_pods=ready)
                    want = result.desired_pod_count
                    if scaler.waiting_since is not None:
                        # Requests are held right now: never drop below one replica.
                        want = max(want, 1)
                        if ready > 0:
                            scaler.waiting_since = None
                    scaler.stable, scaler.panic = stable, panic
                    scaler.in_panic = result.in_panic
                    scaler.excess_burst_capacity = result.excess_burst_capacity
                    if want != scaler.desired:
                        log.info("scale %s/%s: %d -> %d (stable %.2f, panic %.2f, ready %d%s)",
                                 key, side, scaler.desired, want, stable, panic, ready,
                                 ", panic mode" if result.in_panic else "")
                        scaler.desired = want
                        await self.platform.scale(key, side, want)
        self._publish()

    # ---- routes and status ------------------------------------------------------------------
    def _platform_changed(self, key: str) -> None:
        self._publish()

    def _publish(self) -> None:
        self.routes.publish([self.route(e) for e in self.services.values()])
        for key, entry in self.services.items():
            self.on_status(key, self.status(entry))

    def route(self, entry: ServiceEntry) -> dict[str, Any]:
        svc = entry.svc
        sides = {}
        for side in svc.sides:
            st = self.platform.state(svc.key, side)
            scaler = entry.sides.get(side)
            sides[side] = {
                "ready": bool(st.ready),
                "error": st.error,
                "desired": scaler.desired if scaler else 0,
                "endpoints": [ep.to_dict() for ep in st.ready],
            }
        return {
            "service": svc.key,
            "name": svc.name,
            "namespace": svc.namespace,
            "hosts": [svc.host(self.domain), f"{svc.name}.{svc.namespace}", f"{svc.name}.{svc.namespace}.svc"],
            "canary_percent": svc.canary_percent,
            "container_concurrency": entry.config.container_concurrency,
            "sides": sides,
        }

    def status(self, entry: ServiceEntry) -> dict[str, Any]:
        """The PaddleService status block: conditions, url, address, side names, replicas."""
        svc = entry.svc
        conditions = []
        all_ready = True
        total_ready = 0
        for side in svc.sides:
            st = self.platform.state(svc.key, side)
            scaler = entry.sides.get(side)
            total_ready += len(st.ready)
            cond_type = "DefaultPaddleServiceReady" if side == "default" else "CanaryPaddleServiceReady"
            if st.ready:
                cond = _condition(cond_type, True, "ReplicasReady", f"{len(st.ready)} replica(s) ready")
            elif st.error:
                cond = _condition(cond_type, False, "ReplicaFailed", st.error)
            elif scaler and scaler.desired > 0:
                cond = _condition(cond_type, False, "ReplicasStarting",
                                  f"waiting for {scaler.desired} replica(s) to turn ready")
            else:
                cond = _condition(cond_type, True, "ScaledToZero", "no replicas; activated on demand")
            all_ready &= cond["status"] == "True"
            conditions.append(cond)
        conditions.append(_condition("RoutesReady", True, "RoutesPublished",
                                     f"routed by the activator as {svc.host(self.domain)}"))
        conditions.insert(0, _condition(
            "Ready", all_ready, "ServiceReady" if all_ready else "NotReady",
            "" if all_ready else next(c["message"] for c in conditions if c["status"] != "True")))
        status: dict[str, Any] = {
            "conditions": conditions,
            "url": svc.url(self.domain),
            "address": {"url": f"http://{svc.name}.{svc.namespace}.svc.cluster.local"},
            "default": {"name": svc.side_name("default")},
            "replicas": total_ready,
        }
        if svc.metadata.generation is not None:
            status["observedGeneration"] = svc.metadata.generation
        if svc.spec.canary is not None:
            status["canary"] = {"name": svc.side_name("canary")}
        return status

    def describe(self, key: str) -> dict[str, Any] | None:
        """Manifest + status + live autoscaler numbers, as `elasticserving get` shows them."""
        entry = self.services.get(key)
        if entry is None:
            return None
        out = entry.svc.to_manifest()
        out["status"] = self.status(entry)
        out["autoscaler"] = {}
        for side, sc in entry.sides.items():
            st = self.platform.state(key, side)
            out["autoscaler"][side] = {
                "desired": sc.desired,
                "ready": len(st.ready),
                "starting": st.starting,
                "standby": st.standby,
                "stable_concurrency": round(sc.stable, 3),
                "panic_concurrency": round(sc.panic, 3),
                "in_panic": sc.in_panic,
                "excess_burst_capacity": sc.excess_burst_capacity,
                "error": st.error,
                "last_start_seconds": st.last_start_seconds,
            }
        return out


def _condition(cond_type: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": cond_type,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


__all__ = ["Controller", "RouteTable", "SpecError"]
