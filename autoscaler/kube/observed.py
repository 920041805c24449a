"""What the cluster says of a side's replicas, read from watched objects: the ready endpoints of its
EndpointSlices and why its Deployment or Pods cannot turn ready. Pure; autoscaler/kube/platform.py feeds it.
"""

from __future__ import annotations

from typing import Any

from autoscaler.kube.model_volume import STORAGE_INITIALIZER
from autoscaler.platform import ReplicaAddress


def ready_endpoints(slices: list[dict[str, Any]]) -> list[ReplicaAddress]:
    """Ready endpoints of a Service's EndpointSlices (ports by name), sorted and deduplicated."""
    out: dict[str, ReplicaAddress] = {}
    for sl in slices:
        ports = {p.get("name"): p.get("port") for p in sl.get("ports") or []}
        http = ports.get("http")
        if http is None:
            continue
        for ep in sl.get("endpoints") or []:
            cond, addrs = ep.get("conditions") or {}, ep.get("addresses") or []
            if not addrs or cond.get("ready") is False or cond.get("terminating") is True:
                continue
            pod = (ep.get("targetRef") or {}).get("name") or ep.get("hostname") or addrs[0]
            out[pod] = ReplicaAddress(id=pod, host=addrs[0], http_port=int(http),
                                grpc_port=int(ports["grpc"]) if ports.get("grpc") else None)
    return sorted(out.values(), key=lambda e: e.id)


def deployment_error(dep: dict[str, Any] | None) -> str | None:
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
    return f"exit code {term.get('exitCode')} ({term.get('reason') or 'Error'})"


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
    by_name = sorted(pods, key=lambda p: (p.get("metadata") or {}).get("name", ""))
    return next(filter(None, map(pod_failure, by_name)), None)
