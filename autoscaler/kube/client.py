"""Kubernetes API access for the in-cluster controller: JSON requests, list+watch informers.

Used by kube.operator (PaddleServices), kube.platform (Deployments, Services, EndpointSlices,
scale) and kube.leader (Lease); built on the `kubernetes` client's asyncio ApiClient (config, auth, TLS).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from kubernetes.aio import client as kclient
from kubernetes.aio import config as kconfig

log = logging.getLogger("elasticserving.kube")


class KubeError(Exception):
    """An API request that failed: `status` is the HTTP code (0 when the server was unreachable)."""

    def __init__(self, status: int, reason: str):
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


def resource_path(api_version: str, plural: str, namespace: str | None = None,
                  name: str | None = None, subresource: str | None = None) -> str:
    """`/api/v1/namespaces/ns/pods/x` or `/apis/group/version/...` for a resource (collection)."""
    path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    if namespace:
        path += f"/namespaces/{quote(namespace, safe='')}"
    path += f"/{plural}"
    if name:
        path += f"/{quote(name, safe='')}" + (f"/{subresource}" if subresource else "")
    return path


class Kube:
    """A thin JSON client over the kubernetes ApiClient: plain dicts in and out."""

    def __init__(self, api_client: kclient.ApiClient, request_timeout: float = 30.0):
        self.api_client = api_client
        self.request_timeout = request_timeout

    @classmethod
    async def connect(cls, kubeconfig: str | None = None, context: str | None = None) -> Kube:
        """From a kubeconfig file when given (or $KUBECONFIG / ~/.kube/config), else in-cluster."""
        cfg = kclient.Configuration()
        if kubeconfig or context:
            await kconfig.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
        else:
            try:
                kconfig.load_incluster_config(client_configuration=cfg)
            except kconfig.ConfigException:
                await kconfig.load_kube_config(client_configuration=cfg)
        cfg.retries = None
        return cls(kclient.ApiClient(cfg))

    async def close(self) -> None:
        await self.api_client.close()

    async def _send(self, method: str, path: str, query: dict[str, Any] | None, body: Any,
                    content_type: str | None, timeout: aiohttp.ClientTimeout) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        if query:
            q = {k: ("true" if v is True else "false" if v is False else v)
                 for k, v in query.items() if v is not None}
            path = f"{path}?{urlencode(q)}" if q else path
        _, url, hdrs, _, _ = await self.api_client.param_serialize(
            method=method, resource_path=path, header_params=headers, auth_settings=["BearerToken"])
        try:
            return await self.api_client.call_api(method, url, header_params=hdrs, body=body,
                                                  _request_timeout=timeout)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise KubeError(0, f"{type(exc).__name__}: {exc}") from exc

    async def request(self, method: str, path: str, query: dict[str, Any] | None = None,
                      body: Any = None, content_type: str | None = None) -> dict[str, Any]:
        """One API call; raises KubeError on a non-2xx answer or a transport error."""
        timeout = aiohttp.ClientTimeout(total=self.request_timeout)
        resp = await self._send(method, path, query, body, content_type, timeout)
        try:
            raw = await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise KubeError(0, f"{type(exc).__name__}: {exc}") from exc
        finally:
            resp.response.release()
        try:
            decoded = json.loads(raw) if raw else {}
        except ValueError:
            decoded = {"message": raw[:500].decode(errors="replace")}
        if resp.status >= 400:
            reason = decoded.get("message") if isinstance(decoded, dict) else None
            raise KubeError(resp.status, reason or str(resp.reason))
        return decoded

    # convenience verbs ---------------------------------------------------------------------------
    async def get(self, path: str, **query: Any) -> dict[str, Any]:
        return await self.request("GET", path, query)

    async def get_or_none(self, path: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", path)
        except KubeError as exc:
            if exc.not_found:
                return None
            raise

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", path, body=body)

    async def replace(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("PUT", path, body=body)

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", path, body=body, content_type="application/merge-patch+json")

    async def delete(self, path: str, propagation: str = "Background") -> bool:
        """Delete; False when it was already gone."""
        try:
            await self.request("DELETE", path, body={"kind": "DeleteOptions", "apiVersion": "v1",
                                                     "propagationPolicy": propagation})
            return True
        except KubeError as exc:
            if exc.not_found:
                return False
            raise

    async def watch(self, path: str, query: dict[str, Any], timeout_seconds: int) -> AsyncIterator[dict]:
        """Stream the events of one watch request until the server ends it."""
        q = dict(query, watch=True, timeoutSeconds=timeout_seconds, allowWatchBookmarks=True)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_seconds + 30)
        resp = await self._send("GET", path, q, None, None, timeout)
        try:
            if resp.status >= 400:
                raw = await resp.read()
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {}
                raise KubeError(resp.status, body.get("message", str(resp.reason)))
            try:
                async for line in resp.response.content:  # one event a line, until the server ends it
                    if line.strip():
                        yield json.loads(line)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise KubeError(0, f"watch stream broken: {type(exc).__name__}: {exc}") from exc
        finally:
            resp.response.close()


def retry_on_conflict(attempts: int = 5) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Re-run a read-modify-write coroutine when the API server answers 409 Conflict."""

    def wrap(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(fn)
        async def run(*args: Any, **kwargs: Any) -> Any:
            for attempt in range(1, attempts):
                try:
                    return await fn(*args, **kwargs)
                except KubeError as exc:
                    if not exc.conflict:
                        raise
                    log.debug("conflict in %s, retrying (%d)", fn.__name__, attempt)
                    await asyncio.sleep(0.05 * attempt)
            return await fn(*args, **kwargs)  # the last attempt: a conflict is raised

        return run

    return wrap


EventHandler = Callable[[str, dict[str, Any], dict[str, Any] | None], None]


def object_key(obj: dict[str, Any]) -> str:
    md = obj.get("metadata", {})
    ns = md.get("namespace")
    return f"{ns}/{md.get('name')}" if ns else str(md.get("name"))


class Informer:
    """List + watch one collection into a local cache, level-triggered.

    Events go to `handler(type, obj, old)` with type ADDED / MODIFIED / DELETED, and SYNC for every
    cached object each `resync_seconds`. A watch that ends is resumed from the last resourceVersion
    (bookmarks keep it fresh); 410 Gone (expired) triggers a full relist whose differences are
    delivered as events, so nothing is missed while disconnected.
    """

    def __init__(self, kube: Kube, path: str, handler: EventHandler, *, name: str = "",
                 label_selector: str | None = None, resync_seconds: float = 300.0,
                 watch_timeout_seconds: int = 300, backoff_max: float = 5.0):
        self.kube = kube
        self.path = path
        self.handler = handler
        self.name = name or path
        self._query = {"labelSelector": label_selector} if label_selector else {}
        self.resync_seconds = resync_seconds
        self.watch_timeout_seconds = watch_timeout_seconds
        self.backoff_max = backoff_max
        self.store: dict[str, dict[str, Any]] = {}
        self.resource_version: str | None = None
        self.synced = asyncio.Event()
        self.lists = 0  # full lists done (1 + relists)
        self.expirations = 0  # 410 Gone answers handled
        self._task: asyncio.Task | None = None
        self._resync_task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"informer {self.name}")
            if self.resync_seconds > 0:
                self._resync_task = asyncio.create_task(self._resync_loop(), name=f"resync {self.name}")

    async def stop(self) -> None:
        for task in (self._task, self._resync_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = self._resync_task = None

    async def wait_synced(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self.synced.wait(), timeout)

    def _emit(self, kind: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        try:
            self.handler(kind, obj, old)
        except Exception:  # a handler bug must not stop the informer
            log.exception("%s: handler failed on %s %s", self.name, kind, object_key(obj))

    async def relist(self) -> None:
        """Full list; replaces the cache and emits the differences."""
        body = await self.kube.get(self.path, **self._query)
        self.lists += 1
        kind = body.get("kind", "").removesuffix("List")
        api_version = body.get("apiVersion")
        fresh: dict[str, dict[str, Any]] = {}
        for item in body.get("items", []):
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", api_version)
            fresh[object_key(item)] = item
        old_store, self.store = self.store, fresh
        self.resource_version = body.get("metadata", {}).get("resourceVersion")
        for key, obj in fresh.items():
            before = old_store.get(key)
            if before is None:
                self._emit("ADDED", obj, None)
            elif before.get("metadata", {}).get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                self._emit("MODIFIED", obj, before)
        for key, obj in old_store.items():
            if key not in fresh:
                self._emit("DELETED", obj, obj)
        self.synced.set()

    async def run(self) -> None:
        backoff = 0.2
        need_list = not (self.synced.is_set() and self.resource_version)  # resume a previous run
        while True:
            try:
                if need_list:
                    await self.relist()
                    need_list = False
                await self._watch_once()
                backoff = 0.2
            except KubeError as exc:
                if exc.status == 410:  # Gone: our resourceVersion is too old to resume from
                    self.expirations += 1
                    log.info("%s: watch expired (410: %s); relisting", self.name, exc.reason)
                    need_list = True
                    continue
                log.warning("%s: list/watch failed (%s); retrying in %.1fs", self.name, exc, backoff)
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self.backoff_max)
            except Exception:
                log.exception("%s: unexpected list/watch error; relisting in %.1fs", self.name, backoff)
                need_list = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.backoff_max)

    async def _watch_once(self) -> None:
        timeout = int(self.watch_timeout_seconds * (0.5 + random.random() / 2)) or 1
        query = dict(self._query, resourceVersion=self.resource_version)
        async for event in self.kube.watch(self.path, query, timeout):
            etype = event.get("type")
            obj = event.get("object") or {}
            if etype == "ERROR":
                raise KubeError(int(obj.get("code") or 500), str(obj.get("message", "watch error")))
            rv = obj.get("metadata", {}).get("resourceVersion")
            if rv:
                self.resource_version = rv
            if etype == "BOOKMARK":
                continue
            key = object_key(obj)
            old = self.store.get(key)
            if etype == "DELETED":
                self.store.pop(key, None)
            else:
                self.store[key] = obj
            self._emit(str(etype), obj, old)

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.resync_seconds)
            if self.synced.is_set():
                for obj in list(self.store.values()):
                    self._emit("SYNC", obj, obj)
