"""The kubernetes platform: each side of a PaddleService is a Deployment + a headless Service.

The controller calls apply/delete/scale (scale = the Deployment's scale subresource); ready replicas
come from an EndpointSlice watch cache and go back to the controller through `on_change` -> routes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from autoscaler.kube.client import Informer, Kube, KubeError, resource_path, retry_on_conflict
from autoscaler.kube.model_volume import STORAGE_INITIALIZER, StorageSettings, model_volume
from autoscaler.platform import Endpoint, Platform, SideState
from autoscaler.spec import API_GROUP, API_VERSION, KIND, SIDES, EndpointSpec, PaddleService, SpecError

log = logging.getLogger("elasticserving.kubernetes")

LABEL_SERVICE = f"{API_GROUP}/paddleservice"
LABEL_SIDE = f"{API_GROUP}/side"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "elasticserving"
HASH_ANNOTATION = f"{API_GROUP}/config-hash"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # set on EndpointSlices by the control plane
CONTAINER_NAME = "paddleserving"


def split_key(key: str) -> tuple[str, str]:
    ns, _, name = key.partition("/")
    return ns, name


def workload_name(name: str, side: str) -> str:
    """Deployment and Service name of one side: `<name>-default`, `<name>-canary`."""
    return f"{name}-{side}"


def selector_labels(name: str, side: str) -> dict[str, str]:
    return {LABEL_SERVICE: name, LABEL_SIDE: side}


def _labels(svc: PaddleService, side: str) -> dict[str, str]:
    labels = {k: v for k, v in svc.metadata.labels.items() if not k.startswith(f"{API_GROUP}/")}
    labels.update(selector_labels(svc.name, side))
    labels[LABEL_MANAGED_BY] = MANAGED_BY
    labels["app.kubernetes.io/part-of"] = "elasticserving"
    labels["app.kubernetes.io/component"] = "replica"
    return labels


def _owner(svc: PaddleService) -> list[dict[str, Any]]:
    if not svc.metadata.uid:
        return []
    return [{"apiVersion": API_VERSION, "kind": KIND, "name": svc.name, "uid": svc.metadata.uid,
             "controller": True, "blockOwnerDeletion": True}]


def owned_by(obj: dict[str, Any], name: str) -> bool:
    """Whether `obj` is a child of the PaddleService `name` (its controller owner reference): a
    Deployment or Service that merely has our name is somebody else's and is neither adopted, changed
    nor deleted."""
    return any(ref.get("controller") and ref.get("kind") == KIND and ref.get("name") == name
               and str(ref.get("apiVersion", "")).split("/")[0] == API_GROUP
               for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def grpc_port_of(spec: EndpointSpec) -> int | None:
    return spec.port + 1 if spec.port < 65535 else None


def pod_resources(svc: PaddleService) -> dict[str, dict[str, str]]:
    """Requests with the original's defaults (0.1 CPU, 128Mi) for scheduling; limits only where
    spec.resources.limits sets them (a limit without a request is also the request, as Kubernetes
    does). The defaults as limits would OOM-kill a model server (LAC alone holds ~330 MB) and throttle
    its start to a tenth of a core."""
    explicit_requests = svc.spec.resources.requests or {}
    limits = dict(svc.spec.resources.limits or {})
    requests = dict(svc.resources()["requests"])
    for k, v in limits.items():
        if k not in explicit_requests:
            requests[k] = v
    return {"requests": requests, "limits": limits} if limits else {"requests": requests}


_SHELL_SYNTAX = re.compile(r"[;&|<>()`\n]|\$\(")
# Commands of the shell itself (POSIX special and regular built-ins), which `exec` cannot run.
_SH_BUILTINS = frozenset({"break", ":", ".", "continue", "eval", "exit", "export", "readonly", "return", "set",
                          "shift", "times", "trap", "unset", "alias", "bg", "cd", "command", "false", "fc", "fg",
                          "getopts", "jobs", "kill", "read", "true", "umask", "unalias", "wait", "source",
                          "echo", "printf", "test", "["})


def shell_arg(arg: str) -> str:
    """`arg` for `sh -c`, prefixed with `exec` when it is one simple command: the model server then
    is the container's PID 1 and gets the kubelet's SIGTERM (a shell as PID 1 neither forwards it nor
    dies of it, so every Pod would wait out its grace period and be killed)."""
    text = arg.strip()
    first = text.split(maxsplit=1)[0] if text else ""
    if not first or first == "exec" or _SHELL_SYNTAX.search(text) or first in _SH_BUILTINS or "=" in first:
        return arg  # `exec exit 3` or `exec A=1 cmd` would run a program of that name: not found
    return f"exec {text}"


PRESTOP_SECONDS = 3  # EndpointSlice -> controller -> activators takes well under a second on a quiet node


def telemetry_env(environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The OpenTelemetry settings replicas inherit from the controller (its `config-tracing` ConfigMap):
    every OTEL_* variable but the service name, which each replica sets for itself."""
    return tuple(sorted((k, v) for k, v in environ.items() if k.startswith("OTEL_") and k != "OTEL_SERVICE_NAME"))


def build_deployment(svc: PaddleService, side: str, replicas: int = 0,
                     storage: StorageSettings = StorageSettings(),  # noqa: B008
                     replica_env: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    """The Deployment of one side (replicas only matter on create: later the autoscaler owns them)."""
    spec = svc.side_spec(side)
    assert spec is not None, f"{svc.key} has no {side}"
    name = workload_name(svc.name, side)
    grpc = grpc_port_of(spec)
    ports = [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}]
    env = [{"name": "PORT", "value": str(spec.port)}]
    if grpc is not None:
        ports.append({"name": "grpc", "containerPort": grpc, "protocol": "TCP"})
        env.append({"name": "GRPC_PORT", "value": str(grpc)})
    env += [
        {"name": "ELASTICSERVING_SERVICE", "value": svc.key},
        {"name": "ELASTICSERVING_SIDE", "value": side},
        {"name": "ELASTICSERVING_REPLICA", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    # Pod Security "restricted": a model server needs no privilege, capability or syscall beyond
    # the runtime's default profile.
    security = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"}}
    model = model_volume(spec, svc.namespace, storage, security)
    env += model.env
    env += [{"name": k, "value": v} for k, v in replica_env]
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        # A scale from zero must not wait for a pull (nor fail where the node cannot pull): the
        # image is pulled once, `:latest` included; roll a new image out with a new tag.
        "imagePullPolicy": "IfNotPresent",
        "ports": ports,
        "env": env,
        "resources": pod_resources(svc),
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"},
                           "periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "initialDelaySeconds": 10,
                          "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 3},
        # A Pod leaving (scale-down, rollout) first drops out of its EndpointSlice, then the controller
        # pushes the smaller route table to every activator: keep serving through that before SIGTERM
        # starts the runtime's drain, so no activator sends to a closed port.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SECONDS}}},
        "securityContext": security,
    }
    if model.mounts:
        container["volumeMounts"] = model.mounts
    command = spec.command(svc.name)  # `arg`, or our runtime serving a storageUri's $MODEL_DIR
    if command:
        container["command"] = ["sh", "-c"]
        container["args"] = [shell_arg(command)]
    labels = _labels(svc, side)
    template = {
        "metadata": {
            "labels": labels,
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(spec.port),
                            "prometheus.io/path": "/metrics"},
        },
        # No API token in replicas (they never call the API server); non-root, as our runtime images
        # run (USER 65532): an image that runs as root is refused by the kubelet with the reason.
        "spec": {**({"initContainers": model.init_containers} if model.init_containers else {}),
                 **({"volumes": model.volumes} if model.volumes else {}),
                 "containers": [container], "terminationGracePeriodSeconds": 30,
                 # Replicas of a side spread over nodes (a node's death takes the fewest), as long as
                 # the nodes have room: never a Pod left Pending for the sake of the spread.
                 "topologySpreadConstraints": [{
                     "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                     "whenUnsatisfiable": "ScheduleAnyway",
                     "labelSelector": {"matchLabels": selector_labels(svc.name, side)}}],
                 "tolerations": NODE_LOSS_TOLERATIONS,
                 "automountServiceAccountToken": False,
                 "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}},
    }
    body_spec = {"selector": {"matchLabels": selector_labels(svc.name, side)}, "template": template}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": svc.namespace, "labels": labels,
                     "annotations": {HASH_ANNOTATION: _hash([labels, body_spec, _owner(svc)])},
                     "ownerReferences": _owner(svc)},
        "spec": dict(body_spec, replicas=replicas),
    }


# A replica on a node Kubernetes has found dead (NotReady or unreachable, after the node monitor's grace
# period) is replaced on a live node after this many seconds, instead of the default 300: the activators
# stopped sending to it long before (failed connects, probes), but the capacity comes back only so.
NODE_LOSS_SECONDS = 10
NODE_LOSS_TOLERATIONS = [{"key": key, "operator": "Exists", "effect": "NoExecute",
                          "tolerationSeconds": NODE_LOSS_SECONDS}
                         for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")]


def build_service(svc: PaddleService, side: str) -> dict[str, Any]:
    """The headless Service of one side: its EndpointSlices list the ready Pods for the activator."""
    spec = svc.side_spec(side)
    assert spec is not None, f"{svc.key} has no {side}"
    labels = _labels(svc, side)
    ports = [{"name": "http", "port": spec.port, "targetPort": "http", "protocol": "TCP"}]
    grpc = grpc_port_of(spec)
    if grpc is not None:
        ports.append({"name": "grpc", "port": grpc, "targetPort": "grpc", "protocol": "TCP"})
    body_spec = {"clusterIP": "None", "selector": selector_labels(svc.name, side), "ports": ports,
                 "publishNotReadyAddresses": False}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": workload_name(svc.name, side), "namespace": svc.namespace, "labels": labels,
                     "annotations": {HASH_ANNOTATION: _hash([labels, body_spec, _owner(svc)])},
                     "ownerReferences": _owner(svc)},
        "spec": body_spec,
    }


class NotOwned(Exception):
    """A child's name is taken by an object another owner controls: the side cannot be created."""


def ready_endpoints(slices: list[dict[str, Any]]) -> list[Endpoint]:
    """Ready endpoints of a Service's EndpointSlices (ports by name), sorted and deduplicated."""
    out: dict[str, Endpoint] = {}
    for sl in slices:
        ports = {p.get("name"): p.get("port") for p in sl.get("ports") or []}
        http = ports.get("http")
        if http is None:
            continue
        for ep in sl.get("endpoints") or []:
            cond = ep.get("conditions") or {}
            if cond.get("ready") is False or cond.get("terminating") is True:
                continue
            addrs = ep.get("addresses") or []
            if not addrs:
                continue
            pod = (ep.get("targetRef") or {}).get("name") or ep.get("hostname") or addrs[0]
            out[pod] = Endpoint(id=pod, host=addrs[0], http_port=int(http),
                                grpc_port=int(ports["grpc"]) if ports.get("grpc") else None)
    return sorted(out.values(), key=lambda e: e.id)


def _deployment_error(dep: dict[str, Any] | None) -> str | None:
    """A reason the side cannot run, from the Deployment's conditions (set by kube-controller-manager)."""
    for cond in ((dep or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            return f"{cond.get('reason')}: {cond.get('message')}"
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return f"ProgressDeadlineExceeded: {cond.get('message')}"
    return None


# Container states that do not end by waiting: the kubelet retries them with back-off, but a request
# held for the side would wait out its timeout for nothing (Knative's revision reports the same ones).
FAILING_WAITS = frozenset({"CrashLoopBackOff", "ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull",
                           "InvalidImageName", "CreateContainerConfigError", "CreateContainerError",
                           "RunContainerError"})


def _exit(term: dict[str, Any]) -> str:
    reason = term.get("reason") or "Error"
    return f"exit code {term.get('exitCode')} ({reason})"


def _transient(waiting: dict[str, Any]) -> bool:
    """A wait the kubelet gets out of by itself within seconds: its Secret or ConfigMap cache had not
    synced yet when it first built the container's environment (seen on a busy node)."""
    return waiting.get("reason") == "CreateContainerConfigError" and \
        "failed to sync" in (waiting.get("message") or "")


def _said(term: dict[str, Any]) -> str:
    """The container's own last words (its termination message: the runtime writes why a model did not
    load), when it left any."""
    message = (term.get("message") or "").strip()
    return f": {message[:500]}" if message else ""


def pod_failure(pod: dict[str, Any]) -> str | None:
    """Why one replica Pod cannot turn ready, or None while it may still: unschedulable, a container
    waiting in a failing state (crash loop, image not there, bad config) or exited non-zero."""
    md, status = pod.get("metadata") or {}, pod.get("status") or {}
    if md.get("deletionTimestamp"):
        return None  # on its way out: not what the side will run
    name = md.get("name", "?")
    if status.get("phase") == "Failed":
        return f"Pod {name} failed: {status.get('reason') or 'Failed'}: {status.get('message') or ''}".rstrip(": ")
    for cond in status.get("conditions") or []:
        # Waiting for a claim to bind is not failing: one applied with the service binds within moments,
        # and the scheduler then tries again.
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" \
                and cond.get("reason") == "Unschedulable" \
                and "unbound immediate PersistentVolumeClaims" not in (cond.get("message") or ""):
            return f"Pod {name} is unschedulable: {cond.get('message') or ''}".rstrip(": ")
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        if cs.get("ready"):
            continue
        state, last = cs.get("state") or {}, (cs.get("lastState") or {}).get("terminated")
        waiting, term = state.get("waiting"), state.get("terminated")
        if cs.get("name") == STORAGE_INITIALIZER:
            # its termination message is the pull's own reason ("cannot pull URI: ..."), never a secret
            failed = term if term and term.get("exitCode") else last
            if failed and failed.get("exitCode") and failed.get("message"):
                return f"Pod {name}: {failed['message'].strip()[:500]}"
        if waiting and waiting.get("reason") in FAILING_WAITS and not _transient(waiting):
            why = f"Pod {name}: {waiting['reason']}"
            if last and last.get("exitCode"):
                why += f", last {_exit(last)}{_said(last)}"
            elif waiting.get("message"):
                why += f": {waiting['message']}"
            return why
        if term and term.get("exitCode"):
            return f"Pod {name}: container {cs.get('name')} {_exit(term)}{_said(term)}"
        if last and last.get("exitCode") and int(cs.get("restartCount") or 0) > 0:
            return f"Pod {name}: container {cs.get('name')} restarted after {_exit(last)}"
    return None


def side_failure(pods: list[dict[str, Any]]) -> str | None:
    """The first failing Pod's reason among a side's Pods (by name), for a side with no ready replica."""
    for pod in sorted(pods, key=lambda p: (p.get("metadata") or {}).get("name", "")):
        why = pod_failure(pod)
        if why:
            return why
    return None


class KubernetesPlatform(Platform):
    """Deployments + headless Services per side; readiness from EndpointSlices."""

    name = "kubernetes"

    def __init__(self, kube: Kube, *, namespace: str | None = None, resync_seconds: float = 300.0,
                 watch_timeout_seconds: int = 300, storage: StorageSettings = StorageSettings(),  # noqa: B008
                 replica_env: tuple[tuple[str, str], ...] = ()):
        super().__init__()
        self.kube = kube
        self.storage = storage
        self.replica_env = replica_env
        self.namespace = namespace  # None: all namespaces
        self._desired: dict[tuple[str, str], int] = {}
        self._ready: dict[tuple[str, str], list[Endpoint]] = {}
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
        if ready != self._ready.get(ref, []):
            self._ready[ref] = ready
            if not ready:
                self._ready.pop(ref, None)
            self._update_routed(ref)
            log.info("%s/%s: %d ready endpoint(s)", key, side, len(ready))
            self.on_change(key)

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
        err = None if kind == "DELETED" else _deployment_error(obj)
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
                await self._delete_side(svc.namespace, svc.name, side)
        if changed:  # more or fewer standby Pods for the same demand
            for side in svc.sides:
                if (svc.key, side) in self._desired:
                    await self.scale(svc.key, side, self._desired[(svc.key, side)])
                self._update_routed((svc.key, side))
            self.on_change(svc.key)

    async def _apply_deployment(self, svc: PaddleService, side: str) -> None:
        replicas = self._desired.get((svc.key, side), 0) + self._standby.get(svc.key, 0)
        # On update, replicas stay as the autoscaler set them (scale subresource).
        await self._apply_child(build_deployment(svc, side, replicas=replicas, storage=self.storage,
                                                   replica_env=self.replica_env), "apps/v1", "deployments",
                                ("selector", "template"))

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
        if (key, side) in self._foreign:
            return  # never scale a Deployment that is not ours
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
