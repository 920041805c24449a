"""The LAC runtime on its own: dynamic batching merges concurrent requests, metrics follow
Prometheus conventions, bad or oversize input is 400/413 while the server keeps serving, tritonclient
over HTTP and gRPC, one JSON log line per request, SIGTERM drains."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import ROOT, free_port, http, start_runtime, wait_for

pytestmark = pytest.mark.timeout(120)
REQ = {"feed": [{"words": "我爱北京天安门"}], "fetch": ["word_seg"]}


@pytest.fixture(scope="module")
def server():
    p, port, grpc_port = start_runtime("--model", "lac", "--batch-timeout-ms", "5", grpc=True)
    yield p, f"http://127.0.0.1:{port}", grpc_port
    if p.poll() is None:
        p.kill()


def metric(text: str, name: str) -> float:
    return sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M))


def test_concurrent_requests_are_batched(server):
    _, base, _ = server
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
    _, base, _ = server
    status, _, data = http("POST", base + "/lac/prediction", raw=raw)
    assert status == 400 and reason in json.loads(data)["error"]
    status, _, data = http("POST", base + "/other/prediction", REQ)
    assert status == 404


def test_v2_rest_shapes(server):
    _, base, _ = server
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


def test_tritonclient_http_with_its_default_binary_tensors(server):
    """tritonclient.http sends BYTES inputs and asks for outputs as binary data unless told otherwise."""
    httpclient = pytest.importorskip("tritonclient.http")
    import numpy as np

    _, url, _ = server
    c = httpclient.InferenceServerClient(url.removeprefix("http://"))
    words = httpclient.InferInput("words", [2], "BYTES")
    words.set_data_from_numpy(np.array(["我爱北京天安门".encode(), "我爱北京".encode()], dtype=object))
    for outputs in ([httpclient.InferRequestedOutput("word_seg")], None):  # binary answer, then JSON
        r = c.infer("lac", [words], outputs=outputs)
        assert r.as_numpy("word_seg").tolist() == [b"\xe6\x88\x91|\xe7\x88\xb1|\xe5\x8c\x97\xe4\xba\xac|"
                                                   b"\xe5\xa4\xa9\xe5\xae\x89\xe9\x97\xa8", "我|爱|北京".encode()]
    # A body that does not match its header is a 400 with the reason, not a crash.
    status, _, data = http("POST", f"{url}/v2/models/lac/infer", raw=b'{"inputs": []}xx',
                           headers={"Inference-Header-Content-Length": "99"})
    assert status == 400 and "does not fit" in json.loads(data)["error"]


@pytest.mark.parametrize(("feed", "reason"), [
    ([{"words": "字" * 2049}], "sentence 0 has 2049 characters; the limit is 2048"),
    ([{"words": "字"}] * 33, "33 items in one request; the limit is 32"),
])
def test_oversize_input_is_413_with_reason(server, feed, reason):
    _, base, _ = server
    status, _, data = http("POST", base + "/lac/prediction", {"feed": feed, "fetch": ["word_seg"]})
    assert status == 413 and reason in json.loads(data)["error"]
    ok = {"feed": [{"words": "字" * 2048}] * 32, "fetch": ["word_seg"]}
    assert http("POST", base + "/lac/prediction", ok)[0] == 200


def test_tritonclient_grpc(server):
    grpcclient = pytest.importorskip("tritonclient.grpc")
    import numpy as np
    from tritonclient.utils import InferenceServerException

    c = grpcclient.InferenceServerClient(f"127.0.0.1:{server[2]}")
    assert c.is_server_ready() and c.is_model_ready("lac")
    words = grpcclient.InferInput("words", [2], "BYTES")
    words.set_data_from_numpy(np.array(["我爱北京天安门".encode(), "春天来了".encode()], dtype=object))
    r = c.infer("lac", [words], request_id="abc")
    assert r.get_response().id == "abc"
    assert [x.decode() for x in r.as_numpy("word_seg")] == ["我|爱|北京|天安门", "春天|来|了"]
    long = grpcclient.InferInput("words", [1], "BYTES")
    long.set_data_from_numpy(np.array([("字" * 3000).encode()], dtype=object))
    with pytest.raises(InferenceServerException, match="INVALID_ARGUMENT.*limit is 2048"):
        c.infer("lac", [long])
    bad = grpcclient.InferInput("words", [1], "FP32")
    bad.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    with pytest.raises(InferenceServerException, match="INVALID_ARGUMENT.*BYTES"):
        c.infer("lac", [bad])


def test_json_log_one_line_per_request(tmp_path):
    port = free_port()
    log = (tmp_path / "runtime.log").open("w")
    p = subprocess.Popen([sys.executable, "-m", "runtime", "--model", "lac", "--host", "127.0.0.1", "--port", str(port),
                          "--log-format", "json"], cwd=ROOT, stdout=log, stderr=log,
                         env={**os.environ, "GRPC_PORT": "", "ELASTICSERVING_LOG_LEVEL": "INFO"})
    try:
        wait_for(lambda: _ready(port), 90, 0.1, "runtime ready")
        base = f"http://127.0.0.1:{port}"
        assert http("POST", base + "/lac/prediction", REQ, headers={"X-Request-Id": "req-json-1"})[0] == 200
        status, headers, _ = http("POST", base + "/lac/prediction", raw=b"{")
        assert status == 400 and headers["X-Request-Id"]

        def lines() -> list[dict]:
            text = (tmp_path / "runtime.log").read_text()
            return [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]

        def requests() -> list[dict]:
            return [r for r in lines() if "request_id" in r]

        got = wait_for(lambda: len(requests()) == 2 and requests(), 30, 0.05, "two request log lines")
        assert got[0]["request_id"] == "req-json-1" and got[0]["status"] == 200 and got[0]["model"] == "lac"
        assert got[0]["protocol"] == "paddle-serving" and got[0]["duration_ms"] > 0
        assert got[1]["request_id"] == headers["X-Request-Id"] and got[1]["status"] == 400
        assert all("level" in r and "time" in r for r in lines())
    finally:
        p.terminate()
        p.wait(30)
        log.close()


def _ready(port: int) -> bool:
    try:
        return http("GET", f"http://127.0.0.1:{port}/ready", timeout=1)[0] == 200
    except OSError:
        return False


def test_sigterm_drains_in_flight_then_exits(server):
    p, base, _ = server
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
    assert results == [200] * len(results) and results  # draining replicas keep serving

