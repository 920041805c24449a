"""Kubernetes objects for one side of a PaddleService: its Deployment and headless Service, as pure
functions of the spec (autoscaler/kube/platform.py applies them; golden files in tests/kubernetes/golden).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from autoscaler.kube.model_volume import StorageSettings, model_volume
from autoscaler.spec import API_GROUP, API_VERSION, KIND, EndpointSpec, PaddleService

LABEL_SERVICE = f"{API_GROUP}/paddleservice"
LABEL_SIDE = f"{API_GROUP}/side"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "elasticserving"
HASH_ANNOTATION = f"{API_GROUP}/config-hash"
# On every replica Pod: the revision (EndpointSpec.revision) it runs. A side's replicas are the ready Pods
# of its revision, whichever of the service's Deployments runs them (docs/architecture.md, Sides).
LABEL_REVISION = f"{API_GROUP}/revision"
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
    own = {k: v for k, v in svc.metadata.labels.items() if not k.startswith(f"{API_GROUP}/")}
    return {**own, **selector_labels(svc.name, side), LABEL_MANAGED_BY: MANAGED_BY,
            "app.kubernetes.io/part-of": "elasticserving", "app.kubernetes.io/component": "replica"}


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


def _child(svc: PaddleService, side: str, api_version: str, kind: str, labels: dict[str, str],
           body_spec: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """The object with our metadata: its config hash covers what an update would change."""
    owner = _owner(svc)
    config_hash = hashlib.sha256(json.dumps([labels, body_spec, owner], sort_keys=True).encode()).hexdigest()
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": workload_name(svc.name, side), "namespace": svc.namespace, "labels": labels,
                     "annotations": {HASH_ANNOTATION: config_hash[:16]}, "ownerReferences": owner},
        "spec": dict(body_spec, **spec),
    }


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
    requests.update({k: v for k, v in limits.items() if k not in explicit_requests})
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
        # Every second (the least a kubelet takes): a Pod from zero is routed at the first probe that finds
        # its model loaded, so the period is what a cold start waits on top of the load (up to 2 s at 2 s).
        # Four failures in a row (~4 s) take a busy replica out, as two at 2 s did.
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"},
                           "periodSeconds": 1, "timeoutSeconds": 2, "failureThreshold": 4},
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
            "labels": dict(labels, **{LABEL_REVISION: spec.revision}),
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(spec.port),
                            "prometheus.io/path": "/metrics"},
        },
        # No API token in replicas (they never call the API server); non-root, as our runtime images
        # run (USER 65532): an image that runs as root is refused by the kubelet with the reason.
        "spec": {**({"initContainers": model.init_containers} if model.init_containers else {}),
                 **({"volumes": model.volumes} if model.volumes else {}),
                 "containers": [container, *model.containers], "terminationGracePeriodSeconds": 30,
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
    body_spec = {"selector": {"matchLabels": selector_labels(svc.name, side)}, "template": template,
                 **rolling_update(svc.rollout_seconds)}
    return _child(svc, side, "apps/v1", "Deployment", labels, body_spec, replicas=replicas)


# A version change starts every new Pod at once and keeps every old one until the new ones are available;
# with a rollout duration the old Pods (serving the outgoing version, `previous`) are kept through the
# ramp and this margin, so the outgoing version never loses its replicas while it still has a share.
ROLLOUT_MARGIN_SECONDS = 15
DEPLOYMENT_FIELDS = ("selector", "template", "strategy", "minReadySeconds", "progressDeadlineSeconds")


def rolling_update(rollout_seconds: float) -> dict[str, Any]:
    """The Deployment's update strategy for a release of `rollout_seconds` (0: at once)."""
    keep = math.ceil(rollout_seconds) + ROLLOUT_MARGIN_SECONDS if rollout_seconds > 0 else 0
    return {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "100%", "maxUnavailable": 0}},
            # A new Pod counts as available (and an old one may go) only this long after it is ready;
            # routing follows readiness, not availability. The deadline must exceed it (API validation).
            "minReadySeconds": keep, "progressDeadlineSeconds": 600 + keep}


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
    return _child(svc, side, "v1", "Service", labels, body_spec)
