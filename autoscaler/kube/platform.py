"""The kubernetes platform: each side of a PaddleService is a Deployment + a headless Service.

The controller calls apply/delete/scale (scale = the Deployment's scale subresource); ready replicas
come from an EndpointSlice watch cache and go back to the controller through `on_change` -> routes.
The objects come from autoscaler/kube/manifests.py, the readings of them from autoscaler/kube/observed.py.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from autoscaler.kube.client import Informer, Kube, KubeError, resource_path, retry_on_conflict
from autoscaler.kube.manifests import (
    DEPLOYMENT_FIELDS,
    HASH_ANNOTATION,
    LABEL_MANAGED_BY,
    LABEL_REVISION,
    LABEL_SERVICE,
    LABEL_SIDE,
    MANAGED_BY,
    SERVICE_NAME_LABEL,
    build_deployment,
    build_service,
    owned_by,
    split_key,
    workload_name,
)
from autoscaler.kube.model_volume import StorageSettings
from autoscaler.kube.observed import deployment_error, ready_endpoints, side_failure
from autoscaler.platform import Endpoint, Platform, SideState
from autoscaler.spec import SIDES, PaddleService, SpecError

log = logging.getLogger("elasticserving.kubernetes")


class NotOwned(Exception):
    """A child's name is taken by an object another owner controls: the side cannot be created."""


class KubernetesPlatform(Platform):
    """Deployments + headless Services per side; readiness from EndpointSlices."""

    name = "kubernetes"
    moves_sides = True

    def __init__(self, kube: Kube, *, namespace: str | None = None, resync_seconds: float = 300.0,
                 watch_timeout_seconds: int = 300, storage: StorageSettings = StorageSettings(),  # noqa: B008
                 replica_env: tuple[tuple[str, str], ...] = ()):
        super().__init__()
        self.kube = kube
        self.storage = storage
        self.replica_env = replica_env
        self.namespace = namespace  # None: all namespaces
        self._desired: dict[tuple[str, str], int] = {}
        self._served: dict[tuple[str, str], list[Endpoint]] = {}  # ready endpoints of each side's Service
        self._ready: dict[tuple[str, str], list[Endpoint]] = {}  # each side's: the ready Pods of its revision
        self._revision: dict[tuple[str, str], str] = {}  # the revision each side of the spec runs
        # Removed sides whose Pods still serve a revision the spec names (a promoted canary): deleted once
        # the side that names it has a ready Pod of its own.
        self._retiring: dict[tuple[str, str], str] = {}
        self._tasks: set[asyncio.Task] = set()
        self._errors: dict[tuple[str, str], str | None] = {}  # from the Deployment (or not ours)
        self._pod_errors: dict[tuple[str, str], str] = {}  # from the side's Pods
        self._foreign: set[tuple[str, str]] = set()  # sides whose child names another owner holds
        # Standby mode (STANDBY_ANNOTATION): each side's Deployment runs `desired + standby` Pods; only
        # `desired` of the ready ones are routed (the same ones while they stay ready), the rest wait
        # with the model loaded, so a scale from zero is a routing change and a Pod start refills them.
        # The routed Pods of each side in standby mode, recomputed when the ready endpoints, the
        # desired count or the standby count change (never on read: every reader, a Prometheus
        # scrape included, sees the same choice).
        self._standby: dict[str, int] = {}
        self._routed: dict[tuple[str, str], list[Endpoint]] = {}
        selector = f"{LABEL_SERVICE},{LABEL_SIDE}"
        self.slices = Informer(kube, resource_path("discovery.k8s.io/v1", "endpointslices", namespace),
                               self._slice_event, name="endpointslices", label_selector=selector,
                               resync_seconds=0, watch_timeout_seconds=watch_timeout_seconds)
        self.deployments = Informer(kube, resource_path("apps/v1", "deployments", namespace),
                                    self._deployment_event, name="deployments",
                                    label_selector=f"{LABEL_MANAGED_BY}={MANAGED_BY},{selector}",
                                    resync_seconds=0, watch_timeout_seconds=watch_timeout_seconds)
        # Replica Pods, only for why a side does not turn ready (crash loops, images the node lacks):
        # requests held for it are then refused at once with the reason, as on the local platform.
        self.pods = Informer(kube, resource_path("v1", "pods", namespace), self._pod_event, name="pods",
                             label_selector=f"{LABEL_MANAGED_BY}={MANAGED_BY},{selector}",
                             resync_seconds=0, watch_timeout_seconds=watch_timeout_seconds)

    # ---- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        for informer in (self.slices, self.deployments, self.pods):
            informer.start()
        await asyncio.gather(self.slices.wait_synced(), self.deployments.wait_synced(), self.pods.wait_synced())

    async def close(self) -> None:
        await asyncio.gather(self.slices.stop(), self.deployments.stop(), self.pods.stop())

    # ---- watch caches ---------------------------------------------------------------------------
    @staticmethod
    def _side_of(obj: dict[str, Any]) -> tuple[str, str] | None:
        md = obj.get("metadata") or {}
        labels = md.get("labels") or {}
        name, side = labels.get(LABEL_SERVICE), labels.get(LABEL_SIDE)
        if not name or side not in SIDES:
            return None
        return f"{md.get('namespace')}/{name}", side

    def _slice_event(self, kind: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        ref = self._side_of(obj)
        if ref is None or ref in self._foreign:  # another owner's Service: its Pods are not ours to route
            return
        key, side = ref
        svc_name = workload_name(split_key(key)[1], side)
        ns = split_key(key)[0]
        slices = [s for s in self.slices.store.values()
                  if s["metadata"].get("namespace") == ns
                  # Only slices of our own Service: labels alone can be put on any slice by anyone who
                  # may write EndpointSlices in the namespace, the service-name is the control plane's.
                  and (s["metadata"].get("labels") or {}).get(SERVICE_NAME_LABEL) == svc_name
                  and self._side_of(s) == ref]
        ready = ready_endpoints(slices)
        if ready != self._served.get(ref, []):
            self._served[ref] = ready
            if not ready:
                self._served.pop(ref, None)
            self._attribute(key)

    # ---- revisions ------------------------------------------------------------------------------
    def _pod_revision(self, ns: str, pod: str) -> str | None:
        labels = ((self.pods.store.get(f"{ns}/{pod}") or {}).get("metadata") or {}).get("labels") or {}
        return labels.get(LABEL_REVISION)

    def _side_of_pod(self, key: str, own: str, rev: str | None) -> str | None:
        """The side a ready Pod of side `own`'s Service serves: the side whose revision it runs; else, in
        the default's Service, `previous` (the old Pods of a rolling update: the outgoing version); else
        none. A Pod whose revision is not known, or any Pod before the first apply names revisions (a
        new leader), stays with its Service."""
        named = [side for side in (own, *SIDES) if (key, side) in self._revision]
        if rev is None or not named:
            return own
        return next((side for side in named if self._revision[(key, side)] == rev),
                    "previous" if own == "default" else None)

    def _attribute(self, key: str) -> None:
        """Each side's replicas from the ready endpoints of all the service's Services, by revision;
        routes follow (on_change) when any side's changed."""
        ns = split_key(key)[0]
        sides: dict[str, dict[str, Endpoint]] = {side: {} for side in (*SIDES, "previous")}
        for own in SIDES:
            for e in self._served.get((key, own), []):
                side = self._side_of_pod(key, own, self._pod_revision(ns, e.id))
                if side is not None:
                    sides[side][e.id] = e
        changed = False
        for side, eps in sides.items():
            ref, ready = (key, side), sorted(eps.values(), key=lambda e: e.id)
            if ready != self._ready.get(ref, []):
                changed = True
                if ready:
                    self._ready[ref] = ready
                else:
                    self._ready.pop(ref, None)
                self._update_routed(ref)
                log.info("%s/%s: %d ready endpoint(s)", key, side, len(ready))
        self._retire_covered(key)
        if changed:
            self.on_change(key)

    def _runs_outgoing(self, key: str) -> bool:
        """Whether any live Pod of the service runs a revision no side of the spec names."""
        ns, name = split_key(key)
        named = {rev for (k, _), rev in self._revision.items() if k == key}
        for pod in self.pods.store.values():
            md = pod.get("metadata") or {}
            labels = md.get("labels") or {}
            if md.get("namespace") == ns and labels.get(LABEL_SERVICE) == name and not md.get("deletionTimestamp") \
                    and labels.get(LABEL_REVISION) not in (None, *named):
                return True
        return False

    def _retire_covered(self, key: str) -> None:
        """Delete each retiring side once the side that now names its revision has a ready Pod of it
        in its own Service (or nothing names it any more)."""
        ns, name = split_key(key)
        for (k, side), rev in list(self._retiring.items()):
            if k != key:
                continue
            heirs = [s for s in SIDES if s != side and self._revision.get((key, s)) == rev]
            if heirs and not any(self._pod_revision(ns, e.id) == rev
                                 for s in heirs for e in self._served.get((key, s), [])):
                continue
            del self._retiring[(key, side)]
            log.info("%s/%s: its replicas' version runs on its own side now; removing %s", key, side, side)
            task = asyncio.get_running_loop().create_task(self._delete_side(ns, name, side))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _deployment_event(self, kind: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        ref = self._side_of(obj)
        if ref is None or ref in self._foreign:
            return
        if kind == "DELETED" or (kind == "MODIFIED" and old is not None and (
                (obj["metadata"].get("annotations") or {}).get(HASH_ANNOTATION)
                != (old["metadata"].get("annotations") or {}).get(HASH_ANNOTATION))):
            self.on_drift(ref[0])
        changed = False
        if ref not in self._desired and self._standby.get(ref[0]):
            changed = self._update_routed(ref)  # the desired count still comes from the Deployment
        err = None if kind == "DELETED" else deployment_error(obj)
        if err != self._errors.get(ref):
            self._errors[ref] = err
            changed = True
        if changed:
            self.on_change(ref[0])

    def _pod_event(self, kind: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        ref = self._side_of(obj)
        if ref is None or ref in self._foreign:
            return
        ns = split_key(ref[0])[0]
        rev, was = ((o or {}).get("metadata", {}).get("labels", {}).get(LABEL_REVISION) for o in (obj, old))
        if kind != "MODIFIED" or rev != was or bool(obj["metadata"].get("deletionTimestamp")) != bool(
                ((old or {}).get("metadata") or {}).get("deletionTimestamp")):
            self._attribute(ref[0])  # a Pod's revision is known (or gone): its side may change
        err = side_failure([p for p in self.pods.store.values()
                            if p["metadata"].get("namespace") == ns and self._side_of(p) == ref])
        if err != self._pod_errors.get(ref):
            if err:
                self._pod_errors[ref] = err
                log.warning("%s/%s: %s", ref[0], ref[1], err)
            else:
                self._pod_errors.pop(ref, None)
            self.on_change(ref[0])

    def _deployment(self, key: str, side: str) -> dict[str, Any] | None:
        ns, name = split_key(key)
        return self.deployments.store.get(f"{ns}/{workload_name(name, side)}")

    # ---- standby routing ------------------------------------------------------------------------
    def _desired_of(self, ref: tuple[str, str]) -> int:
        """Routed replicas wanted: the autoscaler's last scale, else (after a restart) the
        Deployment's replicas minus the standby Pods."""
        desired = self._desired.get(ref)
        if desired is None:
            dep = self._deployment(*ref)
            replicas = int(((dep or {}).get("spec") or {}).get("replicas") or 0)
            desired = max(0, replicas - self._standby.get(ref[0], 0))
        return desired

    def _update_routed(self, ref: tuple[str, str]) -> bool:
        """Standby mode: route `desired` of the ready Pods, those already routed first (no flapping),
        then by name. True when the routed set changed."""
        before = self._routed.get(ref, [])
        if not self._standby.get(ref[0], 0):
            chosen: list[Endpoint] = []
        else:
            kept = [e.id for e in before]
            ready = sorted(self._ready.get(ref, []),
                           key=lambda e: (e.id not in kept, kept.index(e.id) if e.id in kept else 0, e.id))
            chosen = ready[:self._desired_of(ref)]
        if chosen:
            self._routed[ref] = chosen
        else:
            self._routed.pop(ref, None)
        return chosen != before

    # ---- Platform -------------------------------------------------------------------------------
    def state(self, key: str, side: str) -> SideState:
        """A read of the caches only: the same answer for every caller until the next event."""
        ref = (key, side)
        ready = list(self._ready.get(ref, []))
        if side not in SIDES:  # `previous`: the old Pods of a version change, kept by the rolling update
            error = None if ready or self._runs_outgoing(key) else "the outgoing version has no replica left"
            return SideState(desired=len(ready), ready=ready, error=error)
        desired = self._desired_of(ref)
        spare = 0
        if self._standby.get(key, 0):
            routed = list(self._routed.get(ref, []))
            spare = len(ready) - len(routed)
            ready = routed
        error = (self._errors.get(ref) or self._pod_errors.get(ref)) if not ready else None
        # runtime.storage starts every failed pull's reason so (pod_failure quotes it)
        pulled = bool(error) and ": cannot pull " in error  # type: ignore[operator]
        return SideState(desired=desired, ready=ready, starting=max(0, desired - len(ready)),
                         error=error, error_reason="ModelPullFailed" if pulled else "ReplicaFailed",
                         standby=spare)

    async def apply(self, svc: PaddleService) -> None:
        try:
            standby = svc.standby()
        except SpecError:
            standby = 0  # the controller reports the spec error
        changed = standby != self._standby.get(svc.key, 0)
        self._standby[svc.key] = standby
        for side in svc.sides:
            side_spec = svc.side_spec(side)
            assert side_spec is not None
            self._revision[(svc.key, side)] = side_spec.revision
            self._retiring.pop((svc.key, side), None)
        for side in svc.sides:
            ref = (svc.key, side)
            try:
                await self._apply_deployment(svc, side)
                await self._apply_service(svc, side)
            except NotOwned as exc:  # the side cannot run here: say why in its status, touch nothing
                log.warning("%s", exc)
                self._foreign.add(ref)
                self._errors[ref] = str(exc)
                self.on_change(svc.key)
                continue
            if ref in self._foreign:
                self._foreign.discard(ref)
                self._errors.pop(ref, None)
                self.on_change(svc.key)
        for side in SIDES:
            if side not in svc.sides:
                self._revision.pop((svc.key, side), None)
                rev = self._template_revision(svc.key, side)
                if rev is not None and rev in {self._revision.get((svc.key, s)) for s in svc.sides}:
                    self._retiring[(svc.key, side)] = rev  # a promoted canary: it serves until relieved
                elif (svc.key, side) not in self._retiring:
                    await self._delete_side(svc.namespace, svc.name, side)
        self._attribute(svc.key)
        if changed:  # more or fewer standby Pods for the same demand
            for side in svc.sides:
                if (svc.key, side) in self._desired:
                    await self.scale(svc.key, side, self._desired[(svc.key, side)])
                self._update_routed((svc.key, side))
            self.on_change(svc.key)

    def _template_revision(self, key: str, side: str) -> str | None:
        dep = self._deployment(key, side) or {}
        labels = (((dep.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}
        return labels.get(LABEL_REVISION)

    async def move(self, key: str, from_side: str, to_side: str) -> None:
        """A side's revision is named by another side: its Pods serve there at once (a promoted canary's as
        `default`; the outgoing default's as `previous`, which is whatever revision the spec no longer
        names). The Deployments change in `apply`."""
        rev, desired = self._revision.pop((key, from_side), None), self._desired.pop((key, from_side), None)
        if rev is not None and to_side in SIDES:
            self._revision[(key, to_side)] = rev
            if desired is not None:  # the side's Deployment gets its count with its new version
                self._desired[(key, to_side)] = desired
        self._attribute(key)

    async def drop(self, key: str, side: str) -> None:
        """`previous` has no Deployment of its own: the rolling update removes its Pods."""

    async def _apply_deployment(self, svc: PaddleService, side: str) -> None:
        replicas = self._desired.get((svc.key, side), 0) + self._standby.get(svc.key, 0)
        # On update, replicas stay as the autoscaler set them (scale subresource), or as it last asked
        # (a promoted canary's count goes with its version to the default's Deployment).
        known = ("replicas",) if (svc.key, side) in self._desired else ()
        await self._apply_child(build_deployment(svc, side, replicas=replicas, storage=self.storage,
                                                   replica_env=self.replica_env), "apps/v1", "deployments",
                                DEPLOYMENT_FIELDS + known)

    async def _apply_service(self, svc: PaddleService, side: str) -> None:
        await self._apply_child(build_service(svc, side), "v1", "services",
                                ("selector", "ports", "publishNotReadyAddresses"))

    @retry_on_conflict()
    async def _apply_child(self, want: dict[str, Any], api: str, plural: str, spec_fields: tuple[str, ...]) -> None:
        """Create `want`, or update the given spec fields (and our metadata) when its config hash changed."""
        ns, name = want["metadata"]["namespace"], want["metadata"]["name"]
        path = resource_path(api, plural, ns, name)
        have = await self.kube.get_or_none(path)
        if have is None:
            try:
                await self.kube.create(resource_path(api, plural, ns), want)
                log.info("created %s %s/%s", want["kind"].lower(), ns, name)
            except KubeError as exc:
                if exc.status == 409:  # AlreadyExists (created meanwhile): retry_on_conflict compares again
                    log.debug("%s %s appeared meanwhile", want["kind"].lower(), name)
                raise
            return
        owner = want["metadata"]["ownerReferences"]
        if owner and not owned_by(have, owner[0]["name"]):
            raise NotOwned(f"{want['kind']} {ns}/{name} exists and is not owned by PaddleService "
                           f"{ns}/{owner[0]['name']}: rename one of them")
        if (have["metadata"].get("annotations") or {}).get(HASH_ANNOTATION) == \
                want["metadata"]["annotations"][HASH_ANNOTATION]:
            return
        md = have["metadata"]
        md["labels"] = want["metadata"]["labels"]
        md["annotations"] = dict(md.get("annotations") or {}, **want["metadata"]["annotations"])
        md["ownerReferences"] = want["metadata"]["ownerReferences"]
        for f in spec_fields:
            if f in want["spec"]:
                have["spec"][f] = want["spec"][f]
        await self.kube.replace(path, have)
        log.info("updated %s %s/%s", want["kind"].lower(), ns, name)

    async def _delete_owned(self, api: str, plural: str, namespace: str, child: str, owner: str) -> bool:
        """Delete a child only when it is really the PaddleService's (see owned_by)."""
        path = resource_path(api, plural, namespace, child)
        have = await self.kube.get_or_none(path)
        if have is None:
            return False
        if not owned_by(have, owner):
            log.warning("not deleting %s %s/%s: it is not owned by PaddleService %s", plural, namespace, child,
                        owner)
            return False
        return await self.kube.delete(path)

    async def _delete_side(self, namespace: str, name: str, side: str) -> None:
        wl = workload_name(name, side)
        gone_dep = await self._delete_owned("apps/v1", "deployments", namespace, wl, name)
        gone_svc = await self._delete_owned("v1", "services", namespace, wl, name)
        if gone_dep or gone_svc:
            log.info("deleted %s side of %s/%s", side, namespace, name)
        key = f"{namespace}/{name}"
        self._desired.pop((key, side), None)
        self._routed.pop((key, side), None)

    async def delete(self, key: str) -> None:
        ns, name = split_key(key)
        for side in SIDES:
            self._revision.pop((key, side), None)
            self._retiring.pop((key, side), None)
            await self._delete_side(ns, name, side)
        self._standby.pop(key, None)
        # Anything else we labelled for this service (e.g. left over by an older version).
        selector = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_SERVICE}={name}"
        for api, plural in (("apps/v1", "deployments"), ("v1", "services")):
            items = (await self.kube.get(resource_path(api, plural, ns), labelSelector=selector)).get("items", [])
            for item in items:
                if owned_by(item, name):
                    await self.kube.delete(resource_path(api, plural, ns, item["metadata"]["name"]))

    async def scale(self, key: str, side: str, replicas: int) -> None:
        if (key, side) in self._foreign or side not in SIDES:
            return  # never scale a Deployment that is not ours; `previous` has none
        ns, name = split_key(key)
        standby = self._standby.get(key, 0)
        before = self._desired.get((key, side))
        self._desired[(key, side)] = replicas
        if standby and before != replicas:
            self._update_routed((key, side))
            self.on_change(key)  # standby Pods are routed (or no longer) at once
        path = resource_path("apps/v1", "deployments", ns, workload_name(name, side), "scale")
        try:
            await self.kube.merge_patch(path, {"spec": {"replicas": replicas + standby}})
        except KubeError as exc:
            if exc.not_found:  # not created yet: apply creates it with this count
                log.warning("scale %s/%s to %d: deployment not found", key, side, replicas)
                return
            raise
        log.info("scaled %s/%s to %d%s", key, side, replicas, f" (+{standby} standby)" if standby else "")
