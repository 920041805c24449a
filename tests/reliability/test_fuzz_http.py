"""Fuzz pass over the HTTP entry points (activator -> runtime, Paddle Serving API and v2 REST) with
hypothesis: every input gets a 2xx/4xx JSON answer, never a 5xx, a hang or a dead process."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import paddleservice, start_stack, wait_for, write_yaml
from tests.reliability.figures import record

RUNTIME = "python3 -m runtime --model lac --name lac --port $PORT --max-body-bytes 65536"
HOST = "fuzz.reliability.example.com"
COUNTS: dict[str, int] = {}

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12)
feed_like = st.fixed_dictionaries({}, optional={
    "feed": st.one_of(json_values, st.lists(st.fixed_dictionaries({}, optional={"words": json_values}), max_size=3)),
    "fetch": json_values})
v2_like = st.fixed_dictionaries({}, optional={
    "inputs": st.one_of(json_values, st.lists(st.fixed_dictionaries({}, optional={
        "name": st.sampled_from(["words", "x", ""]), "datatype": st.sampled_from(["BYTES", "FP32", "INT64", "?"]),
        "shape": json_values, "data": json_values}), max_size=2)),
    "outputs": json_values, "id": json_values})
raw_bytes = st.binary(max_size=300)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    s = start_stack(tmp, [write_yaml(tmp / "f.yaml", paddleservice("fuzz", "reliability", RUNTIME, minScale=1))])
    wait_for(lambda: s.service("reliability/fuzz")["status"]["replicas"] == 1, 120, 0.2, "replica ready")
    yield s
    record("fuzz_http_entry_points", dict(COUNTS, inputs_tried=sum(COUNTS.values())))
    assert s.stop() == 0


def check(stack, path: str, raw: bytes, kind: str) -> None:
    COUNTS[kind] = COUNTS.get(kind, 0) + 1
    status, _, data = stack.request(HOST, path, raw=raw, timeout=30)
    assert status in (200, 400, 404, 413), (status, raw[:200], data[:300])
    body = json.loads(data)
    assert ("error" in body) == (status != 200), body


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(feed_like.map(lambda d: json.dumps(d, ensure_ascii=False).encode()), raw_bytes))
def test_paddle_serving_api(stack, raw):
    check(stack, "/lac/prediction", raw, "paddle_serving")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(v2_like.map(lambda d: json.dumps(d, ensure_ascii=False).encode()), raw_bytes))
def test_v2_infer(stack, raw):
    check(stack, "/v2/models/lac/infer", raw, "v2_rest")


def test_still_serving_after_fuzz(stack):
    status, _, data = stack.request(HOST, "/lac/prediction", {"feed": [{"words": "我爱北京天安门"}], "fetch": ["word_seg"]})
    assert status == 200 and json.loads(data)["result"][0]["word_seg"] == "我|爱|北京|天安门"
    status, _, _ = stack.request(HOST, "/lac/prediction", raw=b"[" * 70000)
    assert status == 413
