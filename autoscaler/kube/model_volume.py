"""The Pod pieces of a side with a storageUri (pure; build_deployment adds them): the model at /mnt/models,
read-only. pvc:// mounts the claim itself; s3:// and http(s):// run the storage initializer (our runtime image,
`python -m runtime.storage`) into the node-local cache (a hostPath, one directory per namespace), linked into
an emptyDir. Beside our runtime it is a second container started in the same kubelet sync (the runtime waits
for its report, runtime.storage.handoff): as an init container or native sidecar, the model container would
start only at the kubelet's next relist (~1 s, measured: most of a cached start). Any other server (an `arg`
of the user's) gets a plain init container. deploy/README.md tells the whole story."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from autoscaler.spec import MODEL_DIR_ENV, POD_MODEL_DIR, EndpointSpec
from runtime.storage.names import ENV_KEYS, PULL_REPORT_ENV
from runtime.storage.uri import parse_uri

STORAGE_INITIALIZER = "storage-initializer"
REPORT_DIR = "/var/run/elasticserving"


@dataclass(frozen=True)
class StorageSettings:
    """The operator's storage knobs: the storage initializer's image and the node cache's host path."""

    image: str = "elasticserving/runtime:latest"
    cache_root: str = "/var/cache/elasticserving/models"
    cache_max_bytes: int = 50 * 1024**3


_OUR_RUNTIME = re.compile(r"(exec\s+)?python3?\s+-m\s+runtime(\s|$)")


def waits_for_pull(spec: EndpointSpec) -> bool:
    """Whether the side's container runs our runtime (no `arg`, or `python3 -m runtime ...`), which waits
    for the pull beside it by itself."""
    return not spec.arg or bool(_OUR_RUNTIME.match(spec.arg.strip()))


@dataclass
class ModelVolume:
    init_containers: list[dict[str, Any]] = field(default_factory=list)
    containers: list[dict[str, Any]] = field(default_factory=list)  # beside the model container
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)  # of the model container
    env: list[dict[str, Any]] = field(default_factory=list)  # of the model container


def model_volume(spec: EndpointSpec, namespace: str, settings: StorageSettings,
                 security: dict[str, Any]) -> ModelVolume:
    """What a side's Pod needs for its storageUri (nothing without one). `security`: the restricted
    container securityContext every container of a replica Pod gets."""
    out = ModelVolume()
    if not spec.storageUri:
        return out
    uri = parse_uri(spec.storageUri)
    out.env.append({"name": MODEL_DIR_ENV, "value": POD_MODEL_DIR})
    if uri.scheme == "pvc":
        out.volumes.append({"name": "model", "persistentVolumeClaim": {"claimName": uri.host, "readOnly": True}})
        mount = {"name": "model", "mountPath": POD_MODEL_DIR, "readOnly": True}
        if uri.path.strip("/"):
            mount["subPath"] = uri.path.strip("/")
        out.mounts.append(mount)
        return out
    # A cache directory per namespace: a Pod sees the models of its own namespace only.
    cache_dir = f"{settings.cache_root.rstrip('/')}/{namespace}"
    args = [spec.storageUri, "--cache", cache_dir, "--dest", POD_MODEL_DIR, "--report", f"{REPORT_DIR}/pull.json",
            "--cache-max-bytes", str(settings.cache_max_bytes)]
    beside = waits_for_pull(spec)
    if spec.storageSha256:
        args += ["--sha256", spec.storageSha256]
    env = [{"name": key, "valueFrom": {"secretKeyRef": {"name": spec.storageSecret, "key": key, "optional": True}}}
           for key in ENV_KEYS] if spec.storageSecret else []
    initializer: dict[str, Any] = {
        "name": STORAGE_INITIALIZER,
        "image": settings.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python3", "-m", "runtime.storage"],
        "args": args + ["--stay"] if beside else args,
        "env": env,
        # the pull's reason (runtime.storage writes it there) becomes the Pod's status message
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        # requested for the Pod's life beside our runtime (it idles as a bare interpreter after the pull)
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "512Mi"}},
        "volumeMounts": [{"name": "model-cache", "mountPath": settings.cache_root},
                         {"name": "model", "mountPath": POD_MODEL_DIR},
                         {"name": "pull-report", "mountPath": REPORT_DIR}],
        "securityContext": security,
    }
    # beside the runtime it idles after the pull: a failed pull exits and is retried with the Pod's back-off
    (out.containers if beside else out.init_containers).append(initializer)
    out.volumes += [
        # DirectoryOrCreate makes it root's 0755: give the node's directory to the runtime's user (65532)
        # or mode 1777 (scripts/cluster.sh does), so the non-root initializer can write.
        {"name": "model-cache", "hostPath": {"path": settings.cache_root, "type": "DirectoryOrCreate"}},
        {"name": "model", "emptyDir": {}},
        {"name": "pull-report", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
    ]
    out.mounts += [
        {"name": "model", "mountPath": POD_MODEL_DIR, "readOnly": True},
        # the links in /mnt/models point here: the same path, read-only, this namespace's directory only
        {"name": "model-cache", "mountPath": cache_dir, "subPath": namespace, "readOnly": True},
        # writable for our runtime: it makes the FIFO the initializer wakes it through, if it comes first
        {"name": "pull-report", "mountPath": REPORT_DIR, "readOnly": not beside},
    ]
    out.env.append({"name": PULL_REPORT_ENV, "value": f"{REPORT_DIR}/pull.json"})
    return out
