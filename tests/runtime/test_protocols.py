"""The protocol adapters without a server: Paddle Serving web API, v2 REST (JSON and binary extension)
and v2 gRPC messages -> the data plane's request, and arrays -> each wire format. Table-driven."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from runtime.errors import BadInput
from runtime.handlers.base import WebApi
from runtime.protocols import paddle_web, v2_grpc_tensors, v2_rest
from runtime.tensors import TensorSpec, object_array, pack_bytes, unpack_bytes

LAC_WEB = WebApi(feed=("words",), fetch={"word_seg": ("word_seg",)}, rows=True)
LAC_SPECS = [TensorSpec("words", "BYTES", (-1,))]
IMAGE_WEB = WebApi(feed=("image",), fetch={"score": ("label", "prob")})
IMAGE_SPECS = [TensorSpec("image", "BYTES", (-1,)), TensorSpec("image", "FP32", (-1, 3, 4, 4))]
RAW_WEB = WebApi(feed=("x",), fetch={"y": ("y",)})
RAW_SPECS = [TensorSpec("x", "INT64", (-1, 2))]


# ---- Paddle Serving web API --------------------------------------------------------------------
def test_paddle_web_lac_round_trip():
    req, fetch = paddle_web.decode({"feed": [{"words": "我爱北京"}, {"words": ""}], "fetch": ["word_seg"]}, "lac",
                                   LAC_WEB, LAC_SPECS)
    assert req.model == "lac" and req.outputs == ["word_seg"] and fetch == ["word_seg"]
    assert req.inputs["words"].dtype == object and req.inputs["words"].tolist() == ["我爱北京".encode(), b""]
    out = paddle_web.encode({"word_seg": object_array(["我|爱|北京".encode(), b""])}, LAC_WEB)
    assert out == {"result": [{"word_seg": "我|爱|北京"}, {"word_seg": ""}]}


def test_paddle_web_image_answer_as_in_the_manual():
    req, _ = paddle_web.decode({"feed": [{"image": "aGk="}], "fetch": ["score"]}, "image", IMAGE_WEB, IMAGE_SPECS)
    assert req.outputs == ["label", "prob"] and req.inputs["image"].tolist() == [b"aGk="]
    outputs = {"label": object_array([b"daisy"]), "prob": np.asarray([0.934], dtype=np.float32)}
    out = paddle_web.encode(outputs, IMAGE_WEB, is_canary=True)
    assert json.dumps(out).startswith('{"result": {"isCanary": ["true"], "label": ["daisy"], "prob": [0.93')
    assert list(paddle_web.encode(outputs, IMAGE_WEB)["result"]) == ["label", "prob"]


def test_paddle_web_raw_numbers_are_stacked_with_the_spec_dtype():
    req, _ = paddle_web.decode({"feed": [{"x": [1, 2]}, {"x": [3, 4]}]}, "m", RAW_WEB, RAW_SPECS)
    assert req.inputs["x"].dtype == np.int64 and req.inputs["x"].shape == (2, 2) and req.outputs == ["y"]


@pytest.mark.parametrize(("body", "reason"), [
    ([], "JSON object"),
    ({"feed": []}, "non-empty"),
    ({"feed": "words"}, "non-empty"),
    ({"feed": ["x"]}, "must be an object"),
    ({"feed": [{"text": "a"}]}, "has no `words`"),
    ({"feed": [{"words": 3}]}, "must be a string"),
    ({"feed": [{"words": "a"}], "fetch": ["x"]}, "fetch"),
    ({"feed": [{"words": "a"}], "fetch": "word_seg"}, "fetch"),
])
def test_paddle_web_bad_bodies(body, reason):
    with pytest.raises(BadInput, match=reason):
        paddle_web.decode(body, "lac", LAC_WEB, LAC_SPECS)


def test_paddle_web_ragged_numbers_are_400():
    with pytest.raises(BadInput, match="feed `x`"):
        paddle_web.decode({"feed": [{"x": [1, 2]}, {"x": [3]}]}, "m", RAW_WEB, RAW_SPECS)


# ---- v2 REST -------------------------------------------------------------------------------------
def binary_request(inputs: list[dict], blobs: list[bytes], **extra) -> tuple[bytes, str]:
    head = json.dumps({"inputs": inputs, **extra}).encode()
    return head + b"".join(blobs), str(len(head))


def test_v2_binary_and_json_inputs_become_arrays():
    words = pack_bytes(["我爱北京", b"\x00\xff"])
    nums = np.arange(6, dtype="<f4").tobytes()
    raw, n = binary_request(
        [{"name": "w", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(words)}},
         {"name": "x", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": len(nums)}},
         {"name": "j", "datatype": "INT64", "shape": [1, 2], "data": [[7, 8]]}], [words, nums], id="r1")
    req, _ = v2_rest.decode(raw, "m", n)
    assert req.id == "r1" and req.outputs is None
    assert req.inputs["w"].tolist() == ["我爱北京".encode(), b"\x00\xff"]
    assert req.inputs["x"].dtype == np.float32 and req.inputs["x"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert req.inputs["j"].dtype == np.int64 and req.inputs["j"].shape == (1, 2)


def test_v2_outputs_binary_on_request_only():
    head = {"outputs": [{"name": "a", "parameters": {"binary_data": True}}, {"name": "b"}]}
    outputs = {"a": np.asarray([1, 2], dtype=np.int32), "b": object_array([b"x"])}
    data, n = v2_rest.encode(head, "m", "id1", outputs)
    doc = json.loads(data[:n])
    assert doc["id"] == "id1" and doc["outputs"][0]["parameters"]["binary_data_size"] == 8
    assert "data" not in doc["outputs"][0] and doc["outputs"][1]["data"] == ["x"]
    assert np.frombuffer(data[n:], dtype="<i4").tolist() == [1, 2]
    data, n = v2_rest.encode({}, "m", None, {"a": np.asarray([1.5], dtype=np.float32)})
    assert n is None and json.loads(data) == {"model_name": "m", "outputs": [
        {"name": "a", "datatype": "FP32", "shape": [1], "data": [1.5]}]}
    data, n = v2_rest.encode({"parameters": {"binary_data_output": True}}, "m", None,
                             {"s": object_array(["é".encode()])})
    assert unpack_bytes(data[n:]) == ["é".encode()]


def binary_input(datatype: str, size: int, shape: list[int] | None = None) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": shape or [1],
                                   "parameters": {"binary_data_size": size}}]}).encode()


def json_input(**fields) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2], **fields}]}).encode()


@pytest.mark.parametrize(("head", "tail", "n", "reason"), [
    (b'{"inputs": []}', b"", "x", "not an integer"),
    (b'{"inputs": []}', b"", "100", "does not fit"),
    (b'{"inputs": [}', b"", None, "JSON part"),
    (b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [0], "data": []}]}', b"extra", None,
     "after the last input"),
    (binary_input("FP32", 8, [2]), b"\0" * 4, None, "runs past"),
    (binary_input("FP32", 3), b"abc", None, "is 4 bytes, the data has 3"),
    (binary_input("FP32", 8, [3]), b"\0" * 8, None, "is 12 bytes, the data has 8"),  # shape/bytes mismatch
    (binary_input("BYTES", 6), struct.pack("<I", 9) + b"ab", None, "runs past the end"),
    (binary_input("BYTES", 8, [2]), struct.pack("<I", 4) + b"abcd", None, "needs 2 element"),
    (binary_input("CPLX", 0), b"", None, "datatype"),
    (binary_input("FP32", 4, [-1]), b"\0" * 4, None, "non-negative"),
])
def test_v2_bad_binary_requests_are_refused_with_a_reason(head, tail, n, reason):
    with pytest.raises(BadInput, match=reason):
        v2_rest.decode(head + tail, "m", n or str(len(head)))


@pytest.mark.parametrize(("raw", "reason"), [
    (b"\xff", "UTF-8"),
    (b"{", "malformed JSON"),
    (b"[]", "JSON object"),
    (b'{"inputs": []}', "JSON object"),
    (json_input(shape=[3]), "needs 3 element"),
    (json_input(data=["a", "b"]), "not FP32"),
    (json_input(data=[[1], [2, 3]]), "needs 2 element|not FP32"),
    (json_input(datatype="BYTES"), "must be strings"),
    (json_input(shape="2"), "shape must be"),
    (json_input(shape=None), "shape must be"),  # was a TypeError (500), found by the HTTP fuzz
    (json_input(shape=2), "shape must be"),
    (json.dumps({"inputs": [{"name": "words", "data": None}]}).encode(), "shape must be"),
    (json_input(parameters={"binary_data_size": 8}), "no Inference-Header"),
    (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}).encode(), "neither"),
    (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}] * 2}).encode(), "twice"),
    (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
                 "outputs": "y"}).encode(), "`outputs`"),
    (b"[" * 100000 + b"]" * 100000, "nested too deeply|JSON object"),
])
def test_v2_bad_json_requests_are_refused_with_a_reason(raw, reason):
    with pytest.raises(BadInput, match=reason):
        v2_rest.decode(raw, "m")


# ---- v2 gRPC (tritonclient's generated messages: ours and theirs cannot share a process) ------------
pb = pytest.importorskip("tritonclient.grpc.service_pb2")


def grpc_request(**inp) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name="m", id="g1", inputs=[pb.ModelInferRequest.InferInputTensor(**inp)])


def test_grpc_raw_and_typed_contents_become_arrays():
    req = grpc_request(name="x", datatype="FP32", shape=[1, 2])
    req.raw_input_contents.append(np.asarray([1, 2], dtype="<f4").tobytes())
    got = v2_grpc_tensors.decode(req)
    assert got.id == "g1" and got.inputs["x"].tolist() == [[1.0, 2.0]] and got.inputs["x"].dtype == np.float32
    typed = grpc_request(name="w", datatype="BYTES", shape=[2],
                         contents=pb.InferTensorContents(bytes_contents=[b"a", b"bc"]))
    typed.outputs.append(pb.ModelInferRequest.InferRequestedOutputTensor(name="y"))
    got = v2_grpc_tensors.decode(typed)
    assert got.inputs["w"].tolist() == [b"a", b"bc"] and got.outputs == ["y"]
    ints = grpc_request(name="i", datatype="INT64", shape=[2], contents=pb.InferTensorContents(int64_contents=[5, 6]))
    assert v2_grpc_tensors.decode(ints).inputs["i"].dtype == np.int64
    resp = pb.ModelInferResponse()
    v2_grpc_tensors.fill_response(resp, {"y": object_array([b"ok"]), "p": np.asarray([0.5], dtype=np.float32)})
    assert [o.datatype for o in resp.outputs] == ["BYTES", "FP32"]
    assert unpack_bytes(resp.raw_output_contents[0]) == [b"ok"]
    assert np.frombuffer(resp.raw_output_contents[1], "<f4").tolist() == [0.5]


@pytest.mark.parametrize(("inp", "raw", "reason"), [
    ({"name": "x", "datatype": "FP32", "shape": [3]}, [b"\0" * 8], "is 12 bytes, the data has 8"),
    ({"name": "x", "datatype": "FP32", "shape": [1]}, [b"\0" * 4, b"\0" * 4], "raw_input_contents"),
    ({"name": "x", "datatype": "BYTES", "shape": [1]}, [b"\x09\0\0\0ab"], "runs past"),
    ({"name": "x", "datatype": "FP16", "shape": [1]}, [], "typed contents"),
    ({"name": "x", "datatype": "INT32", "shape": [2],
      "contents": pb.InferTensorContents(int_contents=[1])}, [], "needs 2 element"),
])
def test_grpc_bad_requests_are_refused_with_a_reason(inp, raw, reason):
    req = grpc_request(**inp)
    req.raw_input_contents.extend(raw)
    with pytest.raises(BadInput, match=reason):
        v2_grpc_tensors.decode(req)
