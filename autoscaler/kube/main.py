"""Entry point of the in-cluster controller + autoscaler (`python -m autoscaler.kube`).

Connects to the API server, serves the control API for activators (routes, stats, pokes) and, once
it holds the leader Lease, runs the PaddleService reconciler, the kubernetes platform and the KPA tick.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
from typing import Any

from aiohttp import web

import runtime.tracing as tracing
from autoscaler.control_api import build_app
from autoscaler.controller import Controller
from autoscaler.kube.client import Kube, KubeError, resource_path
from autoscaler.kube.leader import LeaderElector
from autoscaler.kube.leader_endpoint import LeaderEndpoint
from autoscaler.kube.manifests import telemetry_env
from autoscaler.kube.model_volume import StorageSettings
from autoscaler.kube.operator import PaddleServiceOperator
from autoscaler.kube.platform import KubernetesPlatform

log = logging.getLogger("elasticserving.kube")
token_log = logging.getLogger("elasticserving.kube.token")

# The in-cluster control API token: a Secret in the system namespace that the controller creates with a random
# value the first time it starts, and that activator Pods read (env from secretKeyRef). It bootstraps `kubectl
# apply -f deploy/` without a shared literal in the manifests: activator Pods wait (CreateContainerConfigError,
# retried by the kubelet) until a controller replica has created it.
SECRET_NAME = "elasticserving-control-token"
KEY = "token"


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m autoscaler.kube",
                                description="ElasticServing controller + autoscaler for Kubernetes")
    p.add_argument("--kubeconfig", default=env("KUBECONFIG"), help="kubeconfig file (default: in-cluster)")
    p.add_argument("--context", default=None)
    p.add_argument("--namespace", default=env("WATCH_NAMESPACE") or None,
                   help="watch PaddleServices in this namespace only (default: all)")
    p.add_argument("--system-namespace", default=env("POD_NAMESPACE", "elasticserving-system"),
                   help="namespace of the leader Lease and the config ConfigMap")
    p.add_argument("--config-map", default=env("ELASTICSERVING_CONFIG_MAP", "config-autoscaler"),
                   help="ConfigMap with autoscaler defaults (Knative config-autoscaler keys) and `domain`")
    p.add_argument("--domain", default=env("ELASTICSERVING_DOMAIN"),
                   help="domain of service URLs (default: the ConfigMap's `domain`, else example.com)")
    p.add_argument("--host", default="0.0.0.0", help="control API address")
    p.add_argument("--port", type=int, default=int(env("ELASTICSERVING_CONTROL_PORT", "8090")))
    p.add_argument("--identity", default=env("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}")
    p.add_argument("--leader-service", default=env("ELASTICSERVING_LEADER_SERVICE") or None,
                   help="selector-less Service (in the system namespace) whose endpoint the leader sets "
                        "to --pod-ip:--port, so activators reach the leader (default: none)")
    p.add_argument("--pod-ip", default=env("POD_IP") or None, help="this replica's address (downward API)")
    p.add_argument("--control-token-file", default=env("ELASTICSERVING_CONTROL_TOKEN_FILE") or None,
                   help="file holding the control API token (default: the Secret below)")
    p.add_argument("--control-token-secret", default=env("ELASTICSERVING_CONTROL_TOKEN_SECRET", SECRET_NAME),
                   help="Secret in the system namespace holding the control API token, created with a random "
                        "value when absent; activators read it ('': no token, the API is unauthenticated)")
    p.add_argument("--storage-initializer-image", default=env("ELASTICSERVING_STORAGE_IMAGE",
                                                             StorageSettings.image),
                   help="image of the storage initializer that pulls storageUri models (our runtime image)")
    p.add_argument("--model-cache-host-path", default=env("ELASTICSERVING_MODEL_CACHE_HOST_PATH",
                                                          StorageSettings.cache_root),
                   help="the node-local model cache (a hostPath, one directory per namespace)")
    p.add_argument("--model-cache-max-bytes", type=int,
                   default=int(env("ELASTICSERVING_MODEL_CACHE_MAX_BYTES", str(StorageSettings.cache_max_bytes))))
    p.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--lease-name", default="elasticserving-controller")
    p.add_argument("--lease-duration", type=float, default=15.0)
    p.add_argument("--renew-deadline", type=float, default=10.0)
    p.add_argument("--retry-period", type=float, default=2.0)
    p.add_argument("--resync-seconds", type=float, default=30.0)
    p.add_argument("--watch-timeout-seconds", type=int, default=300)
    p.add_argument("--tick-seconds", type=float, default=2.0)
    p.add_argument("--log-level", default=env("LOG_LEVEL", "INFO"))
    return p


async def load_config_map(kube: Kube, namespace: str, name: str, stop: asyncio.Event) -> dict[str, str]:
    """The ConfigMap's data; built-in defaults when it does not exist or may not be read. While the
    API server is unreachable (e.g. the Pod network is not up yet) it retries instead of running
    with defaults for the whole life of the process."""
    attempt = 0
    while True:
        try:
            cm = await kube.get_or_none(resource_path("v1", "configmaps", namespace, name))
            break
        except KubeError as exc:
            if 0 < exc.status < 500:
                log.warning("cannot read ConfigMap %s/%s (%s): using built-in defaults", namespace, name, exc)
                return {}
            attempt += 1
            log.warning("cannot read ConfigMap %s/%s (%s): retrying", namespace, name, exc)
            await _first(asyncio.sleep(min(5.0, 0.5 * attempt)), stop.wait())
            if stop.is_set():
                return {}
    if cm is None:
        log.info("no ConfigMap %s/%s: using built-in defaults", namespace, name)
        return {}
    return {k: v for k, v in (cm.get("data") or {}).items() if not k.startswith("_")}


def _number(value: str) -> Any:
    """A ConfigMap string as the Controller's default (a number where Knative has numbers)."""
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(value)
    return value


class KubeController:
    """Everything the leader runs: platform (Deployments, EndpointSlices), Controller, reconciler."""

    def __init__(self, kube: Kube, args: argparse.Namespace, domain: str, defaults: dict[str, Any]):
        storage = StorageSettings(image=args.storage_initializer_image, cache_root=args.model_cache_host_path,
                                  cache_max_bytes=args.model_cache_max_bytes)
        self.platform = KubernetesPlatform(kube, namespace=args.namespace,
                                           watch_timeout_seconds=args.watch_timeout_seconds, storage=storage,
                                           replica_env=telemetry_env(os.environ))
        self.controller = Controller(self.platform, domain=domain, defaults=defaults,
                                     tick_seconds=args.tick_seconds)
        self.operator = PaddleServiceOperator(kube, self.controller, namespace=args.namespace,
                                              resync_seconds=args.resync_seconds,
                                              watch_timeout_seconds=args.watch_timeout_seconds)
        self.running = False

    async def start(self) -> None:
        await self.controller.start()  # starts the platform's watches, waits for their caches
        await self.operator.start()
        self.running = True

    async def close(self) -> None:
        self.running = False
        await self.operator.close()
        await self.controller.close()


async def _first(*aws: Any) -> None:
    """Wait until the first of `aws` completes; cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t


async def _until(elector: LeaderElector, leading: bool) -> None:
    while elector.is_leader != leading:
        await elector.wait_change()


async def serve_term(kube: Kube, args: argparse.Namespace, domain: str, defaults: dict[str, Any],
                     elector: LeaderElector | None, stop: asyncio.Event, token: str | None) -> None:
    """One leadership term: a fresh platform + Controller + reconciler and control API. Stands by
    (/ready 503) until leading, works until leadership is lost or `stop` is set, then tears all
    down, so a leader that lost its Lease (e.g. the API server was unreachable past the renew
    deadline) stops writing at once and becomes a candidate again with clean state."""
    kc = KubeController(kube, args, domain, defaults)
    # A standby or a leader whose caches are not synced answers the activators 503 (they keep their
    # table); a new leader's route table has a new epoch, so activators take its full table at once.
    app = build_app(kc.controller, read_only=True, token=token, serving=lambda: kc.running)

    @web.middleware
    async def ready_if_leading(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/ready" and not kc.running:
            return web.json_response({"status": "standby", "reason": "not the leader"}, status=503)
        return await handler(request)

    app.middlewares.append(ready_if_leading)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, args.host, args.port, reuse_address=True).start()
        log.info("control API on %s:%d (identity %s)", args.host, args.port, args.identity)
        if elector is not None:
            await _first(_until(elector, True), stop.wait())
            if stop.is_set():
                return
        start = asyncio.ensure_future(kc.start())
        await _first(start, stop.wait(), *([_until(elector, False)] if elector is not None else []))
        if start.done() and not start.cancelled():
            start.result()  # raises what kc.start() raised
            log.info("leading: reconciling PaddleServices")
            endpoint = LeaderEndpoint(kube, args.system_namespace, args.leader_service, args.identity,
                                      args.pod_ip, args.port) if args.leader_service and args.pod_ip else None
            try:
                await _first(stop.wait(), *([_until(elector, False)] if elector is not None else []),
                             *([endpoint.keep_published()] if endpoint is not None else []))
            finally:
                # At once, before this Pod goes: kube-proxy stops sending new connections to an
                # address that will not answer (a SYN to a deleted Pod's IP gets no reset, and the
                # client hangs until its own connect timeout).
                if endpoint is not None:
                    await endpoint.withdraw()
        if not stop.is_set():
            log.warning("lost leadership: stopping work, standing by as a candidate")
    finally:
        with contextlib.suppress(Exception):
            await kc.close()
        await runner.cleanup()


async def _run(args: argparse.Namespace) -> int:
    kube = await Kube.connect(args.kubeconfig, args.context)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    elector: LeaderElector | None = None
    try:
        data = await load_config_map(kube, args.system_namespace, args.config_map, stop)
        domain = args.domain or data.get("domain") or "example.com"
        defaults = {k: _number(v) for k, v in data.items() if k != "domain"}
        token = await control_token(kube, args)
        if args.leader_elect:
            elector = LeaderElector(kube, args.system_namespace, args.lease_name, args.identity,
                                    lease_duration=args.lease_duration, renew_deadline=args.renew_deadline,
                                    retry_period=args.retry_period)
            elector.start()
        terms = 0
        while not stop.is_set():
            terms += 1
            try:
                await serve_term(kube, args, domain, defaults, elector, stop, token)
            except Exception:
                log.exception("term %d failed; starting over", terms)
                await _first(asyncio.sleep(1.0), stop.wait())
                continue
            if elector is None:
                break
        log.info("stopped after %d term(s)", terms)
        return 0
    finally:
        if elector is not None:
            await elector.stop(release=True)
        await kube.close()


async def control_token(kube: Kube, args: argparse.Namespace) -> str | None:
    """The bearer token the control API requires of activators: from a file, or the Secret, created with a
    fresh random value when absent (several replicas may race: the first create wins, the others read it)."""
    if args.control_token_file:
        with open(args.control_token_file) as f:
            return f.read().strip() or None
    if not args.control_token_secret:
        log.warning("no control API token: /v1/* is open to anything that reaches the port")
        return None
    namespace, name = args.system_namespace, args.control_token_secret
    path = resource_path("v1", "secrets", namespace, name)
    secret = await kube.get_or_none(path)
    if secret is None:
        token = secrets.token_urlsafe(32)
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "namespace": namespace,
                             "labels": {"app.kubernetes.io/part-of": "elasticserving"}},
                "data": {KEY: base64.b64encode(token.encode()).decode()}}
        try:
            await kube.create(resource_path("v1", "secrets", namespace), body)
            token_log.info("created the control API token Secret %s/%s", namespace, name)
            return token
        except KubeError as exc:
            if exc.status != 409:
                raise
        secret = await kube.get_or_none(path)  # another replica created it first
    value = ((secret or {}).get("data") or {}).get(KEY)
    token = base64.b64decode(value).decode().strip() if value else ""
    if not token:
        raise KubeError(422, f"Secret {namespace}/{name} has no `{KEY}`")
    return token


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    tracing.setup("elasticserving-controller")  # the scale-from-zero spans (config-tracing; off without an endpoint)
    try:
        return asyncio.run(_run(args))
    finally:
        tracing.shutdown()


if __name__ == "__main__":
    sys.exit(main())
