"""The in-cluster control API token: a Secret in the system namespace that the controller creates with a
random value the first time it starts, and that activator Pods read (env from secretKeyRef).

It bootstraps `kubectl apply -f deploy/` without a shared literal in the manifests: activator Pods wait
(CreateContainerConfigError, retried by the kubelet) until a controller replica has created it.
"""

from __future__ import annotations

import base64
import logging
import secrets

from autoscaler.kube.client import Kube, KubeError, resource_path

log = logging.getLogger("elasticserving.kube.token")

SECRET_NAME = "elasticserving-control-token"
KEY = "token"


async def ensure_control_token(kube: Kube, namespace: str, name: str = SECRET_NAME) -> str:
    """The token in Secret `namespace/name`, created with a fresh random value when absent (several
    replicas may race: the first create wins, the others read it)."""
    path = resource_path("v1", "secrets", namespace, name)
    secret = await kube.get_or_none(path)
    if secret is None:
        token = secrets.token_urlsafe(32)
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "namespace": namespace,
                             "labels": {"app.kubernetes.io/part-of": "elasticserving"}},
                "data": {KEY: base64.b64encode(token.encode()).decode()}}
        try:
            await kube.create(resource_path("v1", "secrets", namespace), body)
            log.info("created the control API token Secret %s/%s", namespace, name)
            return token
        except KubeError as exc:
            if exc.status != 409:
                raise
        secret = await kube.get_or_none(path)  # another replica created it first
    value = ((secret or {}).get("data") or {}).get(KEY)
    token = base64.b64decode(value).decode().strip() if value else ""
    if not token:
        raise KubeError(422, f"Secret {namespace}/{name} has no `{KEY}`")
    return token
