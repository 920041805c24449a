"""The replica's HTTP API: the Paddle Serving web API and KServe v2 REST (JSON and binary), each a thin
adapter from a parsed request (runtime.protocols.http_server) to the data plane, plus health, readiness
and metrics.

Every inference route reads the request ID (`X-Request-Id`, else a new one: the server's), answers with
it, and turns runtime.errors into a status (runtime.errors.HTTP_STATUS) with `{"error": reason}`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from runtime import tracing
from runtime.dataplane import DataPlane
from runtime.errors import HTTP_STATUS, InferError, status_of
from runtime.metrics import RuntimeMetrics
from runtime.protocols import paddle_web, v2_rest
from runtime.protocols.http_server import HttpRequest, HttpResponse, error_response
from runtime.protocols.json_body import dumps, loads

log = logging.getLogger("elasticserving.runtime")
V2_HEADER = v2_rest.HEADER.lower()


def _json(obj: Any) -> HttpResponse:
    return HttpResponse(200, dumps(obj))


class HttpApi:
    def __init__(self, plane: DataPlane, metrics: RuntimeMetrics, is_canary: bool = False) -> None:
        self.plane = plane
        self.metrics = metrics
        self.is_canary = is_canary
        # GET (and HEAD) routes without a parameter
        self._fixed: dict[str, Callable[[HttpRequest], Awaitable[HttpResponse]]] = {
            "/healthz": self.healthz, "/v2/health/live": self.healthz,
            "/ready": self.ready, "/v2/health/ready": self.ready,
            "/metrics": self.metrics_handler, "/v2": self.v2_server,
        }

    async def __call__(self, req: HttpRequest, rid: str) -> HttpResponse:
        """Route one request: the inference routes first (the hot path), then the rest."""
        parts = req.path.split("/")  # "/v2/models/m/infer" -> ["", "v2", "models", "m", "infer"]
        n = len(parts)
        method = "GET" if req.method == "HEAD" else req.method
        if n == 5 and parts[1] == "v2" and parts[2] == "models" and parts[4] == "infer" and parts[3]:
            if method != "POST":
                return _not_allowed("POST")
            return await self._serve("v2-rest", req, rid, unquote(parts[3]), self._v2_infer)
        if n == 3 and parts[2] == "prediction" and parts[1]:
            if method != "POST":
                return _not_allowed("POST")
            return await self._serve("paddle-serving", req, rid, unquote(parts[1]), self._prediction)
        fixed = self._fixed.get(req.path)
        if fixed is not None or (parts[1:3] == ["v2", "models"] and parts[3:4] != [""]
                                 and (n == 4 or (n == 5 and parts[4] == "ready"))):
            if method != "GET":
                return _not_allowed("GET, HEAD")
            if fixed is not None:
                return await fixed(req)
            name = unquote(parts[3])
            return self.v2_metadata(name) if n == 4 else await self.v2_model_ready(name)
        return error_response(404, f"no route {req.path[:200]!r}: POST /v2/models/NAME/infer, "
                                   "POST /NAME/prediction, GET /v2/models/NAME, /ready, /healthz, /metrics")

    # ---- inference ---------------------------------------------------------------------------
    async def _serve(self, protocol: str, req: HttpRequest, rid: str, name: str,
                     work: Callable[[HttpRequest, str], Awaitable[HttpResponse]]) -> HttpResponse:
        if tracing.ON:
            with tracing.server(f"runtime {protocol}", req.headers, **{
                    "http.request.method": req.method, "url.path": req.path,
                    "elasticserving.service": self.plane.name, "elasticserving.request_id": rid}) as span:
                resp = await self._tracked(protocol, rid, req, name, work)
                span.set_attribute("http.response.status_code", resp.status)
                return resp
        return await self._tracked(protocol, rid, req, name, work)

    async def _tracked(self, protocol: str, rid: str, req: HttpRequest, name: str,
                       work: Callable[[HttpRequest, str], Awaitable[HttpResponse]]) -> HttpResponse:
        try:
            with self.plane.track(protocol, rid, HTTP_STATUS, req.conn) as rec:
                resp = await work(req, name)
                rec.status = resp.status
        except InferError as exc:
            resp = error_response(status_of(exc, HTTP_STATUS), str(exc))
        except Exception as exc:  # a bug: logged with its traceback, answered without it
            log.exception("request %s failed", rid)
            resp = error_response(status_of(exc, HTTP_STATUS), f"internal error: {type(exc).__name__}")
        return resp

    async def _prediction(self, req: HttpRequest, name: str) -> HttpResponse:
        self.plane.check_model(name)
        handler = self.plane.loaded_handler()
        with tracing.step("decode"):
            infer, _ = paddle_web.decode(loads(req.body), name, handler.web, handler.inputs)
        outputs = await self.plane.infer(infer)
        with tracing.step("encode"):
            return HttpResponse(200, dumps(paddle_web.encode(outputs, handler.web, self.is_canary),
                                             outputs.values()))

    async def _v2_infer(self, req: HttpRequest, name: str) -> HttpResponse:
        self.plane.check_model(name)
        self.plane.loaded_handler()
        with tracing.step("decode"):
            infer, head = v2_rest.decode(req.body, name, req.headers.get(V2_HEADER))
        outputs = await self.plane.infer(infer)
        with tracing.step("encode"):
            body, json_length = v2_rest.encode(head, name, infer.id, outputs)
        if json_length is None:
            return HttpResponse(200, body)
        return HttpResponse(200, body, "application/octet-stream", {v2_rest.HEADER: str(json_length)})

    # ---- metadata, health --------------------------------------------------------------------
    def v2_metadata(self, name: str) -> HttpResponse:
        try:
            self.plane.check_model(name)
            return _json(self.plane.metadata())
        except InferError as exc:
            return error_response(status_of(exc, HTTP_STATUS), str(exc))

    async def v2_model_ready(self, name: str) -> HttpResponse:
        if name != self.plane.name:
            return error_response(HTTP_STATUS["not_found"], f"unknown model {name!r}")
        return _json({"name": name, "ready": True}) if self.plane.ready else await self.ready(None)

    async def ready(self, _: HttpRequest | None) -> HttpResponse:
        if self.plane.ready:
            return _json({"status": "ready", "model": self.plane.name})
        why = f"model {self.plane.name} is not ready: {self.plane.not_ready_reason()}"
        return error_response(HTTP_STATUS["unavailable"], why)

    async def healthz(self, _: HttpRequest) -> HttpResponse:
        return _json({"status": "alive"})

    async def v2_server(self, _: HttpRequest) -> HttpResponse:
        return _json({"name": "elasticserving-runtime", "version": "0.1.0", "extensions": ["binary_tensor_data"]})

    async def metrics_handler(self, req: HttpRequest) -> HttpResponse:
        body, ctype = self.metrics.render(req.headers.get("accept"))
        return HttpResponse(200, body, ctype)


def _not_allowed(allow: str) -> HttpResponse:
    return error_response(405, f"method not allowed here; allowed: {allow}", {"Allow": allow})
