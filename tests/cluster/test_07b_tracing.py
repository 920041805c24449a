"""Traces on a real node: deploy/monitoring/jaeger.yaml as a Jaeger Pod (the binary scripts/build-jaeger.sh
built, run from the runtime image: the node cannot pull jaegertracing/jaeger), config-tracing pointed at
its Service, the control plane restarted to read it. A request with the caller's `traceparent`, cold
from zero through the activator's NodePort, comes back from Jaeger's query API as one trace: the
activator's spans under the caller's, the runtime's (a replica the controller created with the
settings) under the activator's proxy span, the cold start as its own span."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.cluster.node import LAC_BODY, ROOT, SYSTEM_NS, Node, fresh_service, host_of, lac_service
from tests.helpers import wait_for
from tests.tracing.jaeger_server import Jaeger, require_jaeger

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]
NS, NAME = "es-tracing", "traced"
BIN_DIR = Path("/var/tmp/elasticserving-jaeger")  # readable by the runtime image's user on every node
TRACE_ID = "5af92f3577b34da6a3ce929d0e0e4737"
CALLER_SPAN = "00f067aa0ba902b8"
OTEL = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://jaeger.{NS}.svc:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "200"}


def jaeger_manifest() -> str:
    """deploy/monitoring/jaeger.yaml in the test's namespace, its image swapped for our runtime image
    running the binary from a host directory."""
    docs = list(yaml.safe_load_all((ROOT / "deploy/monitoring/jaeger.yaml").read_text()))
    for d in docs:
        d["metadata"]["namespace"] = NS
        if d["kind"] == "Deployment":
            pod = d["spec"]["template"]["spec"]
            pod["securityContext"]["runAsUser"] = 65532
            c = pod["containers"][0]
            c.update(image="elasticserving/runtime-lac:latest", imagePullPolicy="Never", command=["/opt/jaeger/jaeger"])
            c["volumeMounts"].append({"name": "binary", "mountPath": "/opt/jaeger", "readOnly": True})
            pod["volumes"].append({"name": "binary", "hostPath": {"path": str(BIN_DIR), "type": "Directory"}})
    return yaml.safe_dump_all(docs)


def restart_control_plane(node: Node) -> None:
    for dep in ("elasticserving-controller", "elasticserving-activator"):
        node.kubectl("-n", SYSTEM_NS, "rollout", "restart", f"deploy/{dep}")
    for dep in ("elasticserving-controller", "elasticserving-activator"):
        node.kubectl("-n", SYSTEM_NS, "rollout", "status", f"deploy/{dep}", "--timeout=300s", timeout=320)
    wait_for(node.leader_published, 120, 0.5, "a leader the activators reach")


def set_tracing(node: Node, data: dict[str, str | None]) -> None:
    node.kubectl("-n", SYSTEM_NS, "patch", "configmap", "config-tracing", "--type", "merge",
                 "-p", json.dumps({"data": data}))
    restart_control_plane(node)


@pytest.fixture(scope="module")
def jaeger(stack: Node) -> Iterator[Jaeger]:
    BIN_DIR.mkdir(mode=0o755, exist_ok=True)
    shutil.copy2(require_jaeger(), BIN_DIR / "jaeger")
    (BIN_DIR / "jaeger").chmod(0o755)
    stack.kubectl("wait", "--for=delete", f"namespace/{NS}", "--timeout=300s", timeout=320, check=False)  # a reused node
    stack.apply(f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NS}\n")
    stack.apply(jaeger_manifest())
    stack.kubectl("-n", NS, "rollout", "status", "deploy/jaeger", "--timeout=180s", timeout=200)
    pod = stack.get("pods", "-n", NS, "-l", "app.kubernetes.io/name=jaeger")["items"][0]
    query = f"http://{pod['status']['podIP']}:16686"
    set_tracing(stack, OTEL)
    try:
        yield Jaeger(otlp_http=OTEL["OTEL_EXPORTER_OTLP_ENDPOINT"], otlp_grpc=f"http://jaeger.{NS}.svc:4317", query=query)
    finally:
        set_tracing(stack, dict.fromkeys(OTEL))  # back to tracing off
        stack.kubectl("delete", "namespace", NS, "--wait=false", "--ignore-not-found")


def test_a_cold_request_is_one_trace_in_the_jaeger_pod(stack: Node, jaeger: Jaeger) -> None:
    fresh_service(stack, NS, NAME, lac_service(NS, NAME))  # minScale 0: the request wakes it
    # The new route reaches the activators (just restarted with tracing on) a moment after the Deployment
    # exists: an untraced request until one is routed (it wakes the service), then back to zero, so the
    # traced request is the cold one and finds its route.
    wait_for(lambda: stack.post(host_of(NS, NAME), "/lac/prediction", LAC_BODY, timeout=300).status != 404,
             120, 0.5, "the service routed")
    wait_for(lambda: stack.at_zero(NS, NAME), 300, 0.5, "the service back at zero, its Pod gone")
    a = stack.post(host_of(NS, NAME), "/lac/prediction", LAC_BODY, timeout=300,
                   headers={"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"})
    assert a.status == 200, a.body[:300]
    assert a.headers["traceparent"].startswith(f"00-{TRACE_ID}-")

    want = {"activator http", "wait for replica", "proxy", "runtime paddle-serving", "inference"}
    spans = jaeger.wait_spans(TRACE_ID, lambda s: want <= {x["operationName"] for x in s}, 90)
    by_name = {s["operationName"]: s for s in spans}

    def parent(span: dict) -> str | None:
        refs = [r for r in span["references"] if r["refType"] == "CHILD_OF"]
        return refs[0]["spanID"] if refs else None

    root = by_name["activator http"]
    assert parent(root) == CALLER_SPAN and root["serviceName"].startswith("elasticserving-activator")
    assert parent(by_name["wait for replica"]) == root["spanID"]
    assert {t["key"]: t["value"] for t in by_name["wait for replica"]["tags"]}["elasticserving.cold_start"] is True
    server = by_name["runtime paddle-serving"]
    assert parent(server) == by_name["proxy"]["spanID"]  # the replica continued the activator's trace
    assert server["serviceName"].startswith("elasticserving-runtime")
    print(f"trace {TRACE_ID}: {len(spans)} spans from "
          f"{sorted({s['serviceName'] for s in spans})}; cold start {by_name['wait for replica']['duration'] / 1e6:.2f}s")
