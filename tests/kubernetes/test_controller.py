"""The in-cluster controller (`python -m autoscaler.kube.main`) against a real kube-apiserver.

The manual's flow: `kubectl apply -f deploy/`, then `kubectl apply -f examples/lac.yaml`; children,
status, scaling, canary routes, invalid specs and deletion. No kubelet: the tests write the
EndpointSlices that the control plane would write for ready Pods.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.kubernetes.cluster import Cluster, ControllerProc, condition, wait_for

pytestmark = pytest.mark.kubernetes
ROOT = Path(__file__).resolve().parents[2]
NS = "es-ctl"
LAC_NS = "paddleservice-system"
LAC = "paddleservice-sample"


@pytest.fixture(scope="module")
def ctl(installed: Cluster) -> Iterator[ControllerProc]:
    installed.apply_yaml(f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NS}\n")
    proc = ControllerProc(installed, "ctl-main").start()
    try:
        wait_for(proc.is_ready, 30, what="controller to lead (ready)")
        yield proc
        assert proc.alive(), f"controller exited: {proc.log()[-3000:]}"
    finally:
        code = proc.stop()
        print(proc.log()[-4000:])
        assert code == 0, f"controller exit code {code}"


def psvc(name: str, ns: str = NS, **spec: object) -> str:
    body = {"default": {"containerImage": "elasticserving/runtime", "tag": "v1", "port": 8000,
                        "arg": "python3 -m runtime --model lac --port $PORT"}}
    body.update(spec)  # type: ignore[arg-type]
    return yaml.safe_dump({"apiVersion": "elasticserving.paddlepaddle.org/v1", "kind": "PaddleService",
                           "metadata": {"name": name, "namespace": ns}, "spec": body})


def get_psvc(c: Cluster, name: str, ns: str = NS) -> dict | None:
    return c.get_json("paddleservice", name, "-n", ns)


def endpoint_slice(service: str, ns: str, side: str, pods: dict[str, tuple[str, bool]], port: int) -> str:
    """An EndpointSlice as the control plane would write it for the Pods of a headless Service."""
    name = service.removesuffix(f"-{side}")
    return yaml.safe_dump({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{service}-abcde", "namespace": ns, "labels": {
            "kubernetes.io/service-name": service,
            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            "elasticserving.paddlepaddle.org/paddleservice": name,
            "elasticserving.paddlepaddle.org/side": side}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"},
                  {"name": "grpc", "port": port + 1, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": ready},
                       "targetRef": {"kind": "Pod", "name": pod, "namespace": ns}}
                      for pod, (ip, ready) in pods.items()],
    })


def replicas(c: Cluster, name: str, ns: str = NS) -> int | None:
    dep = c.get_json("deployment", name, "-n", ns)
    return None if dep is None else dep["spec"].get("replicas")


def test_lac_example_creates_deployment_service_and_status(installed: Cluster, ctl: ControllerProc) -> None:
    installed.kubectl("apply", "-f", str(ROOT / "examples/lac.yaml"))
    dep = wait_for(lambda: installed.get_json("deployment", f"{LAC}-default", "-n", LAC_NS), 20,
                   what="LAC deployment")
    obj = get_psvc(installed, LAC, LAC_NS)
    assert obj is not None
    (owner,) = dep["metadata"]["ownerReferences"]
    assert owner["kind"] == "PaddleService" and owner["uid"] == obj["metadata"]["uid"] and owner["controller"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "elasticserving/runtime-lac:latest"
    assert container["command"] == ["sh", "-c"]
    # exec: the model server is PID 1 and gets SIGTERM
    assert container["args"] == ["exec python3 -m runtime --model lac --name lac --port $PORT"]
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [("http", 9292), ("grpc", 9293)]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PORT"] == "9292" and env["GRPC_PORT"] == "9293"
    # the original's defaults as requests; no limits unless spec.resources.limits sets them
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"}}
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # minScale 0: nothing runs until a request arrives.
    assert dep["spec"]["replicas"] == 0

    svc = installed.get_json("service", f"{LAC}-default", "-n", LAC_NS)
    assert svc is not None and svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"http": 9292, "grpc": 9293}

    def status_written() -> dict | None:
        o = get_psvc(installed, LAC, LAC_NS)
        return o if o and (o.get("status") or {}).get("observedGeneration") == o["metadata"]["generation"] else None

    obj = wait_for(status_written, 20, what="status with observedGeneration")
    st = obj["status"]
    assert st["url"] == f"http://{LAC}.{LAC_NS}.example.com"
    assert st["address"]["url"].startswith(f"http://{LAC}.{LAC_NS}.svc")
    assert st["default"]["name"] == f"{LAC}-default"
    assert st["replicas"] == 0
    for t in ("Ready", "DefaultPaddleServiceReady", "RoutesReady"):
        cond = condition(obj, t)
        assert cond is not None and cond["status"] == "True" and cond["reason"], (t, st)
    assert condition(obj, "CanaryPaddleServiceReady") is None
    # kubectl's printer columns and short name work.
    out = installed.kubectl("get", "psvc", "-n", LAC_NS).stdout
    assert LAC in out and "True" in out and f"http://{LAC}.{LAC_NS}.example.com" in out

    route = wait_for(lambda: ctl.route(f"{LAC_NS}/{LAC}"), 10, what="LAC route")
    assert f"{LAC}.{LAC_NS}.example.com" in route["hosts"]


def test_poke_scales_from_zero_and_ready_endpoints_reach_routes_and_status(
        installed: Cluster, ctl: ControllerProc) -> None:
    key = f"{LAC_NS}/{LAC}"
    wait_for(lambda: ctl.route(key), 20, what="LAC route")
    status, _ = ctl.post("/v1/poke", {"service": key, "side": "default"})
    assert status == 200
    wait_for(lambda: replicas(installed, f"{LAC}-default", LAC_NS) == 1, 10,
             what="scale subresource set to 1 after a poke")

    installed.apply_yaml(endpoint_slice(f"{LAC}-default", LAC_NS, "default",
                                        {f"{LAC}-default-7d9f-x1": ("10.1.0.5", True),
                                         f"{LAC}-default-7d9f-x2": ("10.1.0.6", False)}, 9292))

    def endpoints() -> list | None:
        r = ctl.route(key)
        return r["sides"]["default"]["endpoints"] if r and r["sides"]["default"]["endpoints"] else None

    eps = wait_for(endpoints, 10, what="ready endpoint in the route")
    assert eps == [{"id": f"{LAC}-default-7d9f-x1", "host": "10.1.0.5", "http_port": 9292, "grpc_port": 9293}]

    def ready_status() -> dict | None:
        o = get_psvc(installed, LAC, LAC_NS)
        c = condition(o, "DefaultPaddleServiceReady")
        return o if c and c["reason"] == "ReplicasReady" else None

    obj = wait_for(ready_status, 10, what="DefaultPaddleServiceReady=ReplicasReady")
    assert obj["status"]["replicas"] == 1

    # The replica stops being ready: out of the route.
    installed.apply_yaml(endpoint_slice(f"{LAC}-default", LAC_NS, "default",
                                        {f"{LAC}-default-7d9f-x1": ("10.1.0.5", False)}, 9292))
    wait_for(lambda: (r := ctl.route(key)) is not None and r["sides"]["default"]["endpoints"] == [], 10,
             what="endpoint removed from the route")
    installed.kubectl("delete", "endpointslice", f"{LAC}-default-abcde", "-n", LAC_NS)


def test_min_scale_keeps_replicas_and_canary_adds_its_deployment(installed: Cluster,
                                                                  ctl: ControllerProc) -> None:
    name = "canaried"
    key = f"{NS}/{name}"
    installed.apply_yaml(psvc(name, service={"minScale": 2, "maxScale": 5}))
    wait_for(lambda: replicas(installed, f"{name}-default") == 2, 20, what="minScale 2 replicas")

    canary = {"containerImage": "elasticserving/runtime", "tag": "v2", "port": 8000}
    installed.apply_yaml(psvc(name, service={"minScale": 2, "maxScale": 5}, canary=canary,
                              canaryTrafficPercent=20))
    dep = wait_for(lambda: installed.get_json("deployment", f"{name}-canary", "-n", NS), 20,
                   what="canary deployment")
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "elasticserving/runtime:v2"
    assert "command" not in dep["spec"]["template"]["spec"]["containers"][0]  # no arg: the image's own
    assert installed.get_json("service", f"{name}-canary", "-n", NS) is not None
    wait_for(lambda: replicas(installed, f"{name}-canary") == 2, 20, what="canary at minScale")
    # Until a canary Pod is ready its share stays on default (a canary that never turns ready loses nothing).
    route = wait_for(lambda: ctl.route(key), 10, what="route")
    assert route["canary_percent"] == 0 and set(route["sides"]) == {"default", "canary"}
    assert route["tags"]["canary"][0] == f"canary-{name}.{NS}.example.com"
    installed.apply_yaml(endpoint_slice(f"{name}-canary", NS, "canary", {f"{name}-canary-1": ("10.1.0.9", True)},
                                        8000))
    route = wait_for(lambda: (r := ctl.route(key)) and r["canary_percent"] == 20 and r, 10,
                     what="route with 20% canary")

    def canary_status() -> dict | None:
        o = get_psvc(installed, name)
        return o if condition(o, "CanaryPaddleServiceReady") and (o["status"].get("canary") or {}).get(
            "name") == f"{name}-canary" else None

    wait_for(canary_status, 10, what="canary status")

    # Changing the split updates the published route (what the activators follow).
    installed.kubectl("patch", "psvc", name, "-n", NS, "--type=merge", "-p",
                      '{"spec":{"canaryTrafficPercent":60}}')
    wait_for(lambda: (r := ctl.route(key)) is not None and r["canary_percent"] == 60, 10,
             what="route with 60% canary")

    # Removing the canary removes its children and its status.
    installed.apply_yaml(psvc(name, service={"minScale": 2, "maxScale": 5}))
    wait_for(lambda: installed.get_json("deployment", f"{name}-canary", "-n", NS) is None, 20,
             what="canary deployment deleted")
    assert installed.get_json("service", f"{name}-canary", "-n", NS) is None
    wait_for(lambda: (o := get_psvc(installed, name)) is not None and "canary" not in o["status"]
             and condition(o, "CanaryPaddleServiceReady") is None, 10, what="canary gone from status")
    assert set(ctl.route(key)["sides"]) == {"default"}
    assert replicas(installed, f"{name}-default") == 2
    installed.kubectl("delete", "endpointslice", f"{name}-canary-abcde", "-n", NS)


@pytest.mark.parametrize("spec,needle", [
    ({}, "spec.default: Required value"),
    ({"default": {"containerImage": "x", "tag": "y"}}, "spec.default.port: Required value"),
    ({"default": {"containerImage": "x", "tag": "y", "port": 1}, "service": {"metric": "latency"}},
     "spec.service.metric: Unsupported value"),
    ({"default": {"containerImage": "x", "tag": "y", "port": 1}, "service": {"autoscaler": "foo"}},
     "spec.service.autoscaler: Unsupported value"),
])
def test_schema_refuses_invalid_specs(installed: Cluster, spec: dict, needle: str) -> None:
    doc = yaml.safe_dump({"apiVersion": "elasticserving.paddlepaddle.org/v1", "kind": "PaddleService",
                          "metadata": {"name": "refused", "namespace": NS}, "spec": spec})
    proc = installed.apply_yaml(doc, check=False)
    assert proc.returncode != 0
    assert needle in proc.stderr, proc.stderr
    assert get_psvc(installed, "refused") is None


@pytest.mark.parametrize("name,service,field", [
    ("negative-min", {"minScale": -1}, "spec.service.minScale"),
    ("bad-window", {"window": "10 parsecs"}, "spec.service.window"),
    ("short-window", {"window": "2s"}, "spec.service.window"),
    ("min-above-max", {"minScale": 5, "maxScale": 2}, "spec.service.minScale"),
    ("bad-threshold", {"panicThreshold": "50"}, "spec.service.panicThreshold"),
])
def test_invalid_values_are_reported_in_status(installed: Cluster, ctl: ControllerProc, name: str,
                                               service: dict, field: str) -> None:
    installed.apply_yaml(psvc(name, service=service))

    def reported() -> dict | None:
        c = condition(get_psvc(installed, name), "Ready")
        return c if c and c["status"] == "False" else None

    cond = wait_for(reported, 15, what="Ready=False for an invalid spec")
    assert cond["reason"] == "InvalidSpec"
    assert field in cond["message"]
    assert installed.get_json("deployment", f"{name}-default", "-n", NS) is None
    assert ctl.alive()
    installed.kubectl("delete", "psvc", name, "-n", NS, "--timeout=20s")


def test_invalid_update_keeps_serving_then_recovers(installed: Cluster, ctl: ControllerProc) -> None:
    name = "updated"
    installed.apply_yaml(psvc(name, service={"minScale": 1}))
    wait_for(lambda: replicas(installed, f"{name}-default") == 1, 20, what="deployment at minScale")
    installed.kubectl("patch", "psvc", name, "-n", NS, "--type=merge", "-p", '{"spec":{"service":{"window":"bad"}}}')

    def invalid() -> dict | None:
        o = get_psvc(installed, name)
        c = condition(o, "Ready")
        return o if c and c["reason"] == "InvalidSpec" and o["status"].get(
            "observedGeneration") == o["metadata"]["generation"] else None

    obj = wait_for(invalid, 15, what="InvalidSpec after a bad update")
    assert "still serving" in condition(obj, "Ready")["message"]
    assert replicas(installed, f"{name}-default") == 1  # the last valid spec keeps running
    installed.kubectl("patch", "psvc", name, "-n", NS, "--type=merge", "-p", '{"spec":{"service":{"window":"30s"}}}')
    wait_for(lambda: (c := condition(get_psvc(installed, name), "Ready")) is not None
             and c["reason"] != "InvalidSpec", 15, what="recovered after a fix")


def test_deleting_the_paddleservice_removes_its_children(installed: Cluster, ctl: ControllerProc) -> None:
    name = "doomed"
    canary = {"containerImage": "elasticserving/runtime", "tag": "v2", "port": 8000}
    installed.apply_yaml(psvc(name, canary=canary, canaryTrafficPercent=10))
    for side in ("default", "canary"):
        wait_for(lambda s=side: installed.get_json("service", f"{name}-{s}", "-n", NS), 20,
                 what=f"{side} service")
    obj = get_psvc(installed, name)
    assert "elasticserving.paddlepaddle.org/children" in obj["metadata"]["finalizers"]
    # kubectl delete waits until the finalizer is gone, i.e. the children were deleted.
    installed.kubectl("delete", "psvc", name, "-n", NS, "--timeout=30s")
    for kind in ("deployment", "service"):
        for side in ("default", "canary"):
            assert installed.get_json(kind, f"{name}-{side}", "-n", NS) is None, (kind, side)
    assert get_psvc(installed, name) is None
    wait_for(lambda: ctl.route(f"{NS}/{name}") is None, 10, what="route removed")


def test_children_deleted_behind_our_back_are_recreated(installed: Cluster, ctl: ControllerProc) -> None:
    name = "drifted"
    installed.apply_yaml(psvc(name, service={"minScale": 2}))
    first = wait_for(lambda: (d := installed.get_json("deployment", f"{name}-default", "-n", NS))
                     and d["spec"]["replicas"] == 2 and d, 20, what="deployment")
    installed.kubectl("delete", "deployment", f"{name}-default", "-n", NS)
    again = wait_for(lambda: (d := installed.get_json("deployment", f"{name}-default", "-n", NS))
                     and d["metadata"]["uid"] != first["metadata"]["uid"] and d, 4,
                     what="deployment recreated well before the 5 s resync")
    wait_for(lambda: installed.get_json("deployment", f"{name}-default", "-n", NS)["spec"]["replicas"] == 2,
             10, what="recreated deployment scaled back to minScale")
    assert again["metadata"]["ownerReferences"][0]["name"] == name
    installed.kubectl("delete", "psvc", name, "-n", NS, "--timeout=30s")


def test_a_deployment_of_another_owner_is_neither_adopted_nor_deleted(installed: Cluster,
                                                                      ctl: ControllerProc) -> None:
    """`squatter-default` exists and is not ours: the PaddleService reports why it cannot run (a
    condition with the reason) and the Deployment is left as it was, also when the service is deleted."""
    name = "squatter"
    installed.apply_yaml(yaml.safe_dump({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": f"{name}-default", "namespace": NS},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "mine"}},
                 "template": {"metadata": {"labels": {"app": "mine"}},
                              "spec": {"containers": [{"name": "c", "image": "someone/else:1"}]}}}}))
    before = installed.get_json("deployment", f"{name}-default", "-n", NS)
    installed.apply_yaml(psvc(name))

    def refused() -> dict | None:
        c = condition(get_psvc(installed, name), "DefaultPaddleServiceReady")
        return c if c and c["status"] == "False" and "not owned" in c["message"] else None

    cond = wait_for(refused, 20, what="a condition saying the Deployment is not ours")
    assert cond["reason"] == "ReplicaFailed"
    after = installed.get_json("deployment", f"{name}-default", "-n", NS)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]  # untouched
    assert not after["metadata"].get("ownerReferences")
    assert ctl.post("/v1/poke", {"service": f"{NS}/{name}", "side": "default"})[0] == 200
    installed.kubectl("delete", "psvc", name, "-n", NS, "--timeout=30s")
    left = installed.get_json("deployment", f"{name}-default", "-n", NS)
    assert left is not None and left["spec"]["replicas"] == 0  # neither scaled by the poke nor deleted
    installed.kubectl("delete", "deployment", f"{name}-default", "-n", NS)


def test_scale_subresource_of_the_crd(installed: Cluster, ctl: ControllerProc) -> None:
    """`kubectl scale psvc` works (scale subresource); the autoscaler still owns the Deployments."""
    name = "scaled"
    installed.apply_yaml(psvc(name, service={"minScale": 1}))
    wait_for(lambda: replicas(installed, f"{name}-default") == 1, 20, what="deployment")
    installed.kubectl("scale", "psvc", name, "-n", NS, "--replicas=3")
    obj = get_psvc(installed, name)
    assert obj["spec"]["replicas"] == 3
    # Not an invalid spec, and the autoscaler decision stands.
    wait_for(lambda: (c := condition(get_psvc(installed, name), "Ready")) is not None
             and c["reason"] != "InvalidSpec", 10, what="valid status after kubectl scale")
    assert replicas(installed, f"{name}-default") == 1


def test_standby_pods_make_scale_from_zero_a_routing_change(installed: Cluster, ctl: ControllerProc) -> None:
    """`elasticserving.paddlepaddle.org/standby: "1"` on a minScale-0 service: one Pod runs with the model
    loaded but is not routed and not a replica; a poke routes it at once and starts a new standby."""
    doc = yaml.safe_load(psvc("standby", service={"minScale": 0}))
    doc["metadata"]["annotations"] = {"elasticserving.paddlepaddle.org/standby": "1"}
    installed.apply_yaml(yaml.safe_dump(doc))
    key = f"{NS}/standby"

    def status_replicas(name: str) -> int | None:
        return ((get_psvc(installed, name) or {}).get("status") or {}).get("replicas")

    wait_for(lambda: replicas(installed, "standby-default") == 1, 20, what="one standby Pod at zero")
    installed.apply_yaml(endpoint_slice("standby-default", NS, "default",
                                        {"standby-default-aa": ("10.2.0.1", True)}, 8000))
    item = wait_for(lambda: (d := ctl.describe(key)) and d["autoscaler"]["default"]["standby"] == 1 and d, 10,
                    what="the ready Pod counted as standby")
    assert item["autoscaler"]["default"]["ready"] == 0
    assert ctl.route(key)["sides"]["default"]["endpoints"] == []  # not routed
    wait_for(lambda: status_replicas("standby") == 0, 10, what="status replicas 0")

    status, _ = ctl.post("/v1/poke", {"service": key, "side": "default"})
    assert status == 200
    # The standby Pod is routed without any new Pod turning ready: a routing change.
    eps = wait_for(lambda: ctl.route(key)["sides"]["default"]["endpoints"], 10, what="standby Pod routed")
    assert [e["id"] for e in eps] == ["standby-default-aa"]
    wait_for(lambda: replicas(installed, "standby-default") == 2, 10, what="a new standby Pod requested")
    # The new Pod turns ready: it waits as the standby; the routed one stays routed.
    installed.apply_yaml(endpoint_slice("standby-default", NS, "default",
                                        {"standby-default-aa": ("10.2.0.1", True),
                                         "standby-default-ab": ("10.2.0.2", True)}, 8000))
    wait_for(lambda: ctl.describe(key)["autoscaler"]["default"]["standby"] == 1, 10, what="new standby")
    assert [e["id"] for e in ctl.route(key)["sides"]["default"]["endpoints"]] == ["standby-default-aa"]
    wait_for(lambda: status_replicas("standby") == 1, 10, what="status replicas 1")

    # Invalid standby values are reported in status, not applied.
    doc["spec"]["service"]["minScale"] = 2
    installed.apply_yaml(yaml.safe_dump(doc))
    cond = wait_for(lambda: (c := condition(get_psvc(installed, "standby"), "Ready")) and c["status"] == "False"
                    and c, 10, what="Ready=False for standby with minScale 2")
    assert "standby" in cond["message"]
    installed.kubectl("delete", "psvc", "standby", "-n", NS)
