"""Pure parts of the kubernetes mode, without a cluster: the children built for a PaddleService,
ready endpoints from EndpointSlices, status for invalid specs, and transition-time bookkeeping."""

from __future__ import annotations

from autoscaler.kube.client import resource_path
from autoscaler.kube.operator import _without_scale_field, invalid_status, merge_transition_times
from autoscaler.kube.platform import build_deployment, build_service, ready_endpoints
from autoscaler.platform import Endpoint
from autoscaler.spec import PaddleService, SpecError


def _svc(**spec: object) -> PaddleService:
    body = {"default": {"containerImage": "img", "tag": "t", "port": 65535}}
    body.update(spec)  # type: ignore[arg-type]
    return PaddleService.from_dict({"apiVersion": "elasticserving.paddlepaddle.org/v1", "kind": "PaddleService",
                                    "metadata": {"name": "a", "namespace": "ns", "uid": "u-1"}, "spec": body})


def test_resource_paths() -> None:
    assert resource_path("v1", "services", "ns", "x") == "/api/v1/namespaces/ns/services/x"
    assert resource_path("apps/v1", "deployments", "ns", "x", "scale") == \
        "/apis/apps/v1/namespaces/ns/deployments/x/scale"
    assert resource_path("discovery.k8s.io/v1", "endpointslices") == "/apis/discovery.k8s.io/v1/endpointslices"


def test_no_grpc_port_beyond_65535_and_hash_changes_with_spec() -> None:
    dep = build_deployment(_svc(), "default")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert [p["name"] for p in c["ports"]] == ["http"]
    assert "GRPC_PORT" not in {e["name"] for e in c["env"]}
    assert "command" not in c
    assert [p["name"] for p in build_service(_svc(), "default")["spec"]["ports"]] == ["http"]
    other = build_deployment(_svc(resources={"limits": {"cpu": "2"}}), "default")
    h = "elasticserving.paddlepaddle.org/config-hash"
    assert other["metadata"]["annotations"][h] != dep["metadata"]["annotations"][h]
    assert other["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "2"


def test_ready_endpoints_skip_unready_terminating_and_portless() -> None:
    slices = [
        {"ports": [{"name": "http", "port": 80}, {"name": "grpc", "port": 81}], "endpoints": [
            {"addresses": ["10.0.0.1"], "conditions": {"ready": True}, "targetRef": {"name": "p1"}},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": False}, "targetRef": {"name": "p2"}},
            {"addresses": ["10.0.0.3"], "conditions": {"ready": True, "terminating": True}},
            {"addresses": ["10.0.0.4"], "conditions": {}, "targetRef": {"name": "p4"}},  # unknown = ready
        ]},
        {"ports": [{"name": "metrics", "port": 9}], "endpoints": [{"addresses": ["10.0.0.9"]}]},
    ]
    assert ready_endpoints(slices) == [Endpoint("p1", "10.0.0.1", 80, 81), Endpoint("p4", "10.0.0.4", 80, 81)]


def test_invalid_status_and_transition_times() -> None:
    obj = {"metadata": {"name": "a", "namespace": "ns", "generation": 4}}
    st = invalid_status(obj, SpecError("spec.service.window", "bad"), "example.com", None)
    ready = st["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "InvalidSpec")
    assert ready["message"] == "spec.service.window: bad"
    assert st["observedGeneration"] == 4 and st["url"] == "http://a.ns.example.com"
    old = {"conditions": [dict(ready, lastTransitionTime="2020-01-01T00:00:00Z")]}
    assert merge_transition_times(st, old)["conditions"][0]["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    flipped = {"conditions": [dict(ready, status="True", lastTransitionTime="2020-01-01T00:00:00Z")]}
    st2 = invalid_status(obj, SpecError("x", "y"), "example.com", None)
    assert merge_transition_times(st2, flipped)["conditions"][0]["lastTransitionTime"] != "2020-01-01T00:00:00Z"


def test_scale_field_is_not_part_of_the_model() -> None:
    obj = {"spec": {"replicas": 3, "default": {}}}
    assert _without_scale_field(obj) == {"spec": {"default": {}}}
    assert obj["spec"]["replicas"] == 3  # not mutated
