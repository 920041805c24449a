"""The in-cluster install (`kubectl apply -f deploy/`) against a real kube-apiserver.

Checks the manifests are accepted (also with --dry-run=server), the CRD carries the original schema,
and RBAC grants the controller what it uses and the activator nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.kubernetes.cluster import Cluster

pytestmark = pytest.mark.kubernetes
ROOT = Path(__file__).resolve().parents[2]
CONTROLLER_SA = "system:serviceaccount:elasticserving-system:elasticserving-controller"
ACTIVATOR_SA = "system:serviceaccount:elasticserving-system:elasticserving-activator"


def _docs() -> list[dict]:
    out = []
    for f in sorted((ROOT / "deploy").glob("*.yaml")):
        out += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return out


def test_deploy_folder_passes_server_dry_run(installed: Cluster) -> None:
    proc = installed.kubectl("apply", "--dry-run=server", "-f", str(ROOT / "deploy"))
    assert "paddleservices.elasticserving.paddlepaddle.org" in proc.stdout


def test_deploy_folder_contents() -> None:
    docs = _docs()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for want in [("Namespace", "elasticserving-system"),
                 ("CustomResourceDefinition", "paddleservices.elasticserving.paddlepaddle.org"),
                 ("ServiceAccount", "elasticserving-controller"), ("ClusterRole", "elasticserving-controller"),
                 ("ConfigMap", "config-autoscaler"), ("Deployment", "elasticserving-controller"),
                 ("Deployment", "elasticserving-activator"), ("Service", "elasticserving-activator"),
                 ("Service", "elasticserving-autoscaler")]:
        assert want in kinds, want
    deps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    act = deps["elasticserving-activator"]["spec"]
    assert act["replicas"] == 2
    container = act["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "activator"]
    assert "--autoscaler=http://elasticserving-autoscaler.elasticserving-system.svc:8090" in container["args"]
    assert deps["elasticserving-controller"]["spec"]["replicas"] == 2
    # The activator is the only ingress: the one Service exposed outside the cluster.
    exposed = [d["metadata"]["name"] for d in docs
               if d["kind"] == "Service" and d["spec"].get("type") in ("LoadBalancer", "NodePort")]
    assert exposed == ["elasticserving-activator"]
    for name, dep in deps.items():
        ann = dep["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true", name
    # Optional Prometheus Operator objects stay out of `kubectl apply -f deploy/`.
    assert not any(d["kind"] in ("ServiceMonitor", "PodMonitor") for d in docs)
    monitors = list(yaml.safe_load_all((ROOT / "deploy/monitoring/servicemonitor.yaml").read_text()))
    assert {d["kind"] for d in monitors} == {"ServiceMonitor", "PodMonitor"}


def test_crd_has_the_original_schema(installed: Cluster) -> None:
    crd = installed.get_json("crd", "paddleservices.elasticserving.paddlepaddle.org")
    assert crd is not None
    assert crd["spec"]["names"]["shortNames"] == ["psvc"]
    (version,) = crd["spec"]["versions"]
    assert version["subresources"]["scale"] == {"specReplicasPath": ".spec.replicas",
                                                "statusReplicasPath": ".status.replicas"}
    assert "status" in version["subresources"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["required"] == ["default"]
    assert set(spec["properties"]["default"]["required"]) == {"containerImage", "tag", "port"}
    svc = spec["properties"]["service"]["properties"]
    assert svc["autoscaler"]["enum"] == ["kpa.autoscaling.knative.dev", "hpa.autoscaling.knative.dev"]
    assert svc["metric"]["enum"] == ["concurrency", "rps", "cpu"]
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:1] == ["Ready"] and "URL" in columns
    # kubectl knows the short name.
    out = installed.kubectl("api-resources", "--api-group=elasticserving.paddlepaddle.org").stdout
    assert "psvc" in out and "PaddleService" in out


@pytest.mark.parametrize("who,verb,resource,namespace,allowed", [
    (CONTROLLER_SA, "watch", "paddleservices.elasticserving.paddlepaddle.org", "any", True),
    (CONTROLLER_SA, "patch", "paddleservices.elasticserving.paddlepaddle.org/status", "any", True),
    (CONTROLLER_SA, "patch", "deployments.apps/scale", "any", True),
    (CONTROLLER_SA, "create", "deployments.apps", "any", True),
    (CONTROLLER_SA, "delete", "services", "any", True),
    (CONTROLLER_SA, "watch", "endpointslices.discovery.k8s.io", "any", True),
    (CONTROLLER_SA, "update", "leases.coordination.k8s.io/elasticserving-controller", "elasticserving-system", True),
    (CONTROLLER_SA, "update", "leases.coordination.k8s.io/other", "elasticserving-system", False),
    (CONTROLLER_SA, "get", "configmaps/config-autoscaler", "elasticserving-system", True),
    (CONTROLLER_SA, "get", "secrets", "any", False),
    (CONTROLLER_SA, "create", "pods", "any", False),
    (CONTROLLER_SA, "delete", "paddleservices.elasticserving.paddlepaddle.org", "any", False),
    (ACTIVATOR_SA, "list", "paddleservices.elasticserving.paddlepaddle.org", "any", False),
    (ACTIVATOR_SA, "get", "endpointslices.discovery.k8s.io", "any", False),
])
def test_rbac_is_least_privilege(installed: Cluster, who: str, verb: str, resource: str, namespace: str,
                                 allowed: bool) -> None:
    ns = ["-n", namespace] if namespace != "any" else ["-A"]
    proc = installed.kubectl("auth", "can-i", verb, resource, *ns, f"--as={who}", check=False)
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), proc.stderr
    assert (answer == "yes") is allowed, f"{who} {verb} {resource}: {answer}"
