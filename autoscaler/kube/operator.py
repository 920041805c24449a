"""The PaddleService reconciler of the in-cluster mode: custom resources in, controller + status out.

An informer (list + watch + resync) feeds a work queue; each reconcile validates the resource,
hands it to the platform-agnostic Controller (children, scaling, routes) and writes status back.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from typing import Any

from autoscaler.controller import Controller
from autoscaler.kube.client import Informer, Kube, KubeError, resource_path, retry_on_conflict
from autoscaler.kube.manifests import split_key
from autoscaler.platform import Platform
from autoscaler.spec import API_GROUP, API_VERSION, PLURAL, PaddleService, SpecError

log = logging.getLogger("elasticserving.operator")

FINALIZER = f"{API_GROUP}/children"


def _refused(cond_type: str, message: str) -> dict[str, Any]:
    return {"type": cond_type, "status": "False", "reason": "InvalidSpec", "message": message,
            "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def invalid_status(obj: dict[str, Any], err: SpecError, domain: str,
                   serving: dict[str, Any] | None) -> dict[str, Any]:
    """Status of a resource whose spec is refused; `serving` is the status of the last valid spec
    still running (kept, with Ready=False), or None."""
    md = obj.get("metadata") or {}
    name, ns = md.get("name", ""), md.get("namespace", "default")
    message = f"{err.field}: {err.message}" if err.field else err.message
    if serving is not None:
        status = copy.deepcopy(serving)
        conds = [c for c in status.get("conditions", []) if c.get("type") != "Ready"]
        status["conditions"] = [_refused("Ready", f"{message} (still serving the last valid spec)")] + conds
    else:
        status = {"conditions": [_refused("Ready", message), _refused("DefaultPaddleServiceReady", message),
                                 _refused("RoutesReady", "no valid spec to route to")],
                  "url": f"http://{name}.{ns}.{domain}", "replicas": 0}
    if md.get("generation") is not None:
        status["observedGeneration"] = md["generation"]
    return status


def _without_scale_field(obj: dict[str, Any]) -> dict[str, Any]:
    """spec.replicas belongs to the CRD's scale subresource, not to the PaddleService model: the
    autoscaler decides each side's replicas, so the field is ignored."""
    spec = obj.get("spec")
    if not isinstance(spec, dict) or "replicas" not in spec:
        return obj
    return dict(obj, spec={k: v for k, v in spec.items() if k != "replicas"})


def merge_transition_times(new: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    """Keep a condition's lastTransitionTime while its status does not change. `Released` keeps the
    controller's own: the release (autoscaler/rollout.py) stamps each change of reason, and a new
    leader reads it back from status."""
    before = {c.get("type"): c for c in (old or {}).get("conditions") or []}
    for c in new.get("conditions") or []:
        if c.get("type") == "Released":
            continue
        prev = before.get(c.get("type"))
        if prev is not None and prev.get("status") == c.get("status") and prev.get("lastTransitionTime"):
            c["lastTransitionTime"] = prev["lastTransitionTime"]
    return new


class PaddleServiceOperator:
    """Level-triggered reconcile of PaddleServices against a Controller; status via the subresource."""

    def __init__(self, kube: Kube, controller: Controller, *, namespace: str | None = None,
                 resync_seconds: float = 30.0, watch_timeout_seconds: int = 300):
        self.kube = kube
        self.controller = controller
        self.platform: Platform = controller.platform
        self.informer = Informer(kube, resource_path(API_VERSION, PLURAL, namespace), self._on_event,
                                 name="paddleservices", resync_seconds=resync_seconds,
                                 watch_timeout_seconds=watch_timeout_seconds)
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._reconciled: set[str] = set()  # keys reconciled at least once (start() waits for the listed ones)
        self._progress = asyncio.Event()
        self._forced: set[str] = set()
        self._applied: dict[str, tuple[str | None, int | None]] = {}  # key -> (uid, generation)
        self._invalid: dict[str, tuple[dict[str, Any], SpecError]] = {}
        self._statuses: dict[str, dict[str, Any]] = {}  # from the controller, latest
        self._status_dirty: set[str] = set()
        self._written: dict[str, dict[str, Any]] = {}  # last status written per key
        self._status_wake = asyncio.Event()
        self._failures: dict[str, int] = {}
        self._tasks: list[asyncio.Task] = []
        controller.on_status = self._controller_status
        self.platform.on_drift = self._drifted  # a child deleted or edited: reconcile at once, not at resync

    # ---- lifecycle ------------------------------------------------------------------------------
    async def start(self, initial_timeout: float = 60.0) -> None:
        """Watch and reconcile; returns once every PaddleService of the first list was reconciled once
        (at most `initial_timeout` s), so a new leader's first route table holds the services that
        exist: an activator takes a new leader's table whole, and fails the requests it holds for a
        service missing from it."""
        self.informer.start()
        self._tasks.append(asyncio.create_task(self._worker(), name="reconcile"))  # one key at a time
        self._tasks.append(asyncio.create_task(self._status_loop(), name="status-writer"))
        try:
            await asyncio.wait_for(self._first_reconciles(), initial_timeout)
        except TimeoutError:
            pending = set(self.informer.store) - self._reconciled
            log.warning("serving after %.0fs with %d PaddleService(s) not reconciled yet%s", initial_timeout,
                        len(pending), f" ({sorted(pending)[0]}, ...)" if pending else " (not listed yet)")

    async def _first_reconciles(self) -> None:
        await self.informer.wait_synced()
        while set(self.informer.store) - self._reconciled:
            self._progress.clear()
            await self._progress.wait()

    async def close(self) -> None:
        await self.informer.stop()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()

    # ---- events -> queue ------------------------------------------------------------------------
    def _on_event(self, kind: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        key = f"{obj['metadata'].get('namespace')}/{obj['metadata'].get('name')}"
        if kind == "SYNC":
            self._forced.add(key)
            self._written.pop(key, None)
        elif kind == "MODIFIED" and old is not None:
            a, b = obj.get("metadata", {}), old.get("metadata", {})
            if all(a.get(f) == b.get(f) for f in ("generation", "finalizers", "deletionTimestamp", "labels",
                                                  "annotations")):
                # Only status changed (most likely our own write): nothing to reconcile, but the
                # status writer compares against the new status.
                if key in self._statuses or key in self._invalid:
                    self._mark_status(key)
                return
        self.enqueue(key)

    def _drifted(self, key: str) -> None:
        """A child changed behind our back: re-apply (the platform compares and repairs)."""
        if key in self.controller.services:
            self._forced.add(key)
            self.enqueue(key)

    def enqueue(self, key: str) -> None:
        if key not in self._queued:
            self._queued.add(key)
            self.queue.put_nowait(key)

    def _requeue_later(self, key: str) -> None:
        n = self._failures[key] = self._failures.get(key, 0) + 1
        self._forced.add(key)
        asyncio.get_running_loop().call_later(min(0.2 * 2 ** (n - 1), 10.0), self.enqueue, key)

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            self._queued.discard(key)
            try:
                await self.reconcile(key)
                self._failures.pop(key, None)
                self._reconciled.add(key)
                self._progress.set()
            except KubeError as exc:
                log.warning("reconcile %s failed: %s; retrying", key, exc)
                self._requeue_later(key)
            except Exception:
                log.exception("reconcile %s failed; retrying", key)
                self._requeue_later(key)

    # ---- reconcile ------------------------------------------------------------------------------
    def _path(self, key: str, sub: str | None = None) -> str:
        return resource_path(API_VERSION, PLURAL, *split_key(key), sub)

    async def reconcile(self, key: str) -> None:
        forced = key in self._forced
        self._forced.discard(key)
        obj = self.informer.store.get(key)
        if obj is None:
            await self._forget(key)
            return
        md = obj["metadata"]
        if md.get("deletionTimestamp"):
            await self._finalize(key, obj)
            return
        if FINALIZER not in (md.get("finalizers") or []):
            obj = await self._set_finalizer(key, True)
            if obj is None:
                return
            md = obj["metadata"]
        try:
            svc = PaddleService.from_dict(_without_scale_field(obj), self.controller.defaults)
        except SpecError as err:
            prev = self._invalid.get(key)
            if prev is None or prev[0]["metadata"].get("generation") != md.get("generation"):
                log.warning("%s: invalid spec: %s", key, err)
            self._invalid[key] = (obj, err)
            self._mark_status(key)
            return
        self._invalid.pop(key, None)
        ident = (md.get("uid"), md.get("generation"))
        if not forced and self._applied.get(key) == ident and key in self.controller.services:
            return
        old_uid = self._applied.get(key, (None, None))[0]
        if old_uid is not None and old_uid != md.get("uid") and key in self.controller.services:
            await self.controller.delete(key)  # recreated under the same name
        await self.controller.apply(svc)
        self._applied[key] = ident
        self._mark_status(key)

    @retry_on_conflict()
    async def _set_finalizer(self, key: str, present: bool) -> dict[str, Any] | None:
        """Add (never to a resource being deleted) or remove our finalizer; the resource as it is then."""
        obj = await self.kube.get_or_none(self._path(key))
        if obj is None or (present and obj["metadata"].get("deletionTimestamp")):
            return None
        finalizers = list(obj["metadata"].get("finalizers") or [])
        if (FINALIZER in finalizers) == present:
            return obj
        if present:
            finalizers.append(FINALIZER)
        else:
            finalizers.remove(FINALIZER)
        try:
            # resourceVersion in a merge patch makes it conditional: a concurrent change -> 409 -> retry.
            return await self.kube.merge_patch(self._path(key), {"metadata": {
                "finalizers": finalizers, "resourceVersion": obj["metadata"]["resourceVersion"]}})
        except KubeError as exc:
            if present or not exc.not_found:
                raise
            return None

    async def _finalize(self, key: str, obj: dict[str, Any]) -> None:
        """The resource is being deleted: remove its children (no garbage collector needed), then
        drop our finalizer so the API server can delete it."""
        if FINALIZER in (obj["metadata"].get("finalizers") or []):
            if key in self.controller.services:
                await self.controller.delete(key)
            await self.platform.delete(key)
            await self._set_finalizer(key, False)
            log.info("%s: deleted with its children", key)
        await self._forget(key)

    async def _forget(self, key: str) -> None:
        if key in self.controller.services:
            await self.controller.delete(key)
            await self.platform.delete(key)
        for table in (self._applied, self._invalid, self._statuses, self._written):
            table.pop(key, None)
        self._status_dirty.discard(key)

    # ---- status ---------------------------------------------------------------------------------
    def _controller_status(self, key: str, status: dict[str, Any]) -> None:
        if self._statuses.get(key) != status:
            self._statuses[key] = status
            self._mark_status(key)

    def _mark_status(self, key: str) -> None:
        self._status_dirty.add(key)
        self._status_wake.set()

    def desired_status(self, key: str) -> dict[str, Any] | None:
        obj = self.informer.store.get(key)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return None
        if key in self._invalid:
            serving = self._statuses.get(key) if key in self.controller.services else None
            status = invalid_status(obj, self._invalid[key][1], self.controller.domain, serving)
        elif key in self._statuses and key in self.controller.services:
            status = copy.deepcopy(self._statuses[key])
            if self._applied.get(key, (None, None))[0] != obj["metadata"].get("uid"):
                return None
        else:
            return None
        return merge_transition_times(status, obj.get("status") or {})

    async def _status_loop(self) -> None:
        while True:
            await self._status_wake.wait()
            self._status_wake.clear()
            for key in sorted(self._status_dirty):
                self._status_dirty.discard(key)
                try:
                    await self.write_status(key)
                except KubeError as exc:
                    if not exc.not_found:
                        log.warning("%s: status update failed: %s", key, exc)
                        self._status_dirty.add(key)
                except Exception:
                    log.exception("%s: status update failed", key)
            if self._status_dirty:
                await asyncio.sleep(0.5)
                self._status_wake.set()

    async def write_status(self, key: str) -> None:
        want = self.desired_status(key)
        if want is None:  # also when the resource is gone from the cache
            return
        current = self.informer.store[key].get("status") or {}
        if want == current or want == self._written.get(key):
            return
        # merge patch: remove keys we no longer report (e.g. canary)
        patch = dict(want, **{k: None for k in current if k not in want})
        await self.kube.merge_patch(self._path(key, "status"), {"status": patch})
        self._written[key] = want
