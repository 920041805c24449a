"""KServe v2 over gRPC on a real node: tritonclient through the activator Service's gRPC NodePort
(routed by the metadata key x-paddleservice) to a real Pod, from zero replicas."""

from __future__ import annotations

import numpy as np
import pytest

from tests.cluster.node import Node, fresh_service, lac_service
from tests.helpers import wait_for

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

NS, NAME = "es-grpc", "grpc-sample"
ROUTE = {"x-paddleservice": f"{NAME}.{NS}"}


def test_kserve_v2_grpc_through_the_activator_service(stack: Node) -> None:
    fresh_service(stack, NS, NAME, lac_service(NS, NAME))
    wait_for(lambda: stack.deployment_replicas(NS, NAME) == 0, 120, 0.5, "the service at zero")
    c = grpcclient.InferenceServerClient(stack.grpc_target)
    inp = grpcclient.InferInput("words", [2], "BYTES")
    inp.set_data_from_numpy(np.array(["我爱北京天安门".encode(), "春天来了".encode()], dtype=object))

    def infer():
        try:
            return c.infer("lac", [inp], headers=ROUTE, client_timeout=300)
        except InferenceServerException as exc:
            # Routes reach the activators by long-poll, a moment after the service exists: until then an
            # activator answers NOT_FOUND (unknown host) at once, without starting anything (test_01 too).
            if exc.status() == "StatusCode.NOT_FOUND" and "no PaddleService serves host" in (exc.message() or ""):
                return None
            raise

    r = wait_for(infer, 60, 0.1, "the gRPC route at the activators")
    assert [x.decode() for x in r.as_numpy("word_seg")] == ["我|爱|北京|天安门", "春天|来|了"]
    assert c.is_model_ready("lac", headers=ROUTE)
    assert c.get_model_metadata("lac", headers=ROUTE).inputs[0].name == "words"
    pods = stack.pods(NS, NAME)
    assert len(pods) == 1 and pods[0]["status"]["phase"] == "Running"
