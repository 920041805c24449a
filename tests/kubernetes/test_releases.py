"""Releases against a real kube-apiserver: the CRD refuses a rollout duration that is not one in the same
words as the local stack, the release status survives the schema (no pruning) and shows in
`kubectl get -o wide`, tag routes are published, and a new leader goes on with a gradual rollout from
the status the last one wrote. No kubelet: the tests write the EndpointSlices of ready Pods."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml

from autoscaler.spec import PaddleService, SpecError
from tests.kubernetes.cluster import Cluster, ControllerProc, condition, wait_for
from tests.kubernetes.test_controller import endpoint_slice, get_psvc

pytestmark = pytest.mark.kubernetes
NS = "es-rel"


def manifest(name: str, **spec: object) -> dict:
    body: dict = {"default": {"containerImage": "elasticserving/runtime", "tag": "v1", "port": 8000,
                              "arg": "python3 -m runtime --model lac --port $PORT"}}
    body.update(spec)
    return {"apiVersion": "elasticserving.paddlepaddle.org/v1", "kind": "PaddleService",
            "metadata": {"name": name, "namespace": NS}, "spec": body}


@pytest.fixture(scope="module")
def ns(installed: Cluster) -> Cluster:
    installed.apply_yaml(f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NS}\n")
    return installed


@pytest.mark.parametrize("value", ["soon", "4", "1 m", "4s\n", 30])
def test_the_crd_and_the_local_stack_refuse_a_bad_rollout_duration_alike(ns: Cluster, value) -> None:
    body = manifest("typo", rolloutDuration=value)
    out = ns.apply_yaml(yaml.safe_dump(body), check=False)
    assert out.returncode != 0
    with pytest.raises(SpecError) as local:
        PaddleService.from_dict(body)
    assert str(local.value) in out.stderr, (str(local.value), out.stderr)


@pytest.fixture(scope="module")
def ctl(ns: Cluster) -> Iterator[ControllerProc]:
    proc = ControllerProc(ns, "ctl-rel").start()
    try:
        wait_for(proc.is_ready, 30, what="controller to lead (ready)")
        yield proc
    finally:
        proc.stop()
        print(proc.log()[-3000:])


def test_release_status_tag_routes_and_a_new_leader_going_on(ns: Cluster, ctl: ControllerProc) -> None:
    name, key = "ramped", f"{NS}/ramped"
    canary = {"containerImage": "elasticserving/runtime", "tag": "v2", "port": 8000}
    ns.apply_yaml(yaml.safe_dump(manifest(name, canary=canary, canaryTrafficPercent=0, rolloutDuration="20s",
                                          service={"minScale": 1})))
    for side, ip in (("default", "10.2.0.1"), ("canary", "10.2.0.2")):
        ns.apply_yaml(endpoint_slice(f"{name}-{side}", NS, side, {f"{name}-{side}-1": (ip, True)}, 8000))
    route = wait_for(lambda: (r := ctl.route(key)) and r["sides"]["canary"]["endpoints"] and r, 20,
                     what="both sides routed")
    assert route["tags"] == {"default": [f"default-{name}.{NS}.example.com", f"default-{name}.{NS}",
                                         f"default-{name}.{NS}.svc"],
                             "canary": [f"canary-{name}.{NS}.example.com", f"canary-{name}.{NS}",
                                        f"canary-{name}.{NS}.svc"]}

    ns.kubectl("patch", "psvc", name, "-n", NS, "--type=merge", "-p", '{"spec":{"canaryTrafficPercent":100}}')
    obj = wait_for(lambda: (o := get_psvc(ns, name, NS)) and (o["status"].get("canary") or {}).get("rollout") and o,
                   20, what="a rollout in status")
    st = obj["status"]
    # Every release field came through the CRD's structural schema (nothing pruned).
    assert st["canary"]["url"] == f"http://canary-{name}.{NS}.example.com"
    assert st["canary"]["image"] == "elasticserving/runtime:v2" and st["canary"]["ready"] is True
    assert st["canary"]["readyReplicas"] == 1 and st["default"]["argHash"] and st["default"]["revision"]
    assert st["canary"]["rollout"]["toPercent"] == 100 and st["canary"]["rollout"]["stepPercent"] == 5
    assert condition(obj, "Released")["reason"] == "RollingOut"
    wide = ns.kubectl("get", "psvc", name, "-n", NS, "-o", "wide").stdout
    for column in ("DEFAULT-IMAGE", "CANARY-IMAGE", "CANARY-%", "CANARY-READY", "RELEASE", "elasticserving/runtime:v2",
                   "RollingOut"):
        assert column in wide, (column, wide)

    wait_for(lambda: 5 < ctl.route(key)["canary_percent"] < 80, 30, what="a few steps done")
    start = get_psvc(ns, name, NS)["status"]["canary"]["rollout"]["startTime"]
    ctl.stop()
    before = get_psvc(ns, name, NS)["status"]["canary"]["percent"]
    nxt = ControllerProc(ns, "ctl-rel-2").start()
    try:
        wait_for(nxt.is_ready, 30, what="the new leader")
        route = wait_for(lambda: nxt.route(key), 20, what="the new leader's route")
        # Not back to 1 %, not at once at 100 %: the same ramp from the same start time.
        assert before <= route["canary_percent"] < 100, (before, route["canary_percent"])
        obj = wait_for(lambda: (o := get_psvc(ns, name, NS)) and o["status"]["canary"]["percent"] >= before and o,
                       20, what="status from the new leader")
        assert obj["status"]["canary"]["rollout"]["startTime"] == start
        wait_for(lambda: nxt.route(key)["canary_percent"] == 100, 40, what="the ramp finished by the new leader")
        ns.kubectl("delete", "psvc", name, "-n", NS, "--timeout=30s")  # its finalizer needs a leader
    finally:
        nxt.stop()
        print(nxt.log()[-3000:])
