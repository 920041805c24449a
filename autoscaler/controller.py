"""The platform-agnostic controller: PaddleServices in, replica counts and routes out.

Activator reports and pokes (wire.StatsReport, wire.Poke) -> KPA decider per active side each tick ->
platform replica counts; routes (versioned deltas) and status of the services that changed -> activators.
The traffic split comes from autoscaler/rollout.py; the controller applies it (routes, status, floors).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import runtime.tracing as tracing
from autoscaler import rollout
from autoscaler.kpa import Decider, DeciderSpec
from autoscaler.metrics import MetricCollector
from autoscaler.platform import Platform
from autoscaler.replicas import replicas
from autoscaler.spec import TAGS, AutoscalingConfig, EndpointSpec, PaddleService, SpecError
from autoscaler.wire import Endpoint, Route, RoutesUpdate, SideRoute, StatsReport

log = logging.getLogger("elasticserving.controller")

DEFAULT_TICK_SECONDS = 2.0
ACTIVATOR_TTL = 10.0  # an activator silent this long no longer shares capacity


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


class PromoteRefused(Exception):
    """`promote` would send all traffic to a canary that cannot serve it; the reason is for the user."""


@dataclass
class ServiceEntry:
    svc: PaddleService
    config: AutoscalingConfig
    sides: dict[str, SideScaler] = field(default_factory=dict)
    release: rollout.Release | None = None  # the split in force (rollout.step)
    target: rollout.Target | None = None
    specs: dict[str, EndpointSpec] = field(default_factory=dict)  # revision -> spec, for every side in use
    timer: asyncio.TimerHandle | None = None  # the next step of a gradual rollout


def version_name(spec: EndpointSpec) -> str:
    """How a side's version is named in messages: image, tag and revision."""
    return f"{spec.image} (revision {spec.revision})"


class VersionedRoutes:
    """Routes for activators, versioned as autoscaler/wire.py tells: a bounded history of which keys changed
    at which version (a new set of activators is a version too) answers a delta while it reaches `since`."""

    def __init__(self, history: int = 4096, epoch: str | None = None) -> None:
        self.epoch = epoch or secrets.token_hex(8)  # a new controller process: activators resync in full
        self.version = 0
        self.activator_ids: tuple[str, ...] = ()  # live activators, sorted: an index is a position here
        self.closed = False
        self._routes: dict[str, Route] = {}
        self._history: collections.deque[tuple[int, tuple[str, ...]]] = collections.deque(maxlen=history)
        self._floor = 0  # the oldest `since` the history can answer with a delta
        self._changed = asyncio.Event()

    def all(self) -> list[Route]:
        return [self._routes[k] for k in sorted(self._routes)]

    @property
    def activators(self) -> int:
        return max(1, len(self.activator_ids))

    def publish(self, changes: Mapping[str, Route | None], activators: Iterable[str] | None = None) -> bool:
        """Set the routes of the services in `changes` (None: deleted) and, when given, the ids of the
        live activators; one new version if anything differs. True when a new version was made."""
        changed: list[str] = []
        for key, route in changes.items():
            if route is None:
                if self._routes.pop(key, None) is not None:
                    changed.append(key)
            elif self._routes.get(key) != route:
                self._routes[key] = route
                changed.append(key)
        ids = tuple(sorted(activators)) if activators is not None else self.activator_ids
        # The same number of activators with one replaced can still move every index: compare the set.
        if not changed and ids == self.activator_ids:
            return False
        self.activator_ids = ids
        self.version += 1
        if len(self._history) == self._history.maxlen:
            self._floor = self._history[0][0]  # that version's changes are forgotten
        self._history.append((self.version, tuple(changed)))
        self._changed.set()
        self._changed = asyncio.Event()
        return True

    def has_news(self, epoch: str | None, since: int) -> bool:
        """Whether an activator holding (`epoch`, `since`) must be answered now: a newer version, or a
        version this table never had (another epoch, or from the future: it needs the full table).
        Without an epoch (an activator of the first protocol) it long-polls for a newer version."""
        return self.closed or since != self.version or (epoch is not None and epoch != self.epoch)

    def update(self, epoch: str | None, since: int, activator: str | None = None) -> RoutesUpdate:
        """What an activator holding (`epoch`, `since`) needs: a delta when the history covers it, with
        its index among the live activators when it named itself and is one of them."""
        index = self.activator_ids.index(activator) if activator in self.activator_ids else None
        if epoch == self.epoch and self._floor <= since <= self.version:
            recent = itertools.takewhile(lambda entry: entry[0] > since, reversed(self._history))
            ordered = sorted({key for _, changed in recent for key in changed})
            return RoutesUpdate(epoch=self.epoch, version=self.version, full=False,
                                services=tuple(self._routes[k] for k in ordered if k in self._routes),
                                removed=tuple(k for k in ordered if k not in self._routes),
                                activators=self.activators, activator_index=index)
        return RoutesUpdate(epoch=self.epoch, version=self.version, full=True, services=tuple(self.all()),
                            activators=self.activators, activator_index=index)

    def close(self) -> None:
        """Answer every long-poll now (shutdown)."""
        self.closed = True
        self._changed.set()

    async def wait_news(self, epoch: str | None, since: int, timeout: float) -> None:
        """Return once `has_news(epoch, since)` or after `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not self.has_news(epoch, since):
                    await self._changed.wait()


class Controller:
    """Holds the PaddleServices, autoscales each side and keeps routes/status current.

    The tick visits only *active* sides: with load reported, requests held, replicas wanted or running,
    or the decider in panic. A side leaves the set once it is at zero with nothing of these, and comes
    back with a report, a poke, an apply or a platform change, so idle services at zero cost nothing.
    """

    def __init__(
        self,
        platform: Platform,
        domain: str = "example.com",
        defaults: dict[str, Any] | None = None,
        tick_seconds: float = DEFAULT_TICK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.platform = platform
        self.domain = domain
        self.defaults = dict(defaults or {})
        self.tick_seconds = tick_seconds
        self.clock = clock
        # Releases outlive a controller (their start times are in status for the next leader): wall time.
        self.wall_clock = wall_clock
        self.services: dict[str, ServiceEntry] = {}
        self.routes = VersionedRoutes()
        self.on_status: Callable[[str, dict[str, Any]], None] = lambda key, status: None
        self.active: set[tuple[str, str]] = set()  # sides the tick visits
        self._activators: dict[str, float] = {}  # activator id -> last report or poll (clock)
        self._tick_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()  # release steps and side drops under way
        self._lock = asyncio.Lock()
        platform.on_change = self._platform_changed

    # ---- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        await self.platform.start()
        self._tick_task = asyncio.create_task(self._tick_loop(), name="autoscaler-tick")

    async def close(self) -> None:
        self.routes.close()
        for entry in self.services.values():
            if entry.timer is not None:
                entry.timer.cancel()
        for task in [self._tick_task, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.platform.close()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- services ---------------------------------------------------------------------------
    async def apply(self, svc: PaddleService) -> None:
        """Create or update a service (already validated); raises SpecError on bad autoscaling values."""
        cfg = svc.autoscaling(self.defaults)
        async with self._lock:
            entry = self.services.get(svc.key)
            if entry is None:
                # A new leader goes on with the release the last one wrote: split, ramps, proven versions.
                entry = self.services[svc.key] = ServiceEntry(svc=svc, config=cfg,
                                                              release=rollout.from_status(svc.status))
            else:
                entry.svc, entry.config = svc, cfg
            entry.specs.update((s.revision, s) for s in (svc.spec.default, svc.spec.canary) if s is not None)
            entry.target = self._target(entry)
            entry.release, moves = rollout.revise(entry.release, entry.target)
            for from_side, to_side in moves:
                # The replicas go on serving under their new side, with their load history.
                await self.platform.move(svc.key, from_side, to_side)
                moved = entry.sides.pop(from_side, None)
                self.active.discard((svc.key, from_side))
                if moved is not None:
                    entry.sides[to_side] = moved
                    self.active.add((svc.key, to_side))
            spec = DeciderSpec.from_config(cfg, self.defaults)
            wanted = [*svc.sides, *(["previous"] if entry.release.previous is not None else [])]
            for side in wanted:
                scaler = entry.sides.get(side)
                if scaler is None:
                    scaler = entry.sides[side] = SideScaler(
                        MetricCollector(cfg.stable_window, cfg.panic_window, cfg.metric), Decider(spec))
                    # A side the platform already runs (a controller restart, a new leader) keeps its
                    # replicas until the autoscaler decides otherwise, instead of dropping to minScale.
                    scaler.desired = self.platform.state(svc.key, side).desired
                else:
                    scaler.collector.update_windows(cfg.stable_window, cfg.panic_window, now=self.clock())
                    scaler.decider.update(spec)
                self.active.add((svc.key, side))  # new bounds: the next tick decides again
            for side in [s for s in entry.sides if s not in wanted]:
                del entry.sides[side]
                self.active.discard((svc.key, side))
            await self.platform.apply(svc)
            self._step_release(entry)
            floors = self._floors(entry)
            for side, scaler in entry.sides.items():
                want = self._replicas(cfg, scaler, scaler.desired, floors.get(side, 0))
                if want != scaler.desired or scaler.desired == 0:
                    scaler.desired = want
                    await self.platform.scale(svc.key, side, want)
        self._publish([svc.key])

    async def delete(self, key: str) -> bool:
        async with self._lock:
            entry = self.services.pop(key, None)
            if entry is None:
                return False
            if entry.timer is not None:
                entry.timer.cancel()
            self.active.difference_update((key, side) for side in entry.sides)
            await self.platform.delete(key)
        self._publish([key])
        return True

    @staticmethod
    def _replicas(cfg: AutoscalingConfig, scaler: SideScaler, decided: int, floor: int = 0) -> int:
        """autoscaler/replicas.py's decision for one side: every scale goes through it."""
        return replicas(decided, min_scale=cfg.min_scale, max_scale=cfg.max_scale, floor=floor,
                        held=scaler.waiting_since is not None)

    # ---- load signals -----------------------------------------------------------------------
    def seen_activator(self, activator: str) -> None:
        """An activator reported or polled: it counts among the activators sharing capacity."""
        new = activator not in self._activators
        self._activators[activator] = self.clock()
        if new:
            self._publish_activators()

    def _publish_activators(self) -> None:
        horizon = self.clock() - ACTIVATOR_TTL
        self._activators = {a: seen for a, seen in self._activators.items() if seen >= horizon}
        self.routes.publish({}, activators=self._activators)

    def record_stats(self, report: StatsReport) -> int:
        """Take one activator's per-second report; returns how many stats named a known service side."""
        self.seen_activator(report.activator)
        now = self.clock()
        accepted = 0
        for s in report.stats:
            scaler = self._scaler(s.service, s.side)
            if scaler is None:
                continue
            accepted += 1
            if s.average_concurrency > 0 or s.requests > 0 or s.concurrency > 0:
                self.active.add((s.service, s.side))
            elif (s.service, s.side) not in self.active:
                continue  # an idle side at zero: nothing to average, nothing to decide
            scaler.collector.record(now, source=report.activator, concurrency=s.average_concurrency,
                                    requests=float(s.requests), window=s.window)
        return accepted

    async def poke(self, key: str, side: str, traceparent: str | None = None) -> bool:
        """A request waits for `side` of `key`: scale from zero at once instead of at the next tick.
        With tracing on, the decision is a span linked to the held request's (`traceparent`)."""
        if tracing.ON:
            with tracing.linked("scale from zero", traceparent, **{"elasticserving.service": key,
                                                                    "elasticserving.side": side}) as span:
                poked = await self._poke(key, side)
                scaler = self._scaler(key, side)
                span.set_attribute("elasticserving.desired", scaler.desired if scaler else 0)
                return poked
        return await self._poke(key, side)

    def _scaler(self, key: str, side: str) -> SideScaler | None:
        entry = self.services.get(key)
        return entry.sides.get(side) if entry else None

    async def _poke(self, key: str, side: str) -> bool:
        entry = self.services.get(key)
        scaler = self._scaler(key, side)
        if entry is None or scaler is None:
            return False
        scaler.waiting_since = scaler.waiting_since or self.clock()
        self.active.add((key, side))
        if scaler.desired == 0:
            # Held requests ask for one replica at once (minScale may ask for more).
            want = self._replicas(entry.config, scaler, 0, self._floors(entry).get(side, 0))
            scaler.desired = want
            log.info("poke: scaling %s/%s from zero to %d", key, side, want)
            await self.platform.scale(key, side, want)
            self._publish([key])
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
        """Decide every active side; a side that fails is logged and skipped, never the whole tick."""
        now = self.clock()
        touched: set[str] = set()
        async with self._lock:
            for key, side in sorted(self.active):
                scaler = self._scaler(key, side)
                if scaler is None:
                    self.active.discard((key, side))
                    continue
                try:
                    if not await self._tick_side(key, side, scaler, now):
                        self.active.discard((key, side))
                except Exception:
                    log.exception("autoscaler tick of %s/%s failed; the other services go on", key, side)
                touched.add(key)
        if self._activators:
            self._publish_activators()
        self._publish(sorted(touched))

    async def _tick_side(self, key: str, side: str, scaler: SideScaler, now: float) -> bool:
        """One KPA decision for one side; False when the side is idle at zero (leaves the active set)."""
        state = self.platform.state(key, side)
        ready = len(state.ready)
        stable, panic = scaler.collector.stable_and_panic(now)
        result = scaler.decider.scale(now=now, stable_concurrency=stable, panic_concurrency=panic,
                                      ready_pods=ready)
        scaler.stable, scaler.panic = stable, panic
        entry = self.services[key]
        # The release may need more (a version proving itself, a side sized for its next share), and
        # requests held right now need one replica.
        want = self._replicas(entry.config, scaler, result.desired_pod_count, self._floors(entry).get(side, 0))
        if scaler.waiting_since is not None and ready > 0:
            scaler.waiting_since = None
        scaler.in_panic = result.in_panic
        scaler.excess_burst_capacity = result.excess_burst_capacity
        if want != scaler.desired:
            log.info("scale %s/%s: %d -> %d (stable %.2f, panic %.2f, ready %d%s)",
                     key, side, scaler.desired, want, stable, panic, ready,
                     ", panic mode" if result.in_panic else "")
            scaler.desired = want
            await self.platform.scale(key, side, want)
        # Still active while anything can change the next decision: load in the windows, held
        # requests, replicas wanted or running, or panic mode (its own timer).
        return bool(want or state.actual or stable or panic or result.in_panic
                    or scaler.waiting_since is not None)

    # ---- routes and status ------------------------------------------------------------------
    def _platform_changed(self, key: str) -> None:
        entry = self.services.get(key)
        if entry is not None:
            self.active.update((key, side) for side in entry.sides)
        self._publish([key])

    def _publish(self, keys: Iterable[str]) -> None:
        """Recompute the release, routes and status of the services `keys` (only those: one change of
        one service is one small delta for the activators)."""
        changes: dict[str, Route | None] = {}
        retired: list[str] = []
        short: list[str] = []
        for key in keys:
            entry = self.services.get(key)
            if entry is None:
                changes[key] = None
                continue
            try:
                if self._step_release(entry):
                    retired.append(key)
                if any(f > entry.sides[side].desired for side, f in self._floors(entry).items()
                       if side in entry.sides):
                    short.append(key)
                changes[key] = self.route(entry)
                self.on_status(key, self.status(entry))
            except Exception:
                log.exception("routes/status of %s failed; the other services go on", key)
        self.routes.publish(changes)
        # Only once the activators have routes without it: the outgoing version's replicas stop.
        for key in retired:
            self._spawn(self.platform.drop(key, "previous"), f"drop {key}/previous")
        for key in short:
            self._spawn(self._raise_to_floors(key), f"floors of {key}")

    # ---- releases ---------------------------------------------------------------------------
    def _target(self, entry: ServiceEntry) -> rollout.Target:
        svc = entry.svc
        canary = svc.spec.canary
        return rollout.Target(default=svc.spec.default.revision, canary=canary.revision if canary else None,
                              canary_percent=svc.canary_percent, duration=svc.rollout_seconds,
                              keep_previous=self.platform.moves_sides,
                              names={rev: version_name(spec) for rev, spec in entry.specs.items()})

    def _step_release(self, entry: ServiceEntry) -> bool:
        """The split in force now (rollout.step); schedules the next step. True when the outgoing
        version (`previous`) has just lost its last share: its replicas are to be dropped."""
        assert entry.release is not None and entry.target is not None
        key = entry.svc.key
        states = {side: self.platform.state(key, side) for side in entry.release.sides()}
        observed = {side: rollout.Observed(ready=len(st.ready), error=st.error) for side, st in states.items()}
        before = entry.release
        entry.release = rollout.step(before, entry.target, observed, self.wall_clock())
        if entry.release.split() != before.split() or entry.release.reason != before.reason:
            log.info("%s: traffic %s (%s)", key, entry.release.split(), entry.release.reason)
        live = {t.revision for t in entry.release.sides().values()}
        entry.specs = {rev: spec for rev, spec in entry.specs.items() if rev in live}
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        if entry.release.next_step is not None:
            delay = max(0.0, entry.release.next_step - self.wall_clock())
            entry.timer = asyncio.get_running_loop().call_later(
                delay, lambda: self._spawn(self._next_step(key), f"release step of {key}"))
        retired = before.previous is not None and entry.release.previous is None
        if retired and entry.sides.pop("previous", None) is not None:
            self.active.discard((key, "previous"))
        return retired

    def _floors(self, entry: ServiceEntry) -> dict[str, int]:
        assert entry.release is not None and entry.target is not None  # set by apply before any await
        # The replicas the whole service's load needs, whichever side carries it (not the sum of each
        # side's decision: minScale and the scale-to-zero grace would count once per side).
        per_pod = DeciderSpec.from_config(entry.config, self.defaults).target_value
        demand = math.ceil(sum(sc.stable for sc in entry.sides.values()) / per_pod - 1e-9)
        return dict(rollout.floors(entry.release, entry.target, demand))

    async def _raise_to_floors(self, key: str) -> None:
        """Scale the sides of `key` the release needs more of (a version proving itself, a next step)."""
        async with self._lock:
            entry = self.services.get(key)
            if entry is None:
                return
            for side, floor in self._floors(entry).items():
                scaler = entry.sides.get(side)
                if scaler is None:
                    continue
                want = self._replicas(entry.config, scaler, scaler.desired, floor)
                if want > scaler.desired:
                    log.info("release of %s: %s side %d -> %d replicas", key, side, scaler.desired, want)
                    scaler.desired = want
                    self.active.add((key, side))
                    await self.platform.scale(key, side, want)

    async def _next_step(self, key: str) -> None:
        if key in self.services:
            self._publish([key])

    async def promote(self, key: str) -> None:
        """Make the canary the default (spec.default := spec.canary, no canary left); refused with the
        reason while the canary has no ready replica (all traffic would go to a version that cannot
        serve it). With spec.rolloutDuration the traffic then moves over gradually."""
        entry = self.services.get(key)
        if entry is None:
            raise KeyError(key)
        svc = entry.svc
        canary = svc.spec.canary
        if canary is None:
            raise PromoteRefused(f"{key} has no canary to promote")
        st = self.platform.state(key, "canary")
        if not st.ready:
            proven = entry.release is not None and entry.release.canary is not None and entry.release.canary.ready
            why = st.error or (f"it is scaled to zero: wake it with a request to {svc.tag_host('canary', self.domain)} "
                               "first" if proven else "it is still starting")
            raise PromoteRefused(f"refusing to promote the canary of {key}: {version_name(canary)} has no ready "
                                 f"replica ({why}); the default keeps serving")
        manifest = svc.to_manifest()
        manifest["spec"]["default"] = manifest["spec"].pop("canary")
        manifest["spec"].pop("canaryTrafficPercent", None)
        await self.apply(PaddleService.from_dict(manifest, self.defaults))

    # ---- routes and status ------------------------------------------------------------------
    def _hosts(self, short: str) -> tuple[str, ...]:
        """The host forms of a route to `short` (`[tag-]name.namespace`): with the domain, bare, `.svc`."""
        return (f"{short}.{self.domain}", short, f"{short}.svc")

    def _side_route(self, entry: ServiceEntry, side: str) -> SideRoute:
        st = self.platform.state(entry.svc.key, side)
        scaler = entry.sides.get(side)
        return SideRoute(
            ready=bool(st.ready),
            error=st.error,
            desired=scaler.desired if scaler else 0,
            endpoints=tuple(Endpoint(id=ep.id, host=ep.host, http_port=ep.http_port,
                                     grpc_port=ep.grpc_port) for ep in st.ready),
        )

    def route(self, entry: ServiceEntry) -> Route:
        svc = entry.svc
        release = entry.release
        assert release is not None
        return Route(
            service=svc.key,
            name=svc.name,
            namespace=svc.namespace,
            hosts=self._hosts(f"{svc.name}.{svc.namespace}"),
            canary_percent=release.canary.percent if release.canary else 0,
            container_concurrency=entry.config.container_concurrency,
            sides={side: self._side_route(entry, side) for side in svc.sides},
            tags={tag: self._hosts(f"{tag}-{svc.name}.{svc.namespace}") for tag in TAGS if tag in svc.sides},
            previous=self._side_route(entry, "previous") if release.previous else None,
            previous_percent=release.previous.percent if release.previous else 0,
        )

    def status(self, entry: ServiceEntry) -> dict[str, Any]:
        """The PaddleService status block: conditions, url, address, side names, replicas."""
        svc = entry.svc
        conditions = []
        for side in svc.sides:
            st = self.platform.state(svc.key, side)
            scaler = entry.sides.get(side)
            cond_type = "DefaultPaddleServiceReady" if side == "default" else "CanaryPaddleServiceReady"
            if st.ready:
                cond = _condition(cond_type, True, "ReplicasReady", f"{len(st.ready)} replica(s) ready")
            elif st.error:
                cond = _condition(cond_type, False, st.error_reason, st.error)
            elif scaler and scaler.desired > 0:
                cond = _condition(cond_type, False, "ReplicasStarting",
                                  f"waiting for {scaler.desired} replica(s) to turn ready")
            else:
                cond = _condition(cond_type, True, "ScaledToZero", "no replicas; activated on demand")
            conditions.append(cond)
        conditions.append(_condition("RoutesReady", True, "RoutesPublished",
                                     f"routed by the activator as {svc.host(self.domain)} (tag routes: "
                                     + ", ".join(svc.tag_host(t, self.domain) for t in svc.sides) + ")"))
        failing = next((c for c in conditions if c["status"] != "True"), None)
        conditions.insert(0, _condition(
            "Ready", failing is None, "ServiceReady" if failing is None else
            (failing["reason"] if failing["reason"] == "ModelPullFailed" else "NotReady"),
            "" if failing is None else failing["message"]))
        release = entry.release
        assert release is not None
        conditions.append(_condition(rollout.RELEASED, release.reason == rollout.AT_TARGET, release.reason,
                                     release.message, release.since))
        status: dict[str, Any] = {
            "conditions": conditions,
            "url": svc.url(self.domain),
            "address": {"url": f"http://{svc.name}.{svc.namespace}.svc.cluster.local"},
            "replicas": 0,  # ready replicas of every side in the release (its sides are the spec's + previous)
        }
        for side, traffic in release.sides().items():
            spec = entry.specs.get(traffic.revision)
            block: dict[str, Any] = {"name": svc.side_name(side)}
            if side in TAGS:
                block["url"] = f"http://{svc.tag_host(side, self.domain)}"
            if spec is not None:
                block.update(image=spec.image, argHash=spec.arg_hash)
            ready = len(self.platform.state(svc.key, side).ready)
            block.update(rollout.side_status(traffic), readyReplicas=ready)
            status[side] = block
            status["replicas"] += ready
        if svc.metadata.generation is not None:
            status["observedGeneration"] = svc.metadata.generation
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


def _condition(cond_type: str, ok: bool, reason: str, message: str, since: float | None = None) -> dict[str, Any]:
    return {
        "type": cond_type,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)),
    }


__all__ = ["Controller", "PromoteRefused", "SpecError", "VersionedRoutes"]
