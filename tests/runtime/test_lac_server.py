"""The LAC runtime on its own: dynamic batching merges concurrent requests, metrics follow
Prometheus conventions, bad input is 400 while the server keeps serving, SIGTERM drains."""

from __future__ import annotations

import json
import re
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import http, start_runtime

pytestmark = pytest.mark.timeout(120)
REQ = {"feed": [{"words": "我爱北京天安门"}], "fetch": ["word_seg"]}


@pytest.fixture(scope="module")
def server():
    p, port, _ = start_runtime("--model", "lac", "--batch-timeout-ms", "5")
    yield p, f"http://127.0.0.1:{port}"
    if p.poll() is None:
        p.kill()


def metric(text: str, name: str) -> float:
    return sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M))


def test_concurrent_requests_are_batched(server):
    _, base = server
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda _: http("POST", base + "/lac/prediction", REQ), range(128)))
    assert all(s == 200 and json.loads(b)["result"][0]["word_seg"] == "我|爱|北京|天安门" for s, _, b in results)
    text = http("GET", base + "/metrics")[2].decode()
    batches = metric(text, "elasticserving_runtime_batch_size_count")
    items = metric(text, "elasticserving_runtime_batch_size_sum")
    assert items >= 128 and batches < items, (batches, items)
    for name in ("elasticserving_runtime_requests_total", "elasticserving_runtime_request_duration_seconds_bucket",
                 "elasticserving_runtime_inflight_requests", "elasticserving_runtime_model_load_seconds"):
        assert name in text


@pytest.mark.parametrize("raw, reason", [
    (b"\xff\xfe", "UTF-8"), (b"[]", "JSON object"), (b'{"feed": []}', "non-empty"),
    (b'{"feed": [{"words": 3}]}', "string"), (b'{"feed": [{"words": "a"}], "fetch": ["x"]}', "fetch"),
])
def test_bad_input_is_400_with_reason(server, raw, reason):
    _, base = server
    status, _, data = http("POST", base + "/lac/prediction", raw=raw)
    assert status == 400 and reason in json.loads(data)["error"]
    status, _, data = http("POST", base + "/other/prediction", REQ)
    assert status == 404


def test_v2_rest_shapes(server):
    _, base = server
    ok = {"inputs": [{"name": "words", "datatype": "BYTES", "shape": [2], "data": ["我爱北京天安门", "春天来了"]}],
          "id": "r1"}
    status, _, data = http("POST", base + "/v2/models/lac/infer", ok)
    out = json.loads(data)
    assert status == 200 and out["id"] == "r1" and out["outputs"][0]["data"] == ["我|爱|北京|天安门", "春天|来|了"]
    bad = json.loads(json.dumps(ok))
    bad["inputs"][0]["shape"] = [3]
    assert http("POST", base + "/v2/models/lac/infer", bad)[0] == 400
    bad["inputs"][0].update(shape=[2], datatype="FP32")
    assert http("POST", base + "/v2/models/lac/infer", bad)[0] == 400
    status, _, data = http("GET", base + "/v2/models/lac")
    assert json.loads(data)["inputs"] == [{"name": "words", "datatype": "BYTES", "shape": [-1]}]


def test_sigterm_drains_in_flight_then_exits(server):
    p, base = server
    results = []
    big = {"feed": [{"words": "我爱北京天安门" * 50}] * 32, "fetch": ["word_seg"]}
    threads = [threading.Thread(target=lambda: results.append(http("POST", base + "/lac/prediction", big)[0]))
               for _ in range(8)]
    for t in threads:
        t.start()
    p.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(30)
    assert p.wait(30) == 0
    assert all(s in (200, 503) for s in results) and results.count(200) >= 1
