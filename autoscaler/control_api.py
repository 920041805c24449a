"""The autoscaler's HTTP control API: activators long-poll routes and send stats/pokes here,
and the CLI applies, lists and deletes PaddleServices through it (see docs/architecture.md)."""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from autoscaler.controller import Controller
from autoscaler.metrics_exporter import ControllerCollector, new_registry
from autoscaler.spec import PaddleService, SpecError

log = logging.getLogger("elasticserving.control")

MAX_WAIT_SECONDS = 60.0


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"malformed JSON: {exc}"}),
                                 content_type="application/json") from None


def build_app(controller: Controller, read_only: bool = False) -> web.Application:
    """The aiohttp application; `read_only` refuses apply/delete (kubernetes mode: use kubectl)."""
    registry = new_registry()
    registry.register(ControllerCollector(controller))
    routes = web.RouteTableDef()

    @routes.get("/healthz")
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    @routes.get("/ready")
    async def ready(_: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    @routes.get("/metrics")
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @routes.get("/v1/prometheus/targets")
    async def prometheus_targets(_: web.Request) -> web.Response:
        """Prometheus HTTP service discovery: every ready replica's metrics endpoint."""
        groups = []
        for key, entry in list(controller.services.items()):
            for side in entry.sides:
                for ep in controller.platform.state(key, side).ready:
                    groups.append({"targets": [f"{ep.host}:{ep.http_port}"],
                                   "labels": {"service": key, "side": side, "replica": ep.id}})
        return web.json_response(groups)

    @routes.get("/v1/routes")
    async def get_routes(request: web.Request) -> web.Response:
        try:
            since = int(request.query.get("since", "-1"))
            wait = min(float(request.query.get("wait", "0")), MAX_WAIT_SECONDS)
        except ValueError:
            return _error(400, "since must be an integer and wait a number of seconds")
        if wait > 0:
            await controller.routes.wait_newer(since, wait)
        return web.json_response({"version": controller.routes.version, "services": controller.routes.routes})

    @routes.post("/v1/stats")
    async def post_stats(request: web.Request) -> web.Response:
        body = await _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("stats"), list):
            return _error(400, "expected {\"activator\": id, \"stats\": [...]}")
        try:
            controller.record_stats(str(body.get("activator", "unknown")), body["stats"])
        except (TypeError, ValueError) as exc:
            return _error(400, f"bad stats: {exc}")
        return web.json_response({"accepted": len(body["stats"])})

    @routes.post("/v1/poke")
    async def post_poke(request: web.Request) -> web.Response:
        body = await _json_body(request)
        if not isinstance(body, dict) or "service" not in body:
            return _error(400, "expected {\"service\": \"ns/name\", \"side\": \"default\"}")
        found = await controller.poke(str(body["service"]), str(body.get("side", "default")))
        if not found:
            return _error(404, f"no such service side {body['service']}/{body.get('side', 'default')}")
        return web.json_response({"poked": True})

    @routes.get("/v1/paddleservices")
    async def list_services(_: web.Request) -> web.Response:
        items = [controller.describe(k) for k in sorted(controller.services)]
        return web.json_response({"items": items})

    @routes.get("/v1/paddleservices/{namespace}/{name}")
    async def get_service(request: web.Request) -> web.Response:
        key = f"{request.match_info['namespace']}/{request.match_info['name']}"
        item = controller.describe(key)
        if item is None:
            return _error(404, f"paddleservice {key} not found")
        return web.json_response(item)

    @routes.post("/v1/paddleservices")
    async def apply_service(request: web.Request) -> web.Response:
        if read_only:
            return _error(405, "this autoscaler follows the Kubernetes API: use kubectl apply")
        body = await _json_body(request)
        try:
            svc = PaddleService.from_dict(body, controller.defaults)
            existed = svc.key in controller.services
            await controller.apply(svc)
        except SpecError as exc:
            return _error(400, str(exc), field=exc.field)
        return web.json_response(controller.describe(svc.key), status=200 if existed else 201)

    @routes.delete("/v1/paddleservices/{namespace}/{name}")
    async def delete_service(request: web.Request) -> web.Response:
        if read_only:
            return _error(405, "this autoscaler follows the Kubernetes API: use kubectl delete")
        key = f"{request.match_info['namespace']}/{request.match_info['name']}"
        if not await controller.delete(key):
            return _error(404, f"paddleservice {key} not found")
        return web.json_response({"deleted": key})

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.add_routes(routes)
    return app
