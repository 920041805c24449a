"""The autoscaler's HTTP control API: activators long-poll routes and send stats/pokes here (the typed
contract of autoscaler/wire.py), and the CLI applies, lists and deletes PaddleServices through it.

A request passes a chain of small guards before its handler (see `build_app`): Host allow-list (DNS
rebinding), bearer token on /v1/*, JSON-only bodies (no cross-site `text/plain` form posts), and the
serving gate (a standby or unsynced controller answers 503 instead of an empty route table).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from autoscaler.controller import Controller, PromoteRefused
from autoscaler.metrics_exporter import ControllerCollector, new_registry
from autoscaler.spec import PaddleService, SpecError, plain_message
from autoscaler.wire import LOAD_SIDES, Poke, StatsReport

log = logging.getLogger("elasticserving.control")

MAX_WAIT_SECONDS = 60.0
LOG_HEARTBEAT_SECONDS = 5.0  # a follower with no new lines is checked this often for a gone client
MAX_BODY_BYTES = 4 * 1024 * 1024  # a full stats report (wire.MAX_STATS_PER_REPORT) fits
PUBLIC_PATHS = ("/healthz", "/ready", "/metrics")  # probes and scrapes; no state changes, no secrets
# Answered 503 while the controller is not serving: an activator must not take an empty table as truth.
SERVING_PATHS = ("/v1/routes", "/v1/stats", "/v1/poke")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _validation_reason(exc: ValidationError) -> str:
    """Pydantic's errors as one line: `stats.0.average_concurrency: Input should be a finite number`."""
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {plain_message(e['msg'])}" for e in exc.errors()[:5]]
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


async def _json_body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read(), parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # json.loads nests recursively: a body of "[" * 100000
        reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise web.HTTPBadRequest(text=json.dumps({"error": f"malformed JSON: {reason}"}),
                                 content_type="application/json") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def host_name(host_header: str) -> str:
    """The name part of a Host header: `[::1]:8090` -> `[::1]`, `Localhost:80` -> `localhost`."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


# ---- the guards, outermost first ---------------------------------------------------------------
def host_guard(allowed: Iterable[str]) -> Any:
    """Refuse Host values not in `allowed`: a page of evil.example whose name was re-pointed at
    127.0.0.1 (DNS rebinding) arrives with `Host: evil.example` and gets a 403."""
    names = frozenset(host_name(h) for h in allowed)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        # No Host at all is no browser (browsers always send it), hence no rebinding.
        if host is not None and host_name(host) not in names:
            return _error(403, f"Host {host[:100]!r} is not served here (allowed: {', '.join(sorted(names))})")
        return await handler(request)

    return guard


def bearer_auth(token: str) -> Any:
    """/v1/* needs `Authorization: Bearer <token>` (constant-time comparison); PUBLIC_PATHS do not."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        given = request.headers.get("Authorization", "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, expected):
            return web.json_response(
                {"error": "missing or wrong bearer token (the CLI reads it from the stack's token file; "
                          "see --token-file)"},
                status=401, headers={"WWW-Authenticate": 'Bearer realm="elasticserving"'})
        return await handler(request)

    return auth


@web.middleware
async def json_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bodies must be `application/json`: a cross-site form or `text/plain` POST (no CORS preflight)
    gets a 415 before any handler reads it."""
    if request.method in ("POST", "PUT", "PATCH") and request.content_type != "application/json":
        return _error(415, f"Content-Type must be application/json, not {request.content_type!r}")
    return await handler(request)


def serving_gate(serving: Callable[[], bool]) -> Any:
    """While `serving()` is false (a standby, or a controller whose caches are not synced), the
    activator endpoints answer 503 with the reason: activators keep their last routes and retry."""

    @web.middleware
    async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in SERVING_PATHS and not serving():
            return _error(503, "this controller is not serving (a standby or not yet synced); retry")
        return await handler(request)

    return gate


def build_app(
    controller: Controller,
    read_only: bool = False,
    *,
    token: str | None = None,
    allowed_hosts: Iterable[str] | None = None,
    serving: Callable[[], bool] = lambda: True,
    logs: Callable[[str, str], Any] | None = None,
) -> web.Application:
    """The aiohttp application.

    `read_only` refuses apply, promote and delete (kubernetes mode: use kubectl). `token`: /v1/* requires it as a
    bearer token (None: unauthenticated, for a caller that protects the port otherwise). `allowed_hosts`:
    the Host names accepted (None: any). `serving`: the activator endpoints answer 503 while it is
    false. `logs(key, side)`: the platform's recent replica output of a side (a local/logs.SideLog, or
    None), served by `GET /v1/paddleservices/NS/NAME/logs`; without it that answers 501.
    """
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
        """Long-poll: `?epoch=E&since=V&wait=S&activator=ID` -> a wire.RoutesUpdate (delta or full)."""
        q = request.query
        try:
            since = int(q.get("since", "-1"))
            wait = float(q.get("wait", "0"))
        except ValueError:
            return _error(400, "since must be an integer and wait a number of seconds")
        if not math.isfinite(wait):
            return _error(400, "wait must be a finite number of seconds")
        epoch = q.get("epoch") or None
        if epoch is not None and len(epoch) > 64:
            return _error(400, "epoch is at most 64 characters")
        activator = q.get("activator")
        if activator is not None:
            if not 0 < len(activator) <= 253:
                return _error(400, "activator is 1..253 characters")
            controller.seen_activator(activator)
        wait = min(max(wait, 0.0), MAX_WAIT_SECONDS)
        if wait > 0:
            await controller.routes.wait_news(epoch, since, wait)
        if controller.routes.closed:  # activators keep their routes and retry after a back-off
            return _error(503, "the autoscaler is shutting down; retry")
        update = controller.routes.update(epoch, since, activator)
        return web.Response(text=update.model_dump_json(), content_type="application/json")

    @routes.post("/v1/stats")
    async def post_stats(request: web.Request) -> web.Response:
        try:
            report = StatsReport.model_validate_json(await request.read())
        except ValidationError as exc:
            return _error(400, f"bad stats report: {_validation_reason(exc)}")
        return web.json_response({"accepted": controller.record_stats(report)})

    @routes.post("/v1/poke")
    async def post_poke(request: web.Request) -> web.Response:
        try:
            poke = Poke.model_validate_json(await request.read())
        except ValidationError as exc:
            return _error(400, f"bad poke: {_validation_reason(exc)}")
        if not await controller.poke(poke.service, poke.side, poke.traceparent):
            return _error(404, f"no such service side {poke.service}/{poke.side}")
        return web.json_response({"poked": True})

    @routes.get("/v1/paddleservices")
    async def list_services(_: web.Request) -> web.Response:
        return web.json_response({"items": [controller.describe(k) for k in sorted(controller.services)]})

    @routes.get("/v1/paddleservices/{namespace}/{name}")
    async def get_service(request: web.Request) -> web.Response:
        key = f"{request.match_info['namespace']}/{request.match_info['name']}"
        item = controller.describe(key)
        if item is None:
            return _error(404, f"paddleservice {key} not found")
        return web.json_response(item)

    @routes.get("/v1/paddleservices/{namespace}/{name}/logs")
    async def service_logs(request: web.Request) -> web.StreamResponse:
        """Replica output as text, `[replica] line` per line: `?side=default|canary&tail=N&follow=1`."""
        if logs is None:
            return _error(501, "this platform keeps no replica output here (kubernetes: use kubectl logs)")
        key = f"{request.match_info['namespace']}/{request.match_info['name']}"
        side = request.query.get("side", "default")
        if side not in LOAD_SIDES:
            return _error(400, f"side must be one of {', '.join(LOAD_SIDES)}")
        try:
            tail = int(request.query["tail"]) if "tail" in request.query else None
        except ValueError:
            return _error(400, "tail must be a number of lines")
        if tail is not None and tail < 0:
            return _error(400, "tail must be >= 0")
        entry = controller.services.get(key)
        if entry is None:
            return _error(404, f"paddleservice {key} not found")
        if side not in entry.sides:
            return _error(404, f"paddleservice {key} has no {side} side")
        follow = request.query.get("follow", "").lower() in ("1", "true", "yes")
        log_ = logs(key, side)
        queue = log_.follow() if (follow and log_ is not None) else None  # before the tail: no gap
        resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await resp.prepare(request)
        try:
            backlog = log_.tail(tail) if log_ is not None else []
            if backlog:
                await resp.write("".join(line.render() + "\n" for line in backlog).encode())
            while queue is not None:
                try:
                    line = await asyncio.wait_for(queue.get(), LOG_HEARTBEAT_SECONDS)
                except TimeoutError:
                    if request.transport is None or request.transport.is_closing():
                        break  # the client left
                    continue
                batch = []  # the lines queued already, up to 1000, in one write
                while line is not None:
                    batch.append(line)
                    if queue.empty() or len(batch) == 1000:
                        break
                    line = queue.get_nowait()
                if batch:
                    await resp.write("".join(x.render() + "\n" for x in batch).encode())
                if line is None:
                    break  # the side is gone or the stack stops
        except ConnectionError:  # the client left
            pass
        finally:
            if queue is not None:
                log_.unfollow(queue)
        with contextlib.suppress(ConnectionError):
            await resp.write_eof()
        return resp

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

    @routes.post("/v1/paddleservices/{namespace}/{name}/promote")
    async def promote_service(request: web.Request) -> web.Response:
        """The canary becomes the default (`elasticserving promote`); 409 with the reason while the
        canary has no ready replica."""
        if read_only:
            return _error(405, "this autoscaler follows the Kubernetes API: set spec.default to the canary's "
                               "spec with kubectl")
        key = f"{request.match_info['namespace']}/{request.match_info['name']}"
        try:
            await controller.promote(key)
        except KeyError:
            return _error(404, f"paddleservice {key} not found")
        except PromoteRefused as exc:
            return _error(409, str(exc))
        except SpecError as exc:
            return _error(400, str(exc), field=exc.field)
        return web.json_response(controller.describe(key))

    @routes.delete("/v1/paddleservices/{namespace}/{name}")
    async def delete_service(request: web.Request) -> web.Response:
        if read_only:
            return _error(405, "this autoscaler follows the Kubernetes API: use kubectl delete")
        key = f"{request.match_info['namespace']}/{request.match_info['name']}"
        if not await controller.delete(key):
            return _error(404, f"paddleservice {key} not found")
        return web.json_response({"deleted": key})

    middlewares = []
    if allowed_hosts is not None:
        middlewares.append(host_guard(allowed_hosts))
    if token is not None:
        middlewares.append(bearer_auth(token))
    middlewares += [json_only, serving_gate(serving)]
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=middlewares)
    app.add_routes(routes)
    return app


__all__ = ["build_app", "bearer_auth", "host_guard", "host_name", "json_only", "serving_gate"]
