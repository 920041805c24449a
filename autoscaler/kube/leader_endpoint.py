"""The leader's own address as the only endpoint of the control API Service, so the activators reach
the leader while every controller replica stays Ready (Deployment rollouts need Ready replicas).

kube.main keeps it published while leading and withdraws it when stepping down; the Service
(deploy/04-controller.yaml, `elasticserving-autoscaler`) has no selector, kube-proxy and DNS follow
the EndpointSlice written here (as Knative's autoscaler does for its buckets).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from autoscaler.kube.client import Kube, KubeError, resource_path

log = logging.getLogger("elasticserving.leader")

SLICE_API = "discovery.k8s.io/v1"
MANAGED_BY = "elasticserving-controller"  # a label value: no slash


def slice_name(service: str) -> str:
    return f"{service}-leader"


def build_slice(namespace: str, service: str, pod_name: str, pod_ip: str, port: int,
                owner: dict[str, Any] | None) -> dict[str, Any]:
    """The EndpointSlice naming one ready endpoint (the leader Pod) for `service`'s port `http`."""
    return {
        "apiVersion": SLICE_API,
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name(service),
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service,
                       "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
                       "app.kubernetes.io/part-of": "elasticserving"},
            "ownerReferences": [owner] if owner else [],
        },
        "addressType": "IPv6" if ":" in pod_ip else "IPv4",
        "endpoints": [{"addresses": [pod_ip],
                       "conditions": {"ready": True, "serving": True, "terminating": False},
                       "targetRef": {"kind": "Pod", "namespace": namespace, "name": pod_name}}],
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    }


def lists(obj: dict[str, Any] | None, pod_ip: str) -> bool:
    """Whether a slice names exactly `pod_ip` as its endpoint."""
    eps = (obj or {}).get("endpoints") or []
    return len(eps) == 1 and eps[0].get("addresses") == [pod_ip]


class LeaderEndpoint:
    """Publishes `pod_ip:port` as the endpoint of `service` while this replica leads."""

    def __init__(self, kube: Kube, namespace: str, service: str, pod_name: str, pod_ip: str, port: int,
                 check_seconds: float = 5.0):
        self.kube = kube
        self.namespace = namespace
        self.service = service
        self.pod_name = pod_name
        self.pod_ip = pod_ip
        self.port = port
        self.check_seconds = check_seconds
        self.path = resource_path(SLICE_API, "endpointslices", namespace, slice_name(service))

    async def publish(self) -> None:
        """Make the slice name us."""
        have = await self.kube.get_or_none(self.path)
        if lists(have, self.pod_ip) and (have or {}).get("ports", [{}])[0].get("port") == self.port:
            return
        svc = await self.kube.get_or_none(resource_path("v1", "services", self.namespace, self.service))
        owner = None if svc is None else {"apiVersion": "v1", "kind": "Service", "name": self.service,
                                          "uid": svc["metadata"]["uid"]}
        want = build_slice(self.namespace, self.service, self.pod_name, self.pod_ip, self.port, owner)
        if have is None:
            await self.kube.create(resource_path(SLICE_API, "endpointslices", self.namespace), want)
        else:
            want["metadata"]["resourceVersion"] = have["metadata"]["resourceVersion"]
            await self.kube.replace(self.path, want)
        log.info("published %s:%d as the endpoint of service %s/%s", self.pod_ip, self.port,
                 self.namespace, self.service)

    async def keep_published(self) -> None:
        """Publish now and re-check every `check_seconds` (an old leader's withdraw may race us)."""
        while True:
            try:
                await self.publish()
            except KubeError as exc:
                log.warning("cannot publish the leader endpoint of %s/%s: %s", self.namespace,
                            self.service, exc)
            await asyncio.sleep(self.check_seconds)

    async def withdraw(self) -> None:
        """Remove our endpoint, unless a newer leader already replaced it (conditional update)."""
        with contextlib.suppress(KubeError):
            have = await self.kube.get_or_none(self.path)
            if have is None or not lists(have, self.pod_ip):
                return
            have["endpoints"] = []
            await self.kube.replace(self.path, have)
            log.info("withdrew %s as the endpoint of service %s/%s", self.pod_ip, self.namespace, self.service)
