"""The binary tensor data extension of KServe v2 REST (what tritonclient.http sends by default).

runtime.server unpacks a request whose `Inference-Header-Content-Length` header splits the body into a
JSON part and raw tensor bytes, hands the models plain JSON-shaped inputs, and packs requested outputs
back the same way. BYTES elements travel as a 4-byte little-endian length followed by the bytes.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

HEADER = "Inference-Header-Content-Length"
NUMERIC = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
           "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
           "FP32": np.float32, "FP64": np.float64}


class BinaryFormatError(ValueError):
    """The request does not follow the binary data extension (answered 400 with this reason)."""


def _parameters(item: dict[str, Any]) -> dict[str, Any]:
    params = item.get("parameters")
    return params if isinstance(params, dict) else {}


def unpack_bytes(chunk: bytes) -> list[bytes]:
    out = []
    i = 0
    while i < len(chunk):
        if i + 4 > len(chunk):
            raise BinaryFormatError("BYTES data ends inside an element's length prefix")
        (n,) = struct.unpack_from("<I", chunk, i)
        i += 4
        if i + n > len(chunk):
            raise BinaryFormatError(f"BYTES element of {n} bytes runs past the end of its tensor data")
        out.append(chunk[i:i + n])
        i += n
    return out


def pack_bytes(values: list[Any]) -> bytes:
    parts = []
    for v in values:
        b = v if isinstance(v, bytes) else str(v).encode("utf-8")
        parts.append(struct.pack("<I", len(b)) + b)
    return b"".join(parts)


def decode_request(raw: bytes, header_length: str) -> dict[str, Any]:
    """The JSON request with every binary input's bytes turned into its `data` (BYTES: a list of bytes,
    numeric: a flat list of numbers)."""
    try:
        n = int(header_length)
    except ValueError:
        raise BinaryFormatError(f"{HEADER} {header_length!r} is not an integer") from None
    if not 0 < n <= len(raw):
        raise BinaryFormatError(f"{HEADER} {n} does not fit a body of {len(raw)} bytes")
    try:
        body = json.loads(raw[:n])
    except (UnicodeDecodeError, ValueError) as exc:
        raise BinaryFormatError(f"the JSON part of the request is invalid: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise BinaryFormatError("expected a JSON object with `inputs` before the binary data")
    offset = n
    for inp in body["inputs"]:
        if not isinstance(inp, dict):
            continue
        size = _parameters(inp).get("binary_data_size")
        if size is None:
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(raw):
            raise BinaryFormatError(f"input {inp.get('name')!r}: binary_data_size {size!r} runs past the body")
        chunk = raw[offset:offset + size]
        offset += size
        datatype = inp.get("datatype")
        if datatype == "BYTES":
            inp["data"] = unpack_bytes(chunk)
        elif datatype in NUMERIC:
            dtype = np.dtype(NUMERIC[datatype]).newbyteorder("<")
            if size % dtype.itemsize:
                raise BinaryFormatError(f"input {inp.get('name')!r}: {size} bytes is not a whole number of "
                                        f"{datatype} elements")
            inp["data"] = np.frombuffer(chunk, dtype=dtype).tolist()
        else:
            raise BinaryFormatError(f"input {inp.get('name')!r}: unknown datatype {datatype!r}")
    if offset != len(raw):
        raise BinaryFormatError(f"{len(raw) - offset} bytes after the last input's binary data")
    return body


def wants_binary(request: dict[str, Any], name: str) -> bool:
    """Did the request ask for output `name` as binary data (per output, or for all outputs)?"""
    for out in request.get("outputs") or []:
        if isinstance(out, dict) and out.get("name") == name and "binary_data" in _parameters(out):
            return bool(_parameters(out)["binary_data"])
    return bool(_parameters(request).get("binary_data_output", False))


def encode_response(request: dict[str, Any], response: dict[str, Any]) -> tuple[bytes, int] | None:
    """(body, JSON length) with the requested outputs as binary data; None when none was requested."""
    blobs = []
    for out in response.get("outputs", []):
        if not wants_binary(request, out["name"]):
            continue
        if out["datatype"] == "BYTES":
            blob = pack_bytes(out["data"])
        else:
            dtype = np.dtype(NUMERIC.get(out["datatype"], np.float32)).newbyteorder("<")
            blob = np.asarray(out["data"], dtype=dtype).tobytes()
        del out["data"]
        out["parameters"] = {**_parameters(out), "binary_data_size": len(blob)}
        blobs.append(blob)
    if not blobs:
        return None
    head = json.dumps(response, ensure_ascii=False).encode()
    return head + b"".join(blobs), len(head)
