"""KServe v2 over gRPC (`--grpc-port`): the service; each call's tensors are translated by
runtime.protocols.v2_grpc_tensors and served by the data plane; errors become a status code with the
reason. The request ID comes from the `x-request-id` metadata (else a new one) and returns as trailing metadata."""

from __future__ import annotations

import grpc

from runtime import tracing
from runtime.dataplane import DataPlane
from runtime.errors import GRPC_STATUS, InferError, status_of
from runtime.proto import inference_pb2 as pb
from runtime.proto import inference_pb2_grpc as pb_grpc
from runtime.protocols.v2_grpc_tensors import decode, fill_response
from runtime.request_log import request_id


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def _abort(self, context, exc: InferError, rid: str | None = None):
        await context.abort(getattr(grpc.StatusCode, status_of(exc, GRPC_STATUS)), str(exc),
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
        return pb.ModelMetadataResponse(name=m["name"], versions=m["versions"], platform=m["platform"],
                                        inputs=[T(**t) for t in m["inputs"]],
                                        outputs=[T(**t) for t in m["outputs"]])

    async def ModelInfer(self, request, context):  # noqa: N802
        md = dict(context.invocation_metadata() or ())
        incoming = md.get("x-request-id")
        rid = request_id(incoming if isinstance(incoming, str) else None)
        if tracing.ON:
            with tracing.server("runtime v2-grpc", md, **{"rpc.system": "grpc", "rpc.method": "ModelInfer",
                                                          "elasticserving.service": self.plane.name}):
                return await self._infer(request, context, rid)
        return await self._infer(request, context, rid)

    async def _infer(self, request, context, rid: str):
        try:
            with self.plane.track("v2-grpc", rid, GRPC_STATUS):
                self.plane.check_model(request.model_name)
                self.plane.loaded_handler()
                with tracing.step("decode"):
                    req = decode(request)
                outputs = await self.plane.infer(req)
                with tracing.step("encode"):
                    resp = pb.ModelInferResponse(model_name=self.plane.name, model_version="1", id=request.id)
                    fill_response(resp, outputs)
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
