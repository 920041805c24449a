"""The KServe v2 binary tensor data extension (runtime.v2_binary) without a server."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from runtime.v2_binary import BinaryFormatError, decode_request, encode_response, pack_bytes, unpack_bytes


def request(inputs: list[dict], blobs: list[bytes], **extra) -> tuple[bytes, str]:
    head = json.dumps({"inputs": inputs, **extra}).encode()
    return head + b"".join(blobs), str(len(head))


def test_bytes_and_numeric_inputs_round_trip():
    words = pack_bytes(["我爱北京", b"\x00\xff"])
    nums = np.arange(6, dtype="<f4").tobytes()
    raw, n = request([{"name": "w", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(words)}},
                      {"name": "x", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": len(nums)}},
                      {"name": "j", "datatype": "INT64", "shape": [1], "data": [7]}], [words, nums])
    body = decode_request(raw, n)
    assert body["inputs"][0]["data"] == ["我爱北京".encode(), b"\x00\xff"]
    assert body["inputs"][1]["data"] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert body["inputs"][2]["data"] == [7]  # JSON inputs stay as they are


def test_outputs_binary_on_request_only():
    req = {"outputs": [{"name": "a", "parameters": {"binary_data": True}}, {"name": "b"}]}
    resp = {"outputs": [{"name": "a", "datatype": "INT32", "shape": [2], "data": [1, 2]},
                        {"name": "b", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
    data, n = encode_response(req, resp)
    head = json.loads(data[:n])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 8 and "data" not in head["outputs"][0]
    assert head["outputs"][1]["data"] == ["x"]
    assert np.frombuffer(data[n:], dtype="<i4").tolist() == [1, 2]
    assert encode_response({}, {"outputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1.0]}]}) is None
    data, n = encode_response({"parameters": {"binary_data_output": True}},
                              {"outputs": [{"name": "s", "datatype": "BYTES", "shape": [1], "data": ["é"]}]})
    assert unpack_bytes(data[n:]) == ["é".encode()]


def binary_input(datatype: str, size: int) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "datatype": datatype, "parameters": {"binary_data_size": size}}]}).encode()


@pytest.mark.parametrize(("head", "tail", "n", "reason"), [
    (b'{"inputs": []}', b"", "x", "not an integer"),
    (b'{"inputs": []}', b"", "100", "does not fit"),
    (b'{"inputs": [}', b"", None, "JSON part"),
    (b'{"inputs": []}', b"extra", None, "after the last input"),
    (binary_input("FP32", 8), b"\0" * 4, None, "runs past"),
    (binary_input("FP32", 3), b"abc", None, "whole number"),
    (binary_input("BYTES", 6), struct.pack("<I", 9) + b"ab", None, "runs past the end"),
    (binary_input("CPLX", 0), b"", None, "datatype"),
])
def test_bad_binary_requests_are_refused_with_a_reason(head, tail, n, reason):
    with pytest.raises(BinaryFormatError, match=reason):
        decode_request(head + tail, n or str(len(head)))
