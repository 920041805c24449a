"""The kubernetes platform: each side of a PaddleService is a Deployment + a headless Service.

The controller calls apply/delete/scale (scale = the Deployment's scale subresource); ready replicas
come from an EndpointSlice watch cache and go back to the controller through `on_change` -> routes.
The objects come from autoscaler/kube/manifests.py, the readings of them from autoscaler/kube/observed.py.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from autoscaler.kube.client import Informer, Kube, KubeError, object_key, resource_path, retry_on_conflict
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
from autoscaler.platform import Platform, ReplicaAddress, SideState
from autoscaler.spec import SIDES, PaddleService, SpecError

log = logging.getLogger("elasticserving.kubernetes")


class NotOwned(Exception):
    """A child's name is taken by an object another owner controls: the side cannot be created."""


@dataclass
class SideRecord:
    """What the platform knows of one side of one service, from the spec, the autoscaler and the watches."""

    desired: int | None = None  # the autoscaler's last count (None since a restart: the Deployment's)
    revision: str | None = None  # the revision the spec names for this side
    retiring: str | None = None  # out of the spec, its Pods still serve this revision (a promoted canary)
    served: list[ReplicaAddress] = field(default_factory=list)  # ready endpoints of this side's own Service
    ready: list[ReplicaAddress] = field(default_factory=list)  # its replicas: the ready Pods of its revision
    routed: list[ReplicaAddress] = field(default_factory=list)  # standby mode: those of `ready` taking traffic
    error: str | None = None  # from the Deployment, or why the side cannot run here (NotOwned)
    pod_error: str | None = None  # from the side's Pods
    foreign: bool = False  # another owner holds the side's child names: nothing of it is ours


@dataclass
class ServiceRecord:
    """One service: its sides (default, canary, and `previous` during a version change) and standby count."""

    # Standby mode (STANDBY_ANNOTATION, deploy/README.md): each side's Deployment runs `desired + standby`
    # Pods, `desired` of the ready ones routed (the same ones while they stay ready). The routed Pods are
    # recomputed when the ready endpoints, the desired or the standby count change, never on read (every
    # reader, a Prometheus scrape included, sees the same choice).
    standby: int = 0
    sides: dict[str, SideRecord] = field(default_factory=dict)

    def side(self, name: str) -> SideRecord:
        return self.sides.setdefault(name, SideRecord())

    def revisions(self) -> dict[str, str]:
        """side -> the revision the spec names for it."""
        return {name: r.revision for name, r in self.sides.items() if r.revision is not None}


class KubernetesPlatform(Platform):
    """Deployments + headless Services per side; readiness from EndpointSlices, sides from revisions."""

    name = "kubernetes"
    moves_sides = True  # drop() is the base no-op: `previous` has no Deployment, the rolling update removes its Pods

    def __init__(self, kube: Kube, *, namespace: str | None = None,
                 watch_timeout_seconds: int = 300, storage: StorageSettings = StorageSettings(),  # noqa: B008
                 replica_env: tuple[tuple[str, str], ...] = ()):
        super().__init__()
        self.kube = kube
        self.storage = storage
        self.replica_env = replica_env
        self.services: dict[str, ServiceRecord] = {}
        # the pods cache by service (namespace/name label), so a Pod event reads its service's Pods only
        self._pods_of: dict[str, dict[str, dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task] = set()
        selector = f"{LABEL_SERVICE},{LABEL_SIDE}"

        def informer(api: str, plural: str, handler: Any, label_selector: str) -> Informer:
            # namespace None: all namespaces
            return Informer(kube, resource_path(api, plural, namespace), handler, name=plural,
                            label_selector=label_selector, resync_seconds=0,
                            watch_timeout_seconds=watch_timeout_seconds)

        self.slices = informer("discovery.k8s.io/v1", "endpointslices", self._slice_event, selector)
        ours = f"{LABEL_MANAGED_BY}={MANAGED_BY},{selector}"
        self.deployments = informer("apps/v1", "deployments", self._deployment_event, ours)
        # Replica Pods: the revision each runs, and why a side does not turn ready (crash loops, images the
        # node lacks): requests held for it are then refused at once with the reason, as locally.
        self.pods = informer("v1", "pods", self._pod_event, ours)
        self._informers = (self.slices, self.deployments, self.pods)

    def record(self, key: str) -> ServiceRecord:
        return self.services.setdefault(key, ServiceRecord())

    def _side(self, key: str, side: str) -> SideRecord:
        return self.record(key).side(side)

    # ---- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        for informer in self._informers:
            informer.start()
        await asyncio.gather(*(informer.wait_synced() for informer in self._informers))

    async def close(self) -> None:
        await asyncio.gather(*(informer.stop() for informer in self._informers))

    # ---- watch caches ---------------------------------------------------------------------------
    def _ours(self, obj: dict[str, Any]) -> tuple[str, str] | None:
        """(service key, side) of a watched object of ours; None for anything else, or for a side whose
        child names another owner holds (its Pods are not ours to route)."""
        md = obj.get("metadata") or {}
        labels = md.get("labels") or {}
        name, side = labels.get(LABEL_SERVICE), labels.get(LABEL_SIDE)
        if not name or side not in SIDES:
            return None
        key = f"{md.get('namespace')}/{name}"
        rec = self.services.get(key)
        if rec is not None and side in rec.sides and rec.sides[side].foreign:
            return None
        return key, side

    def _slice_event(self, kind: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        ref = self._ours(obj)
        if ref is None:
            return
        key, side = ref
        ns, name = split_key(key)
        svc_name = workload_name(name, side)
        slices = [s for s in self.slices.store.values()
                  if s["metadata"].get("namespace") == ns
                  # Only slices of our own Service: labels alone can be put on any slice by anyone who
                  # may write EndpointSlices in the namespace, the service-name is the control plane's.
                  and (s["metadata"].get("labels") or {}).get(SERVICE_NAME_LABEL) == svc_name
                  and self._ours(s) == ref]
        ready = ready_endpoints(slices)
        rec = self._side(key, side)
        if ready != rec.served:
            rec.served = ready
            self._attribute(key)
        if kind == "DELETED":
            self._forget_if_empty(key)

    def _deployment_event(self, kind: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        ref = self._ours(obj)
        if ref is None:
            return
        if kind == "DELETED" or (kind == "MODIFIED" and old is not None and (
                (obj["metadata"].get("annotations") or {}).get(HASH_ANNOTATION)
                != (old["metadata"].get("annotations") or {}).get(HASH_ANNOTATION))):
            self.on_drift(ref[0])
        rec = self._side(*ref)
        changed = False
        if rec.desired is None and self.record(ref[0]).standby:
            changed = self._update_routed(*ref)  # the desired count still comes from the Deployment
        err = None if kind == "DELETED" else deployment_error(obj)
        if err != rec.error:
            rec.error = err
            changed = True
        if changed:
            self.on_change(ref[0])
        if kind == "DELETED":
            self._forget_if_empty(ref[0])

    def _pod_event(self, kind: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        self._index_pod(kind, obj)
        ref = self._ours(obj)
        if ref is None:
            return
        rev, was = ((o or {}).get("metadata", {}).get("labels", {}).get(LABEL_REVISION) for o in (obj, old))
        if kind != "MODIFIED" or rev != was or bool(obj["metadata"].get("deletionTimestamp")) != bool(
                ((old or {}).get("metadata") or {}).get("deletionTimestamp")):
            self._attribute(ref[0])  # a Pod's revision is known (or gone): its side may change
        err = side_failure([p for p in self._pods_of.get(ref[0], {}).values() if self._ours(p) == ref])
        rec = self._side(*ref)
        if err != rec.pod_error:
            rec.pod_error = err
            if err:
                log.warning("%s/%s: %s", ref[0], ref[1], err)
            self.on_change(ref[0])
        if kind == "DELETED":
            self._forget_if_empty(ref[0])

    def _index_pod(self, kind: str, obj: dict[str, Any]) -> None:
        """Keep _pods_of as the pods cache is (the informer delivers every change, relists included)."""
        md = obj.get("metadata") or {}
        name = (md.get("labels") or {}).get(LABEL_SERVICE)
        if not name:
            return
        key = f"{md.get('namespace')}/{name}"
        pods = self._pods_of.setdefault(key, {})
        if kind == "DELETED":
            pods.pop(object_key(obj), None)
            if not pods:
                del self._pods_of[key]
        else:
            pods[object_key(obj)] = obj

    def _forget_if_empty(self, key: str) -> None:
        """Drop the record of a service nothing is known of any more (deleted, its objects gone)."""
        rec = self.services.get(key)
        if rec is not None and not rec.standby and all(r == SideRecord() for r in rec.sides.values()):
            del self.services[key]

    def _deployment(self, key: str, side: str) -> dict[str, Any] | None:
        ns, name = split_key(key)
        return self.deployments.store.get(f"{ns}/{workload_name(name, side)}")

    # ---- revisions ------------------------------------------------------------------------------
    def _pod_revision(self, ns: str, pod: str) -> str | None:
        labels = ((self.pods.store.get(f"{ns}/{pod}") or {}).get("metadata") or {}).get("labels") or {}
        return labels.get(LABEL_REVISION)

    @staticmethod
    def side_of_pod(revisions: dict[str, str], own: str, rev: str | None) -> str | None:
        """The side a ready Pod of side `own`'s Service serves, given the revision each side of the spec
        runs: the side whose revision it runs; else, in the default's Service, `previous` (the old Pods
        of a rolling update: the outgoing version); else none. A Pod whose revision is not known, or any
        Pod before the first apply names revisions (a new leader), stays with its Service."""
        if rev is None or not revisions:
            return own
        if revisions.get(own) == rev:
            return own
        return next((side for side, r in revisions.items() if r == rev), "previous" if own == "default" else None)

    def _attribute(self, key: str) -> None:
        """Each side's replicas from the ready endpoints of all the service's Services, by revision;
        routes follow (on_change) when any side's changed."""
        ns, rec = split_key(key)[0], self.record(key)
        revisions = rec.revisions()
        sides: dict[str, dict[str, ReplicaAddress]] = {side: {} for side in (*SIDES, "previous")}
        for own in SIDES:
            for e in rec.side(own).served:
                side = self.side_of_pod(revisions, own, self._pod_revision(ns, e.id))
                if side is not None:
                    sides[side][e.id] = e
        changed = False
        for side, eps in sides.items():
            ready = sorted(eps.values(), key=lambda e: e.id)
            if ready != rec.side(side).ready:
                changed = True
                rec.side(side).ready = ready
                self._update_routed(key, side)
                log.info("%s/%s: %d ready endpoint(s)", key, side, len(ready))
        self._retire_covered(key)
        if changed:
            self.on_change(key)

    def _runs_outgoing(self, key: str) -> bool:
        """Whether any live Pod of the service runs a revision no side of the spec names."""
        named = {None, *self.record(key).revisions().values()}
        mds = [pod.get("metadata") or {} for pod in self._pods_of.get(key, {}).values()]
        return any(not md.get("deletionTimestamp") and (md.get("labels") or {}).get(LABEL_REVISION) not in named
                   for md in mds)

    def _retire_covered(self, key: str) -> None:
        """Delete each retiring side once the side that now names its revision has a ready Pod of it
        in its own Service (or nothing names it any more)."""
        ns, name = split_key(key)
        rec = self.record(key)
        for side, r in list(rec.sides.items()):
            if r.retiring is None:
                continue
            heirs = [s for s, rev in rec.revisions().items() if s != side and rev == r.retiring]
            if heirs and not any(self._pod_revision(ns, e.id) == r.retiring for s in heirs for e in rec.side(s).served):
                continue
            r.retiring = None
            log.info("%s/%s: its replicas' version runs on its own side now; removing %s", key, side, side)
            task = asyncio.get_running_loop().create_task(self._delete_side(ns, name, side))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # ---- standby routing ------------------------------------------------------------------------
    def _desired_of(self, key: str, side: str) -> int:
        """Routed replicas wanted: the autoscaler's last scale, else (after a restart) the
        Deployment's replicas minus the standby Pods."""
        rec = self.services.get(key)
        desired = rec.sides[side].desired if rec is not None and side in rec.sides else None
        if desired is None:
            dep = self._deployment(key, side)
            replicas = int(((dep or {}).get("spec") or {}).get("replicas") or 0)
            desired = max(0, replicas - (rec.standby if rec is not None else 0))
        return desired

    def _update_routed(self, key: str, side: str) -> bool:
        """Standby mode: route `desired` of the ready Pods, those already routed first (no flapping),
        then by name. True when the routed set changed."""
        rec = self._side(key, side)
        before = rec.routed
        chosen: list[ReplicaAddress] = []
        if self.record(key).standby:
            kept = [e.id for e in before]
            ready = sorted(rec.ready, key=lambda e: (e.id not in kept, kept.index(e.id) if e.id in kept else 0, e.id))
            chosen = ready[:self._desired_of(key, side)]
        rec.routed = chosen
        return chosen != before

    # ---- Platform -------------------------------------------------------------------------------
    def state(self, key: str, side: str) -> SideState:
        """A read of the caches only: the same answer for every caller until the next event."""
        rec = self.services.get(key) or ServiceRecord()
        r = rec.sides.get(side) or SideRecord()
        ready = list(r.ready)
        if side not in SIDES:  # `previous`: the old Pods of a version change, kept by the rolling update
            error = None if ready or self._runs_outgoing(key) else "the outgoing version has no replica left"
            return SideState(desired=len(ready), ready=ready, error=error)
        desired = self._desired_of(key, side)
        spare = 0
        if rec.standby:
            spare = len(ready) - len(r.routed)
            ready = list(r.routed)
        error = (r.error or r.pod_error) if not ready else None
        # runtime.storage starts every failed pull's reason so (pod_failure quotes it)
        pulled = bool(error) and ": cannot pull " in error  # type: ignore[operator]
        return SideState(desired=desired, ready=ready, starting=max(0, desired - len(ready)),
                         error=error, error_reason="ModelPullFailed" if pulled else "ReplicaFailed",
                         standby=spare)

    async def apply(self, svc: PaddleService) -> None:
        rec = self.record(svc.key)
        try:
            standby = svc.standby()
        except SpecError:
            standby = 0  # the controller reports the spec error
        changed, rec.standby = standby != rec.standby, standby
        for side in svc.sides:
            side_spec = svc.side_spec(side)
            assert side_spec is not None
            rec.side(side).revision, rec.side(side).retiring = side_spec.revision, None
        for side in svc.sides:
            r = rec.side(side)
            try:
                await self._apply_deployment(svc, side)
                await self._apply_child(build_service(svc, side), "v1", "services",
                                        ("selector", "ports", "publishNotReadyAddresses"))
            except NotOwned as exc:  # the side cannot run here: say why in its status, touch nothing
                log.warning("%s", exc)
                r.foreign, r.error = True, str(exc)
                self.on_change(svc.key)
                continue
            if r.foreign:
                r.foreign, r.error = False, None
                self.on_change(svc.key)
        named = set(rec.revisions().values())
        for side in SIDES:
            if side not in svc.sides:
                r = rec.side(side)
                r.revision = None
                dep = self._deployment(svc.key, side) or {}
                template = ((dep.get("spec") or {}).get("template") or {}).get("metadata") or {}
                rev = (template.get("labels") or {}).get(LABEL_REVISION)
                if rev is not None and rev in named:
                    r.retiring = rev  # a promoted canary: it serves until relieved
                elif r.retiring is None:
                    await self._delete_side(svc.namespace, svc.name, side)
        self._attribute(svc.key)
        if changed:  # more or fewer standby Pods for the same demand
            for side in svc.sides:
                desired = rec.side(side).desired
                if desired is not None:
                    await self.scale(svc.key, side, desired)
                self._update_routed(svc.key, side)
            self.on_change(svc.key)

    async def move(self, key: str, from_side: str, to_side: str) -> None:
        """A side's revision is named by another side: its Pods serve there at once (a promoted canary's as
        `default`; the outgoing default's as `previous`, which is whatever revision the spec no longer
        names). The Deployments change in `apply`."""
        rec = self.record(key)
        src = rec.side(from_side)
        rev, desired, src.revision, src.desired = src.revision, src.desired, None, None
        if rev is not None and to_side in SIDES:
            dst = rec.side(to_side)
            dst.revision = rev
            if desired is not None:  # the side's Deployment gets its count with its new version
                dst.desired = desired
        self._attribute(key)

    async def _apply_deployment(self, svc: PaddleService, side: str) -> None:
        rec = self.record(svc.key)
        desired = rec.side(side).desired
        replicas = (desired or 0) + rec.standby
        # On update, replicas stay as the autoscaler set them (scale subresource), or as it last asked
        # (a promoted canary's count goes with its version to the default's Deployment).
        known = ("replicas",) if desired is not None else ()
        await self._apply_child(build_deployment(svc, side, replicas=replicas, storage=self.storage,
                                                   replica_env=self.replica_env), "apps/v1", "deployments",
                                DEPLOYMENT_FIELDS + known)

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
        rec = self.services.get(f"{namespace}/{name}")
        if rec is not None and side in rec.sides:
            rec.sides[side].desired, rec.sides[side].routed = None, []

    async def delete(self, key: str) -> None:
        ns, name = split_key(key)
        for side in SIDES:
            await self._delete_side(ns, name, side)
        self.services.pop(key, None)
        # Anything else we labelled for this service (e.g. left over by an older version).
        selector = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_SERVICE}={name}"
        for api, plural in (("apps/v1", "deployments"), ("v1", "services")):
            items = (await self.kube.get(resource_path(api, plural, ns), labelSelector=selector)).get("items", [])
            for item in items:
                if owned_by(item, name):
                    await self.kube.delete(resource_path(api, plural, ns, item["metadata"]["name"]))

    async def scale(self, key: str, side: str, replicas: int) -> None:
        if side not in SIDES or self._side(key, side).foreign:
            return  # `previous` has no Deployment; never scale one that is not ours
        ns, name = split_key(key)
        r, standby = self._side(key, side), self.record(key).standby
        before, r.desired = r.desired, replicas
        if standby and before != replicas:
            self._update_routed(key, side)
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
