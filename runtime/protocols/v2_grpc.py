"""KServe v2 over gRPC (`--grpc-port`) <-> the data plane's request: raw or typed input contents become
arrays (sizes checked), outputs go back as raw contents; errors become a status code with the reason.
The request ID comes from the `x-request-id` metadata (else a new one) and returns as trailing metadata."""

from __future__ import annotations

import grpc
import numpy as np

from runtime.dataplane import DataPlane, InferRequest
from runtime.errors import BadInput, InferError
from runtime.proto import inference_pb2 as pb
from runtime.proto import inference_pb2_grpc as pb_grpc
from runtime.request_log import request_id
from runtime.tensors import datatype_of, from_buffer, from_values, to_bytes

# The typed `contents` field of each datatype (wire detail of the gRPC protocol; FP16 travels raw only).
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
             "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def decode(request: pb.ModelInferRequest) -> InferRequest:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadInput(f"{len(request.inputs)} inputs but {len(raw)} raw_input_contents")
    inputs: dict[str, np.ndarray] = {}
    for i, t in enumerate(request.inputs):
        if t.name in inputs:
            raise BadInput(f"input `{t.name}` given twice")
        if raw:
            inputs[t.name] = from_buffer(t.name, t.datatype, list(t.shape), raw[i])
            continue
        field = _CONTENTS.get(t.datatype)
        if field is None:
            raise BadInput(f"input `{t.name}`: unknown datatype {t.datatype!r} (or not in typed contents)")
        values = getattr(t.contents, field)
        if t.datatype == "BYTES":
            inputs[t.name] = from_values(t.name, "BYTES", list(t.shape), list(values))
        else:
            inputs[t.name] = from_values(t.name, t.datatype, list(t.shape), np.asarray(values))
    return InferRequest(request.model_name, inputs, [o.name for o in request.outputs] or None, request.id or None)


def encode(model: str, req_id: str, outputs: dict[str, np.ndarray]) -> pb.ModelInferResponse:
    resp = pb.ModelInferResponse(model_name=model, model_version="1", id=req_id)
    for name, arr in outputs.items():
        resp.outputs.append(pb.ModelInferResponse.InferOutputTensor(
            name=name, datatype=datatype_of(arr), shape=list(arr.shape)))
        resp.raw_output_contents.append(to_bytes(arr))
    return resp


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def _abort(self, context, exc: InferError, rid: str | None = None):
        await context.abort(getattr(grpc.StatusCode, exc.grpc_code), str(exc),
                            trailing_metadata=(("x-request-id", rid),) if rid else None)

    async def ServerLive(self, request, context):  # noqa: N802 - gRPC method names
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):  # noqa: N802
        return pb.ServerReadyResponse(ready=self.plane.ready)

    async def ServerMetadata(self, request, context):  # noqa: N802
        return pb.ServerMetadataResponse(name="elasticserving-runtime", version="0.1.0")

    async def ModelReady(self, request, context):  # noqa: N802
        try:
            self.plane.check_model(request.name)
        except InferError as exc:
            await self._abort(context, exc)
        return pb.ModelReadyResponse(ready=self.plane.ready)

    async def ModelMetadata(self, request, context):  # noqa: N802
        try:
            self.plane.check_model(request.name)
            m = self.plane.metadata()
        except InferError as exc:
            await self._abort(context, exc)
        T = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=m["name"], versions=m["versions"], platform=m["platform"],
            inputs=[T(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in m["inputs"]],
            outputs=[T(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in m["outputs"]])

    async def ModelInfer(self, request, context):  # noqa: N802
        incoming = dict(context.invocation_metadata() or ()).get("x-request-id")
        rid = request_id(incoming if isinstance(incoming, str) else None)
        try:
            with self.plane.track("v2-grpc", rid):
                self.plane.check_model(request.model_name)
                self.plane.loaded_handler()
                req = decode(request)
                outputs = await self.plane.infer(req)
                resp = encode(self.plane.name, request.id, outputs)
        except InferError as exc:
            await self._abort(context, exc, rid)
        context.set_trailing_metadata((("x-request-id", rid),))
        return resp


async def start_grpc(plane: DataPlane, host: str, port: int, max_message_bytes: int) -> grpc.aio.Server:
    g = grpc.aio.server(options=[("grpc.max_receive_message_length", max_message_bytes)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(plane), g)
    g.add_insecure_port(f"{host}:{port}")
    await g.start()
    return g
