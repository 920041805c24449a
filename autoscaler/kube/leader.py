"""Leader election over a coordination.k8s.io/v1 Lease, so several controller replicas can run.

kube.main runs the elector; only the leader reconciles PaddleServices and scales Deployments, and the
control API's /ready follows `is_leader` so the activators' Service reaches the leader only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from autoscaler.kube.client import Kube, KubeError, resource_path

log = logging.getLogger("elasticserving.leader")


def _now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """client-go's algorithm: acquire or renew every `retry_period`; a holder that has not renewed
    for `lease_duration` (by our own clock, since we last saw the record change) may be replaced;
    a leader that cannot renew within `renew_deadline` steps down."""

    def __init__(self, kube: Kube, namespace: str, name: str, identity: str, *,
                 lease_duration: float = 15.0, renew_deadline: float = 10.0, retry_period: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        if not lease_duration > renew_deadline > retry_period > 0:
            raise ValueError("need lease_duration > renew_deadline > retry_period > 0")
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.clock = clock
        self.path = resource_path("coordination.k8s.io/v1", "leases", namespace, name)
        self.is_leader = False
        self.leader_changed = asyncio.Event()  # set on every change of is_leader
        self._observed: tuple[Any, ...] | None = None  # (holder, renewTime, transitions)
        self._observed_at = 0.0
        self._last_renew = 0.0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="leader-election")

    async def stop(self, release: bool = True) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if release and self.is_leader:
            with contextlib.suppress(Exception):
                await self._release()
        self._set_leader(False)

    def _set_leader(self, value: bool) -> None:
        if value != self.is_leader:
            self.is_leader = value
            log.info("%s %s leadership of lease %s/%s", self.identity,
                     "acquired" if value else "lost", self.namespace, self.name)
            self.leader_changed.set()
            self.leader_changed = asyncio.Event()

    async def wait_change(self) -> bool:
        await self.leader_changed.wait()
        return self.is_leader

    async def run(self) -> None:
        while True:
            try:
                ok = await asyncio.wait_for(self.try_acquire_or_renew(), self.retry_period * 2)
            except (KubeError, TimeoutError) as exc:
                log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
                ok = False
            now = self.clock()
            if ok:
                self._last_renew = now
                self._set_leader(True)
            elif self.is_leader and now - self._last_renew >= self.renew_deadline:
                self._set_leader(False)
            await asyncio.sleep(self.retry_period)

    def _spec(self, transitions: int, acquire_time: str) -> dict[str, Any]:
        return {"holderIdentity": self.identity, "leaseDurationSeconds": max(1, int(round(self.lease_duration))),
                "acquireTime": acquire_time, "renewTime": _now_micro(), "leaseTransitions": transitions}

    async def try_acquire_or_renew(self) -> bool:
        """One round; True when we hold the lease afterwards."""
        lease = await self.kube.get_or_none(self.path)
        now = self.clock()
        if lease is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": self._spec(0, _now_micro())}
            try:
                await self.kube.create(resource_path("coordination.k8s.io/v1", "leases", self.namespace), body)
            except KubeError as exc:
                if exc.status == 409:  # someone else created it first
                    return False
                raise
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"))
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        if holder and holder != self.identity and now < self._observed_at + duration:
            return False  # held by a live leader
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder == self.identity:
            new_spec = self._spec(transitions, spec.get("acquireTime") or _now_micro())
        else:
            new_spec = self._spec(transitions + 1, _now_micro())
        lease["spec"] = new_spec
        try:
            await self.kube.replace(self.path, lease)  # carries resourceVersion: conflicts lose
        except KubeError as exc:
            if exc.conflict:
                return False
            raise
        self._observed, self._observed_at = (self.identity, new_spec["renewTime"], new_spec["leaseTransitions"]), now
        return True

    async def _release(self) -> None:
        lease = await self.kube.get_or_none(self.path)
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        lease["spec"].update(holderIdentity="", leaseDurationSeconds=1)
        await self.kube.replace(self.path, lease)
        log.info("%s released lease %s/%s", self.identity, self.namespace, self.name)
