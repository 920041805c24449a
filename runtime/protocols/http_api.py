"""The replica's HTTP server (aiohttp): the Paddle Serving web API and KServe v2 REST (JSON and binary),
each a thin adapter from the wire to the data plane, plus health, readiness and metrics.

Every inference route reads the request ID (`X-Request-Id`, else a new one), answers with it, and turns
runtime.errors into a status (runtime.errors.HTTP_STATUS) with `{"error": reason}`.

Why aiohttp and not httptools (as activator/ does): measured with wrk on one connection against this
server on uvloop (benchmarks.runtime_bench, 2 shared cores). On the machine of the first report GET
/healthz round-tripped in 0.032 ms p50 and a POST of the LAC body to an unknown model (body read,
routing, data plane, JSON error, request line) in 0.06-0.07 ms, against 0.26-0.35 ms a LAC request
added over the direct call. On the 2-vCPU VM of the 2026-12 report the same figures are 0.11 ms and
0.17 ms against +0.52 ms, most of it vCPU wake-ups (README, "Measured here"). Either way aiohttp's own
share is a few hundredths of a millisecond: a hand-written server could save at most part of that.
Side by side on that VM (wrk, one connection, the same direct LAC call in each handler): a bare uvloop
protocol answered in 0.77-0.83 ms p50, a minimal aiohttp handler in 0.89-0.98 ms, this server in
1.09-1.14 ms. aiohttp's share is ~0.1 ms there; benchmarks.floor_server measures the machine's floor.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from runtime import tracing
from runtime.dataplane import DataPlane
from runtime.errors import HTTP_STATUS, InferError, TooLarge, status_of
from runtime.metrics import RuntimeMetrics
from runtime.protocols import paddle_web, v2_rest
from runtime.request_log import request_id

log = logging.getLogger("elasticserving.runtime")
REQUEST_ID = "X-Request-Id"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status, dumps=_dumps)


class HttpApi:
    def __init__(self, plane: DataPlane, metrics: RuntimeMetrics, max_body_bytes: int,
                 is_canary: bool = False) -> None:
        self.plane = plane
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.is_canary = is_canary

    async def _body(self, request: web.Request) -> bytes:
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise TooLarge(f"request body larger than {self.max_body_bytes} bytes") from None

    async def _serve(self, protocol: str, request: web.Request,
                     work: Callable[[web.Request], Awaitable[web.Response]]) -> web.Response:
        rid = request_id(request.headers.get(REQUEST_ID))
        if tracing.ON:
            with tracing.server(f"runtime {protocol}", request.headers, **{
                    "http.request.method": request.method, "url.path": request.path,
                    "elasticserving.service": self.plane.name, "elasticserving.request_id": rid}) as span:
                resp = await self._tracked(protocol, rid, request, work)
                span.set_attribute("http.response.status_code", resp.status)
                return resp
        return await self._tracked(protocol, rid, request, work)

    async def _tracked(self, protocol: str, rid: str, request: web.Request,
                       work: Callable[[web.Request], Awaitable[web.Response]]) -> web.Response:
        try:
            with self.plane.track(protocol, rid, HTTP_STATUS, request.protocol) as rec:
                resp = await work(request)
                rec.status = resp.status
        except InferError as exc:
            resp = _error(status_of(exc, HTTP_STATUS), str(exc))
        except Exception as exc:  # a bug: logged with its traceback, answered without it
            log.exception("request %s failed", rid)
            resp = _error(status_of(exc, HTTP_STATUS), f"internal error: {type(exc).__name__}")
        resp.headers[REQUEST_ID] = rid
        return resp

    # ---- inference ---------------------------------------------------------------------------
    async def prediction(self, request: web.Request) -> web.Response:
        return await self._serve("paddle-serving", request, self._prediction)

    async def _prediction(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.plane.check_model(name)
        handler = self.plane.loaded_handler()
        raw = await self._body(request)
        with tracing.step("decode"):
            req, _ = paddle_web.decode(v2_rest.loads(raw), name, handler.web, handler.inputs)
        outputs = await self.plane.infer(req)
        with tracing.step("encode"):
            return web.json_response(paddle_web.encode(outputs, handler.web, self.is_canary), dumps=_dumps)

    async def v2_infer(self, request: web.Request) -> web.Response:
        return await self._serve("v2-rest", request, self._v2_infer)

    async def _v2_infer(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.plane.check_model(name)
        self.plane.loaded_handler()
        raw = await self._body(request)
        with tracing.step("decode"):
            req, head = v2_rest.decode(raw, name, request.headers.get(v2_rest.HEADER))
        outputs = await self.plane.infer(req)
        with tracing.step("encode"):
            body, json_length = v2_rest.encode(head, name, req.id, outputs)
        if json_length is None:
            return web.Response(body=body, content_type="application/json")
        return web.Response(body=body, content_type="application/octet-stream",
                            headers={v2_rest.HEADER: str(json_length)})

    # ---- metadata, health --------------------------------------------------------------------
    async def v2_metadata(self, request: web.Request) -> web.Response:
        try:
            self.plane.check_model(request.match_info["name"])
            return web.json_response(self.plane.metadata(), dumps=_dumps)
        except InferError as exc:
            return _error(status_of(exc, HTTP_STATUS), str(exc))

    async def v2_model_ready(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name != self.plane.name:
            return _error(HTTP_STATUS["not_found"], f"unknown model {name!r}")
        return web.json_response({"name": name, "ready": True}) if self.plane.ready else await self.ready(request)

    async def ready(self, _: web.Request) -> web.Response:
        if self.plane.ready:
            return web.json_response({"status": "ready", "model": self.plane.name})
        why = f"model {self.plane.name} is not ready: {self.plane.not_ready_reason()}"
        return _error(HTTP_STATUS["unavailable"], why)

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def v2_server(self, _: web.Request) -> web.Response:
        return web.json_response({"name": "elasticserving-runtime", "version": "0.1.0",
                                  "extensions": ["binary_tensor_data"]})

    async def metrics_handler(self, request: web.Request) -> web.Response:
        body, ctype = self.metrics.render(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": ctype})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes)
        app.add_routes([
            web.get("/healthz", self.healthz),
            web.get("/ready", self.ready),
            web.get("/metrics", self.metrics_handler),
            web.get("/v2", self.v2_server),
            web.get("/v2/health/live", self.healthz),
            web.get("/v2/health/ready", self.ready),
            web.get("/v2/models/{name}", self.v2_metadata),
            web.get("/v2/models/{name}/ready", self.v2_model_ready),
            web.post("/v2/models/{name}/infer", self.v2_infer),
            web.post("/{name}/prediction", self.prediction),
        ])
        return app
