"""KServe v2 through the stack with a real client (tritonclient): gRPC via the activator including
cold start from zero, REST v2 via the activator, and gRPC errors with reasons."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import ROOT, start_stack

grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.timeout(180)
ROUTE = {"x-paddleservice": "paddleservice-sample.paddleservice-system"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grpc")
    s = start_stack(tmp, [ROOT / "examples/lac.yaml"])
    yield s
    assert s.stop() == 0


def words(client, *texts: str):
    inp = client.InferInput("words", [len(texts)], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
    return inp


def test_grpc_cold_start_through_activator(stack):
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{stack.grpc_port}")
    assert stack.service("paddleservice-system/paddleservice-sample")["status"]["replicas"] == 0
    r = c.infer("lac", [words(grpcclient, "我爱北京天安门", "春天来了")], headers=ROUTE, client_timeout=60)
    assert [x.decode() for x in r.as_numpy("word_seg")] == ["我|爱|北京|天安门", "春天|来|了"]
    assert c.is_model_ready("lac", headers=ROUTE)
    assert c.get_model_metadata("lac", headers=ROUTE).inputs[0].name == "words"


def test_grpc_errors_have_reasons(stack):
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{stack.grpc_port}")
    bad = grpcclient.InferInput("words", [1], "FP32")
    bad.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    with pytest.raises(InferenceServerException, match="INVALID_ARGUMENT.*BYTES"):
        c.infer("lac", [bad], headers=ROUTE, client_timeout=60)
    with pytest.raises(InferenceServerException, match="NOT_FOUND.*no PaddleService"):
        c.infer("lac", [words(grpcclient, "x")], headers={"x-paddleservice": "nope.nowhere"})
    with pytest.raises(InferenceServerException, match="NOT_FOUND.*unknown model"):
        c.infer("other", [words(grpcclient, "x")], headers=ROUTE, client_timeout=60)


def test_v2_rest_with_tritonclient_through_activator(stack):
    c = httpclient.InferenceServerClient(f"127.0.0.1:{stack.http_port}",
                                         )
    host = {"Host": "paddleservice-sample.paddleservice-system.example.com"}
    inp = httpclient.InferInput("words", [1], "BYTES")
    inp.set_data_from_numpy(np.array(["我爱北京天安门".encode()], dtype=object), binary_data=False)
    out = httpclient.InferRequestedOutput("word_seg", binary_data=False)
    r = c.infer("lac", [inp], outputs=[out], headers=host)
    assert list(r.as_numpy("word_seg")) == ["我|爱|北京|天安门"]
    assert c.is_model_ready("lac", headers=host)
