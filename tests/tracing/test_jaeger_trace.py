"""A request with the caller's `traceparent`, cold from zero through a real local stack (activator, LAC
runtime), read back from a real Jaeger: one trace, the activator's and the runtime's spans under the
caller's span, the wait for the replica at least as long as the replica took to load its model."""

from __future__ import annotations

import json
import re
import urllib.request

import pytest

from tests.helpers import paddleservice, start_stack, write_yaml
from tests.tracing.jaeger_server import environment

pytestmark = pytest.mark.timeout(300)
RUNTIME = "python3 -m runtime --model lac --name lac --port $PORT"
HOST = "lac.trace.example.com"
BODY = {"feed": [{"words": "我爱北京天安门"}], "fetch": ["word_seg"]}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def stack(jaeger, tmp_path_factory):
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_http, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
           "OTEL_BSP_SCHEDULE_DELAY": "200"}
    tmp = tmp_path_factory.mktemp("tracing")
    with environment(env):  # `up` and every process it starts inherit them
        s = start_stack(tmp, [write_yaml(tmp / "lac.yaml", paddleservice("lac", "trace", RUNTIME, minScale=0))])
    yield s
    assert s.stop() == 0


def tags(span) -> dict:
    return {t["key"]: t["value"] for t in span["tags"]}


def test_cold_start_trace_continues_the_callers_and_shows_the_wait(stack, jaeger):
    assert stack.service("trace/lac")["status"]["replicas"] == 0
    status, headers, body = stack.request(HOST, "/lac/prediction", BODY, timeout=120,
                                          headers={"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"})
    assert status == 200, body
    assert json.loads(body)["result"][0]["word_seg"] == "我|爱|北京|天安门"
    answered = {k.lower(): v for k, v in headers.items()}["traceparent"]
    assert re.fullmatch(f"00-{TRACE_ID}-[0-9a-f]{{16}}-01", answered)

    def complete(spans) -> bool:
        names = {s["operationName"] for s in spans}
        return {"activator http", "wait for replica", "proxy", "runtime paddle-serving", "inference"} <= names

    spans = jaeger.wait_spans(TRACE_ID, complete, 60)
    by_name = {s["operationName"]: s for s in spans}
    by_id = {s["spanID"]: s for s in spans}

    def parent(span) -> str | None:
        refs = [r for r in span["references"] if r["refType"] == "CHILD_OF"]
        return refs[0]["spanID"] if refs else None

    root = by_name["activator http"]
    assert parent(root) == CALLER_SPAN  # under the caller's span, in the caller's trace
    assert answered.split("-")[2] == root["spanID"]  # the answer names the activator's span
    assert root["serviceName"].startswith("elasticserving-activator")
    for name in ("route", "wait for replica", "proxy"):
        assert parent(by_name[name]) == root["spanID"], name
    server = by_name["runtime paddle-serving"]
    assert parent(server) == by_name["proxy"]["spanID"]  # continued to the runtime through the proxy
    assert server["serviceName"].startswith("elasticserving-runtime")
    for name in ("decode", "inference", "encode"):
        assert by_id[parent(by_name[name])]["operationName"] == "runtime paddle-serving", name
    wait = by_name["wait for replica"]
    assert tags(wait)["elasticserving.cold_start"] is True
    assert tags(root)["elasticserving.cold_start"] is True
    assert tags(root)["elasticserving.side"] == "default"
    # The replica's own start: from its /metrics (the proxy span names its address).
    proxy = tags(by_name["proxy"])
    with urllib.request.urlopen(f"http://{proxy['server.address']}:{proxy['server.port']}/metrics",
                                timeout=5) as r:
        metrics = r.read().decode()
    load = float(re.search(r"^elasticserving_runtime_model_load_seconds\{[^}]*\} (\S+)$", metrics, re.M)[1])
    assert wait["duration"] / 1e6 >= load > 0


def test_malformed_traceparent_starts_a_new_trace(stack, jaeger):
    status, headers, _ = stack.request(HOST, "/lac/prediction", BODY, timeout=120,
                                       headers={"traceparent": "00-not-a-trace-01"})
    assert status == 200
    answered = {k.lower(): v for k, v in headers.items()}["traceparent"]
    m = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}", answered)
    assert m and m[1] != TRACE_ID, answered
    spans = jaeger.wait_spans(m[1], lambda s: {"activator http", "runtime paddle-serving"}
                              <= {x["operationName"] for x in s})
    root = next(s for s in spans if s["operationName"] == "activator http")
    assert not [r for r in root["references"] if r["refType"] == "CHILD_OF"]  # a root: nothing to continue


def test_runtime_metrics_carry_the_trace_id_as_an_exemplar_in_openmetrics(stack, jaeger):
    status, headers, _ = stack.request(HOST, "/lac/prediction", BODY, timeout=120)
    assert status == 200
    tid = {k.lower(): v for k, v in headers.items()}["traceparent"].split("-")[1]
    spans = jaeger.wait_spans(tid, lambda s: any(x["operationName"] == "proxy" for x in s))
    proxy = tags(next(s for s in spans if s["operationName"] == "proxy"))
    req = urllib.request.Request(f"http://{proxy['server.address']}:{proxy['server.port']}/metrics",
                                 headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert "openmetrics" in r.headers["Content-Type"]
        text = r.read().decode()
    assert re.search(r'elasticserving_runtime_request_duration_seconds_bucket\{.*\} \S+ # \{trace_id="[0-9a-f]{32}"\}',
                     text)
    assert "elasticserving_trace_spans_dropped_total 0.0" in text


def test_grpc_door_continues_the_trace_and_answers_it_in_trailing_metadata(stack, jaeger):
    import grpc

    # tritonclient's copy of the KServe v2 protos, as tests/e2e/test_grpc.py uses: runtime.proto defines the
    # same symbols, and both in one process clash in protobuf's descriptor pool.
    pb = pytest.importorskip("tritonclient.grpc.service_pb2")

    trace_id = "0af7651916cd43dd8448eb211c80319c"
    req = pb.ModelInferRequest(model_name="lac", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="words", datatype="BYTES", shape=[1], contents=pb.InferTensorContents(
            bytes_contents=["我爱北京天安门".encode()]))])
    with grpc.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as ch:
        infer = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                               request_serializer=pb.ModelInferRequest.SerializeToString,
                               response_deserializer=pb.ModelInferResponse.FromString)
        _, call = infer.with_call(req, timeout=120, metadata=(
            ("x-paddleservice", "lac.trace"), ("traceparent", f"00-{trace_id}-b7ad6b7169203331-01")))
    trailing = dict(call.trailing_metadata())
    assert trailing["traceparent"].startswith(f"00-{trace_id}-")
    spans = jaeger.wait_spans(trace_id, lambda s: {"activator grpc", "runtime v2-grpc"}
                              <= {x["operationName"] for x in s})
    by_name = {s["operationName"]: s for s in spans}
    root = by_name["activator grpc"]
    assert [r["spanID"] for r in root["references"]] == ["b7ad6b7169203331"]
    assert tags(by_name["runtime v2-grpc"])["rpc.system"] == "grpc"
