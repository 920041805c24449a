"""The Open Inference Protocol (KServe v2) over gRPC for a replica, on `--grpc-port`.

Same model and validation as the REST handlers (runtime.server); bad input -> INVALID_ARGUMENT.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import grpc

from runtime.proto import inference_pb2 as pb
from runtime.proto import inference_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from runtime.server import Server


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, server: Server) -> None:
        self.server = server

    @property
    def name(self) -> str:
        return self.server.args.name

    def _ready(self) -> bool:
        return self.server.model.ready and not self.server.draining

    async def ServerLive(self, request, context):  # noqa: N802 - gRPC method names
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):  # noqa: N802
        return pb.ServerReadyResponse(ready=self._ready())

    async def ServerMetadata(self, request, context):  # noqa: N802
        return pb.ServerMetadataResponse(name="elasticserving-runtime", version="0.1.0")

    async def _check_model(self, name: str, context) -> None:
        if name != self.name:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {name!r}; this server serves {self.name!r}")

    async def ModelReady(self, request, context):  # noqa: N802
        await self._check_model(request.name, context)
        return pb.ModelReadyResponse(ready=self._ready())

    async def ModelMetadata(self, request, context):  # noqa: N802
        await self._check_model(request.name, context)
        T = pb.ModelMetadataResponse.TensorMetadata
        if self.server.tensor:
            if not self._ready():
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"model {self.name} is not ready")
            m = self.server.model.metadata()
            return pb.ModelMetadataResponse(
                name=m["name"], versions=m["versions"], platform=m["platform"],
                inputs=[T(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in m["inputs"]],
                outputs=[T(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in m["outputs"]])
        return pb.ModelMetadataResponse(name=self.name, versions=["1"], platform="paddle",
                                        inputs=[T(name="words", datatype="BYTES", shape=[-1])],
                                        outputs=[T(name="word_seg", datatype="BYTES", shape=[-1])])

    async def ModelInfer(self, request, context):  # noqa: N802
        t0 = time.perf_counter()
        code = "OK"
        metrics = self.server.metrics
        gauge = metrics.inflight.labels(self.name, "v2-grpc")
        gauge.inc()
        try:
            await self._check_model(request.model_name, context)
            if not self._ready():
                code = "UNAVAILABLE"
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"model {self.name} is not ready")
            if self.server.tensor:
                try:
                    out = await self.server.model.v2_infer(_request_to_json(request))
                except ValueError as exc:
                    code = "INVALID_ARGUMENT"
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                return _json_to_response(out, request.id)
            if not self._ready():
                code = "UNAVAILABLE"
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"model {self.name} is not ready")
            words, reason = _words(request)
            if reason:
                code = "INVALID_ARGUMENT"
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, reason)
            segs = await self.server.model.segment(words)
            out = pb.ModelInferResponse.InferOutputTensor(name="word_seg", datatype="BYTES", shape=[len(segs)])
            resp = pb.ModelInferResponse(model_name=self.name, model_version="1", id=request.id, outputs=[out])
            resp.raw_output_contents.append(_pack_bytes([s.encode("utf-8") for s in segs]))
            return resp
        finally:
            gauge.dec()
            metrics.observe(self.name, "v2-grpc", code, time.perf_counter() - t0)


_CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents",
             "INT32": "int_contents", "INT8": "int_contents", "UINT8": "uint_contents", "BOOL": "bool_contents",
             "BYTES": "bytes_contents"}
_RAW_DTYPES = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8", "INT32": "<i4", "INT8": "i1", "UINT8": "u1",
               "BOOL": "?"}


def _request_to_json(request: pb.ModelInferRequest) -> dict:
    """A gRPC ModelInferRequest as the v2 REST JSON body the tensor handlers take."""
    import numpy as np

    inputs = []
    for i, t in enumerate(request.inputs):
        if request.raw_input_contents:
            if i >= len(request.raw_input_contents):
                raise ValueError(f"raw_input_contents has no entry for input {t.name!r}")
            raw = request.raw_input_contents[i]
            if t.datatype == "BYTES":
                items = _unpack_bytes(raw)
                if items is None:
                    raise ValueError(f"input {t.name!r}: malformed BYTES raw contents")
                data = [b.decode("utf-8", "replace") for b in items]
            elif t.datatype in _RAW_DTYPES:
                data = np.frombuffer(raw, dtype=_RAW_DTYPES[t.datatype]).tolist()
            else:
                raise ValueError(f"input {t.name!r}: unsupported datatype {t.datatype!r}")
        else:
            field = _CONTENTS.get(t.datatype)
            if field is None:
                raise ValueError(f"input {t.name!r}: unsupported datatype {t.datatype!r}")
            data = list(getattr(t.contents, field))
            if t.datatype == "BYTES":
                data = [b.decode("utf-8", "replace") for b in data]
        inputs.append({"name": t.name, "datatype": t.datatype, "shape": list(t.shape), "data": data})
    return {"inputs": inputs, "id": request.id or None}


def _json_to_response(out: dict, req_id: str) -> pb.ModelInferResponse:
    import numpy as np

    resp = pb.ModelInferResponse(model_name=out["model_name"], model_version="1", id=req_id)
    for o in out["outputs"]:
        resp.outputs.append(pb.ModelInferResponse.InferOutputTensor(
            name=o["name"], datatype=o["datatype"], shape=o["shape"]))
        if o["datatype"] == "BYTES":
            resp.raw_output_contents.append(_pack_bytes([str(x).encode("utf-8") for x in o["data"]]))
        else:
            resp.raw_output_contents.append(np.asarray(o["data"], dtype=_RAW_DTYPES[o["datatype"]]).tobytes())
    return resp


def _unpack_bytes(raw: bytes) -> list[bytes] | None:
    """Triton's raw BYTES layout: each element is a 4-byte little-endian length then the bytes."""
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            return None
        n = int.from_bytes(raw[i:i + 4], "little")
        if i + 4 + n > len(raw):
            return None
        out.append(raw[i + 4:i + 4 + n])
        i += 4 + n
    return out


def _pack_bytes(items: list[bytes]) -> bytes:
    return b"".join(len(b).to_bytes(4, "little") + b for b in items)


def _words(request: pb.ModelInferRequest) -> tuple[list[str], str | None]:
    if len(request.inputs) != 1 or request.inputs[0].name != "words":
        names = [i.name for i in request.inputs]
        return [], f"expected one input named `words`, got {names}"
    inp = request.inputs[0]
    if inp.datatype != "BYTES":
        return [], f"input `words` must have datatype BYTES, not {inp.datatype!r}"
    if request.raw_input_contents:
        items = _unpack_bytes(request.raw_input_contents[0])
        if items is None:
            return [], "raw_input_contents[0] is not a valid BYTES tensor (length-prefixed elements)"
    else:
        items = list(inp.contents.bytes_contents)
    if list(inp.shape) != [len(items)]:
        return [], f"input `words` shape {list(inp.shape)} does not match its {len(items)} element(s)"
    for out in request.outputs:
        if out.name != "word_seg":
            return [], f"unknown output {out.name!r}: this model outputs `word_seg`"
    try:
        return [b.decode("utf-8") for b in items], None
    except UnicodeDecodeError:
        return [], "input `words` holds bytes that are not valid UTF-8"


async def start_grpc(server: Server, host: str, port: int) -> grpc.aio.Server:
    g = grpc.aio.server(options=[("grpc.max_receive_message_length", server.args.max_body_bytes)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(server), g)
    g.add_insecure_port(f"{host}:{port}")
    await g.start()
    return g
