"""Pure parts of the kubernetes mode, without a cluster: the children built for a PaddleService,
ready endpoints from EndpointSlices, status for invalid specs, and transition-time bookkeeping."""

from __future__ import annotations

import pytest

from autoscaler.kube.client import resource_path
from autoscaler.kube.leader_endpoint import build_slice, lists
from autoscaler.kube.manifests import (
    build_deployment,
    build_service,
    owned_by,
    pod_resources,
    shell_arg,
    telemetry_env,
)
from autoscaler.kube.observed import pod_failure, ready_endpoints, side_failure
from autoscaler.kube.operator import _without_scale_field, invalid_status, merge_transition_times
from autoscaler.kube.platform import KubernetesPlatform
from autoscaler.platform import ReplicaAddress
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
    assert ready_endpoints(slices) == [ReplicaAddress("p1", "10.0.0.1", 80, 81), ReplicaAddress("p4", "10.0.0.4", 80, 81)]


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


@pytest.mark.parametrize(("arg", "want"), [
    ("python3 -m runtime --port $PORT", "exec python3 -m runtime --port $PORT"),
    ("  python3 -m runtime  ", "exec python3 -m runtime"),
    ("exec python3 -m runtime", "exec python3 -m runtime"),
    ("cd /m && python3 -m runtime", "cd /m && python3 -m runtime"),
    ("a; b", "a; b"),
    ("run $(cat f)", "run $(cat f)"),
    ("run > log", "run > log"),
    ("exit 3", "exit 3"),                     # a shell built-in: `exec exit` is "not found" (127)
    ("A=1 python3 -m runtime", "A=1 python3 -m runtime"),
    ("", ""),
])
def test_shell_arg_execs_one_simple_command(arg: str, want: str) -> None:
    assert shell_arg(arg) == want


@pytest.mark.parametrize(("resources", "want"), [
    ({}, {"requests": {"cpu": "0.1", "memory": "128Mi"}}),
    ({"requests": {"memory": "1Gi"}}, {"requests": {"cpu": "0.1", "memory": "1Gi"}}),
    ({"limits": {"memory": "1Gi"}},
     {"requests": {"cpu": "0.1", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}),
    ({"requests": {"memory": "512Mi"}, "limits": {"memory": "1Gi", "cpu": "2"}},
     {"requests": {"cpu": "2", "memory": "512Mi"}, "limits": {"memory": "1Gi", "cpu": "2"}}),
])
def test_pod_resources_default_requests_and_only_explicit_limits(resources, want) -> None:
    assert pod_resources(_svc(resources=resources)) == want


def test_leader_slice_names_one_ready_endpoint_of_the_service() -> None:
    owner = {"apiVersion": "v1", "kind": "Service", "name": "svc", "uid": "u"}
    sl = build_slice("sys", "svc", "pod-a", "10.0.0.7", 8090, owner)
    assert sl["metadata"]["labels"]["kubernetes.io/service-name"] == "svc"
    assert sl["metadata"]["ownerReferences"] == [owner]
    assert sl["addressType"] == "IPv4" and build_slice("s", "v", "p", "fd00::1", 1, None)["addressType"] == "IPv6"
    assert sl["ports"] == [{"name": "http", "port": 8090, "protocol": "TCP"}]
    assert lists(sl, "10.0.0.7") and not lists(sl, "10.0.0.8") and not lists(None, "10.0.0.7")
    assert ready_endpoints([sl])[0].host == "10.0.0.7"


def _slice(pods: list[str]) -> dict:
    return {"metadata": {"name": "a-default-x", "namespace": "ns",
                         "labels": {"elasticserving.paddlepaddle.org/paddleservice": "a",
                                    "elasticserving.paddlepaddle.org/side": "default",
                                    "kubernetes.io/service-name": "a-default"}},
            "ports": [{"name": "http", "port": 80}],
            "endpoints": [{"addresses": [f"10.0.0.{i + 1}"], "conditions": {"ready": True},
                           "targetRef": {"name": p}} for i, p in enumerate(pods)]}


async def test_standby_routing_changes_on_events_never_on_read() -> None:
    platform = KubernetesPlatform(kube=None)  # type: ignore[arg-type]  # caches only, no API calls
    changes: list[str] = []
    platform.on_change = changes.append
    platform.record("ns/a").standby = 1
    platform.record("ns/a").side("default").desired = 0

    def slice_event(pods: list[str]) -> None:
        sl = _slice(pods)
        platform.slices.store["ns/a-default-x"] = sl
        platform._slice_event("MODIFIED", sl, None)

    slice_event(["pod-b", "pod-a"])
    st = platform.state("ns/a", "default")
    assert (st.ready, st.standby, st.desired) == ([], 2, 0)
    platform.record("ns/a").side("default").desired = 1  # as scale() sets it, then routes
    platform._update_routed("ns/a", "default")
    first = [e.id for e in platform.state("ns/a", "default").ready]
    assert first == ["pod-a"]
    # Reads in any order and number answer the same.
    for _ in range(3):
        assert [e.id for e in platform.state("ns/a", "default").ready] == first
    # A new ready Pod sorting first does not take the routed one's place.
    slice_event(["pod-0", "pod-a", "pod-b"])
    st = platform.state("ns/a", "default")
    assert ([e.id for e in st.ready], st.standby) == (["pod-a"], 2)
    # The routed Pod goes: another ready one is routed at once.
    slice_event(["pod-0", "pod-b"])
    assert [e.id for e in platform.state("ns/a", "default").ready] == ["pod-0"]
    assert changes.count("ns/a") == 3


@pytest.mark.parametrize(("refs", "owned"), [
    pytest.param([{"apiVersion": "elasticserving.paddlepaddle.org/v1", "kind": "PaddleService", "name": "a",
                   "uid": "u", "controller": True}], True, id="our controller reference"),
    pytest.param([], False, id="no owner: somebody's own Deployment"),
    pytest.param([{"apiVersion": "elasticserving.paddlepaddle.org/v1", "kind": "PaddleService", "name": "b",
                   "controller": True}], False, id="another PaddleService"),
    pytest.param([{"apiVersion": "elasticserving.paddlepaddle.org/v1", "kind": "PaddleService", "name": "a"}],
                 False, id="not the controller reference"),
    pytest.param([{"apiVersion": "evil.example/v1", "kind": "PaddleService", "name": "a", "controller": True}],
                 False, id="a look-alike kind of another group"),
])
def test_children_are_ours_only_by_controller_reference(refs, owned) -> None:
    assert owned_by({"metadata": {"ownerReferences": refs}}, "a") is owned


async def test_only_slices_of_our_own_service_are_routed() -> None:
    platform = KubernetesPlatform(kube=None)  # type: ignore[arg-type]  # caches only, no API calls
    planted = _slice(["intruder"])
    planted["metadata"]["name"] = "planted"
    del planted["metadata"]["labels"]["kubernetes.io/service-name"]  # our labels, but no Service's slice
    platform.slices.store["ns/planted"] = planted
    platform._slice_event("ADDED", planted, None)
    assert platform.state("ns/a", "default").ready == []
    other = _slice(["other"])
    other["metadata"]["name"] = "other-svc"
    other["metadata"]["labels"]["kubernetes.io/service-name"] = "someone-else"
    platform.slices.store["ns/other-svc"] = other
    platform._slice_event("ADDED", other, None)
    assert platform.state("ns/a", "default").ready == []
    ours = _slice(["pod-1"])
    platform.slices.store["ns/a-default-x"] = ours
    platform._slice_event("ADDED", ours, None)
    assert [e.id for e in platform.state("ns/a", "default").ready] == ["pod-1"]


def test_replica_pods_are_restricted() -> None:
    dep = build_deployment(_svc(), "default", replicas=1)
    pod = dep["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    (container,) = pod["containers"]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                            "seccompProfile": {"type": "RuntimeDefault"}}


def test_replica_pods_keep_serving_while_leaving_the_endpoints() -> None:
    (container,) = build_deployment(_svc(), "default", replicas=1)["spec"]["template"]["spec"]["containers"]
    assert container["lifecycle"] == {"preStop": {"sleep": {"seconds": 3}}}
    # the runtime's drain (after the pause) must fit in the grace period with the pause
    pod = build_deployment(_svc(), "default")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > 3


def _pod(name: str = "p", *, phase: str = "Running", deleting: bool = False, conditions=(), **cs: object):
    md = {"name": name, **({"deletionTimestamp": "2026-01-01T00:00:00Z"} if deleting else {})}
    status = {"phase": phase, "conditions": list(conditions),
              "containerStatuses": [dict({"name": "paddleserving", "ready": False, "restartCount": 0}, **cs)]}
    return {"metadata": md, "status": status}


EXIT3 = {"terminated": {"exitCode": 3, "reason": "Error"}}


@pytest.mark.parametrize(("pod", "want"), [
    (_pod(state={"waiting": {"reason": "ContainerCreating"}}), None),          # still starting
    (_pod(state={"running": {}}), None),                                        # loading its model
    (_pod(state={"running": {}}, ready=True, lastState=EXIT3, restartCount=1), None),  # recovered
    (_pod(state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}}, lastState=EXIT3,
          restartCount=2), "Pod p: CrashLoopBackOff, last exit code 3 (Error)"),
    (_pod(state={"waiting": {"reason": "ErrImageNeverPull", "message": 'image "x" not present'}}),
     'Pod p: ErrImageNeverPull: image "x" not present'),
    (_pod(state=EXIT3), "Pod p: container paddleserving exit code 3 (Error)"),
    (_pod(state={"running": {}}, lastState={"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
          restartCount=1), "Pod p: container paddleserving restarted after exit code 137 (OOMKilled)"),
    (_pod(state={"terminated": {"exitCode": 0, "reason": "Completed"}}), None),
    (_pod(phase="Pending", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                         "message": "0/1 nodes: Insufficient cpu"}]),
     "Pod p is unschedulable: 0/1 nodes: Insufficient cpu"),
    (_pod(phase="Failed") | {"status": {"phase": "Failed", "reason": "Evicted", "message": "low memory"}},
     "Pod p failed: Evicted: low memory"),
    (_pod(deleting=True, state=EXIT3), None),                                   # on its way out
])
def test_pod_failure_reasons(pod, want) -> None:
    assert pod_failure(pod) == want


def test_side_failure_is_the_first_failing_pod_by_name() -> None:
    ok, bad_b, bad_c = _pod("a", state={"running": {}}), _pod("b", state=EXIT3), _pod("c", state=EXIT3)
    assert side_failure([bad_c, ok, bad_b]) == "Pod b: container paddleserving exit code 3 (Error)"
    assert side_failure([ok]) is None and side_failure([]) is None


def test_the_released_condition_keeps_the_controllers_own_transition_time() -> None:
    old = {"conditions": [{"type": "Released", "status": "False", "reason": "CanaryNotReady",
                           "lastTransitionTime": "2020-01-01T00:00:00Z"}]}
    new = {"conditions": [{"type": "Released", "status": "False", "reason": "RollingOut",
                           "lastTransitionTime": "2020-01-01T00:05:00Z"}]}
    # Same status, another reason: the release's own time of the change, not the first False.
    assert merge_transition_times(new, old)["conditions"][0]["lastTransitionTime"] == "2020-01-01T00:05:00Z"


# ---- across nodes and traces --------------------------------------------------------------------------
def test_replicas_spread_over_nodes_and_leave_a_dead_node_within_seconds() -> None:
    pod = build_deployment(_svc(), "default")["spec"]["template"]["spec"]
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["maxSkew"] == 1
    # a preference: never a Pod left Pending for the sake of the spread
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["labelSelector"]["matchLabels"] == build_deployment(_svc(), "default")["spec"]["selector"]["matchLabels"]
    keys = {t["key"]: t["tolerationSeconds"] for t in pod["tolerations"] if t["effect"] == "NoExecute"}
    assert keys == {"node.kubernetes.io/not-ready": 10, "node.kubernetes.io/unreachable": 10}


@pytest.mark.parametrize(("environ", "want"), [
    ({}, ()),
    ({"PATH": "/bin", "OTEL_SERVICE_NAME": "elasticserving-controller"}, ()),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318", "OTEL_TRACES_SAMPLER_ARG": "0.5", "HOME": "/"},
     (("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318"), ("OTEL_TRACES_SAMPLER_ARG", "0.5"))),
])
def test_replicas_inherit_the_controllers_tracing_settings_but_not_its_name(environ, want) -> None:
    assert telemetry_env(environ) == want
    env = build_deployment(_svc(), "default", replica_env=want)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [(e["name"], e["value"]) for e in env if e["name"].startswith("OTEL_")] == list(want)
