"""KServe v2 REST (`POST /v2/models/{name}/infer`) <-> the data plane's request, without I/O: JSON
tensors, and the binary tensor data extension tritonclient.http uses by default (an
`Inference-Header-Content-Length` header splits the body into JSON and raw tensor bytes; outputs are
packed the same way when asked for with `binary_data`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime.dataplane import InferRequest
from runtime.errors import BadInput
from runtime.protocols.json_body import dumps, loads
from runtime.tensors import datatype_of, from_buffer, from_values, to_bytes, to_list

HEADER = "Inference-Header-Content-Length"


def _parameters(item: dict[str, Any]) -> dict[str, Any]:
    params = item.get("parameters")
    return params if isinstance(params, dict) else {}


def decode(raw: bytes, model: str, header_length: str | None = None) -> tuple[InferRequest, dict[str, Any]]:
    """The request, and the JSON head (its `outputs`/`parameters` say which outputs go back binary)."""
    if header_length is None:
        n = len(raw)
        body = loads(raw)
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise BadInput(f"{HEADER} {header_length!r} is not an integer") from None
        if not 0 < n <= len(raw):
            raise BadInput(f"{HEADER} {n} does not fit a body of {len(raw)} bytes")
        body = loads(memoryview(raw)[:n], "JSON part of the request")
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise BadInput('expected a JSON object {"inputs": [{"name", "datatype", "shape", "data"}, ...]}')
    inputs: dict[str, np.ndarray] = {}
    offset = n
    for inp in body["inputs"]:
        if not isinstance(inp, dict) or not isinstance(inp.get("name"), str):
            raise BadInput(f"each input must be an object with a `name`, not {inp!r:.100}")
        name = inp["name"]
        if name in inputs:
            raise BadInput(f"input `{name}` given twice")
        size = _parameters(inp).get("binary_data_size")
        if size is None:
            if "data" not in inp:
                raise BadInput(f"input `{name}` has neither `data` nor binary_data_size")
            inputs[name] = from_values(name, inp.get("datatype"), inp.get("shape"), inp["data"])
            continue
        if header_length is None:
            raise BadInput(f"input `{name}` has binary_data_size but the request has no {HEADER} header")
        if not isinstance(size, int) or size < 0 or offset + size > len(raw):
            raise BadInput(f"input `{name}`: binary_data_size {size!r} runs past the end of the body")
        inputs[name] = from_buffer(name, inp.get("datatype"), inp.get("shape") or [], raw[offset:offset + size])
        offset += size
    if offset != len(raw):
        raise BadInput(f"{len(raw) - offset} bytes after the last input's binary data")
    outputs = None
    if body.get("outputs") is not None:
        if not isinstance(body["outputs"], list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                            for o in body["outputs"]):
            raise BadInput('`outputs` must be a list of objects like {"name": ...}')
        outputs = [o["name"] for o in body["outputs"]] or None
    rid = body.get("id")
    return InferRequest(model, inputs, outputs, rid if isinstance(rid, str) else None), body


def wants_binary(head: dict[str, Any], name: str) -> bool:
    """Did the request ask for output `name` as binary data (per output, or for all outputs)?"""
    for out in head.get("outputs") or []:
        if isinstance(out, dict) and out.get("name") == name and "binary_data" in _parameters(out):
            return bool(_parameters(out)["binary_data"])
    return bool(_parameters(head).get("binary_data_output", False))


def encode(head: dict[str, Any], model: str, request_id: str | None,
           outputs: dict[str, np.ndarray]) -> tuple[bytes, int | None]:
    """(body, JSON length when outputs follow as binary data, else None)."""
    tensors: list[dict[str, Any]] = []
    out: dict[str, Any] = {"model_name": model, "outputs": tensors}
    if request_id is not None:
        out["id"] = request_id
    # The usual request asks for nothing binary: no look per output then (~1 us of a ~2.8 us answer).
    binary = head.get("outputs") is not None or head.get("parameters") is not None
    blobs = []
    for name, arr in outputs.items():
        tensor: dict[str, Any] = {"name": name, "datatype": datatype_of(arr), "shape": list(arr.shape)}
        if binary and wants_binary(head, name):
            blob = to_bytes(arr)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = to_list(arr)
        tensors.append(tensor)
    text = dumps(out, outputs.values())
    if not blobs:
        return text, None
    return text + b"".join(blobs), len(text)
