"""A controller that serves one namespace (`--namespace` / WATCH_NAMESPACE) with the rights of
deploy/namespaced/rolebinding.yaml only, against the real kube-apiserver: its namespace is served,
another namespace is neither read nor written (and could not be: RBAC refuses it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.kubernetes.cluster import Cluster, ControllerProc, condition, wait_for

pytestmark = pytest.mark.kubernetes
ROOT = Path(__file__).resolve().parents[2]
SYSTEM = "elasticserving-system"
SA = "es-watch-one"
SERVED, OTHER = "es-ns-served", "es-ns-other"
WHO = f"--as=system:serviceaccount:{SYSTEM}:{SA}"


def _namespaced_binding() -> str:
    """deploy/namespaced/rolebinding.yaml for SERVED and our own ServiceAccount."""
    (doc,) = [d for d in yaml.safe_load_all((ROOT / "deploy/namespaced/rolebinding.yaml").read_text()) if d]
    assert doc["kind"] == "RoleBinding" and doc["roleRef"]["kind"] == "ClusterRole"
    doc["metadata"]["namespace"] = SERVED
    doc["subjects"][0]["name"] = SA
    return yaml.safe_dump(doc)


def _psvc(name: str, ns: str) -> str:
    return yaml.safe_dump({
        "apiVersion": "elasticserving.paddlepaddle.org/v1", "kind": "PaddleService",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"default": {"containerImage": "elasticserving/runtime", "tag": "v1", "port": 8000,
                             "arg": "python3 -m runtime --model lac --port $PORT"}}})


@pytest.fixture(scope="module")
def one_namespace(installed: Cluster) -> Iterator[ControllerProc]:
    for ns in (SERVED, OTHER):
        installed.apply_yaml(f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n")
    installed.apply_yaml(f"apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {SA}\n  namespace: {SYSTEM}\n")
    installed.apply_yaml(_namespaced_binding())
    installed.apply_yaml(yaml.safe_dump({  # the system namespace's Role (Lease, ConfigMap, token Secret)
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": SA, "namespace": SYSTEM},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "elasticserving-controller"},
        "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": SYSTEM}]}))
    token = installed.kubectl("create", "token", SA, "-n", SYSTEM, "--duration=1h").stdout.strip()
    cfg = yaml.safe_load(installed.kubeconfig.read_text())
    cfg["users"] = [{"name": "admin", "user": {"token": token}}]
    kubeconfig = installed.workdir / "kubeconfig-one-namespace"
    kubeconfig.write_text(yaml.safe_dump(cfg))
    proc = ControllerProc(installed, "ns-one", extra=["--kubeconfig", str(kubeconfig), "--namespace", SERVED,
                                                      "--no-leader-elect"]).start()
    try:
        wait_for(proc.is_ready, 30, what="namespaced controller ready")
        yield proc
        assert proc.alive(), f"controller exited: {proc.log()[-3000:]}"
    finally:
        proc.stop()
        for ns in (SERVED, OTHER):
            installed.kubectl("delete", "paddleservice", "--all", "-n", ns, "--wait=false", check=False)


@pytest.mark.parametrize("verb,resource,ns,allowed", [
    ("watch", "paddleservices.elasticserving.paddlepaddle.org", SERVED, True),
    ("create", "deployments.apps", SERVED, True),
    ("watch", "pods", SERVED, True),
    ("watch", "paddleservices.elasticserving.paddlepaddle.org", OTHER, False),
    ("create", "deployments.apps", OTHER, False),
    ("list", "endpointslices.discovery.k8s.io", OTHER, False),
])
def test_the_binding_grants_one_namespace(installed: Cluster, one_namespace: ControllerProc, verb: str,
                                          resource: str, ns: str, allowed: bool) -> None:
    answer = installed.kubectl("auth", "can-i", verb, resource, "-n", ns, WHO, check=False).stdout.strip()
    assert answer == ("yes" if allowed else "no")


def test_serves_its_namespace_and_leaves_the_other_alone(installed: Cluster,
                                                         one_namespace: ControllerProc) -> None:
    installed.apply_yaml(_psvc("other", OTHER))
    installed.apply_yaml(_psvc("served", SERVED))
    wait_for(lambda: installed.get_json("deployment", "served-default", "-n", SERVED), 20,
             what="the served namespace's Deployment")
    wait_for(lambda: condition(installed.get_json("paddleservice", "served", "-n", SERVED), "Ready"), 20,
             what="a Ready condition on the served PaddleService")
    # The served one was applied last and is done: the other was never touched.
    assert installed.get_json("deployment", "other-default", "-n", OTHER) is None
    assert not (installed.get_json("paddleservice", "other", "-n", OTHER) or {}).get("status")
    log = one_namespace.log()
    assert "forbidden" not in log.lower(), log[-3000:]
