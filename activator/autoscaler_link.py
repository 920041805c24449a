"""The activator's link to the autoscaler's control API, in the typed contract of autoscaler/wire.py:
long-polls routes (versioned deltas) down to the dispatcher, sends per-second stats and pokes up.

If the autoscaler goes away, or answers 503 (a standby or unsynced controller), the current routes stay
in force, so serving continues on current replicas. Every call carries `Authorization: Bearer <token>`
when a token is configured; the token file is read again when the API answers 401 (rotation).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
from pydantic import ValidationError

from autoscaler.wire import LoadSide, Poke, RoutesUpdate, SideStats, StatsReport

log = logging.getLogger("elasticserving.activator.link")

TOKEN_ENV = "ELASTICSERVING_CONTROL_TOKEN"
MAX_ROUTES_BYTES = 256 * 1024 * 1024  # the whole table of a very large installation, with room
WAIT_SECONDS = 30
# A SYN to a deleted leader Pod's IP gets no reset: give up connecting quickly and try again (the
# Service already points at the new leader) instead of hanging until the long-poll's own timeout.
CONNECT_SECONDS = 2.0
QUICK_ANSWER_SECONDS = 1.0  # a long-poll answered this fast with nothing new is retried after a back-off
# An autoscaler that said it is shutting down (an orderly stop: Ctrl-C on `elasticserving up`, a rolling
# update) is expected to be away for a while: its absence is news only past this long.
ANNOUNCED_ABSENCE_SECONDS = 30.0
SHUTTING_DOWN = "shutting down"  # in the control API's 503 once its route table is closed


class AutoscalerStopping(RuntimeError):
    """The control API answered that it is shutting down."""


def absence_level(announced_at: float | None, now: float) -> int:
    """The log level of a failed call (pure): DEBUG for one in the first ANNOUNCED_ABSENCE_SECONDS after
    the autoscaler announced its shutdown, WARNING otherwise (an autoscaler gone without a word, or
    gone for longer than a restart takes)."""
    if announced_at is not None and now - announced_at < ANNOUNCED_ABSENCE_SECONDS:
        return logging.DEBUG
    return logging.WARNING


def accept(held: tuple[str, int] | None, update: RoutesUpdate) -> bool:
    """Whether to apply `update` holding (`epoch`, `version`) (pure; see wire.py's versioning):
    nothing held -> only a full table; the same epoch -> only a newer version (a delta or a full table);
    another epoch (a new leader) -> only a full table."""
    if held is None or update.epoch != held[0]:
        return update.full
    return update.version > held[1]


class Token:
    """The bearer token: from a file (read again on demand, so a rotated file works) or the environment."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.value: str | None = None
        self.reload()

    def reload(self) -> None:
        if self.path:
            try:
                self.value = Path(self.path).read_text().strip() or None
            except OSError as exc:
                log.error("control token file %s unreadable: %s", self.path, exc)
                self.value = None
        else:
            self.value = os.environ.get(TOKEN_ENV) or None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.value}"} if self.value else {}


class AutoscalerLink:
    def __init__(self, base_url: str, activator_id: str, on_routes: Callable[[RoutesUpdate], None],
                 collect_stats: Callable[[], list[SideStats]], token: Token,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.base = base_url.rstrip("/")
        self.clock = clock
        self.id = activator_id
        self.on_routes = on_routes
        self.collect_stats = collect_stats
        self.token = token
        self.held: tuple[str, int] | None = None  # (epoch, version) of the routes applied
        self.synced = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task] = []
        self._announced_at: float | None = None  # when (clock) the autoscaler said it is shutting down

    async def start(self, loops: bool = True) -> None:
        """Open the session and, unless `loops` is false (a test driving `poll_once`), start the
        routes long-poll and the per-second stats."""
        self._session = aiohttp.ClientSession()
        if loops:
            self._tasks = [asyncio.create_task(self._watch_routes(), name="routes"),
                           asyncio.create_task(self._report_loop(), name="stats")]

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session:
            await self._session.close()

    async def _call(self, method: str, path: str, json_body: str | None = None, **kw) -> aiohttp.ClientResponse:
        """One control-API call with the bearer token; once more with a re-read token after a 401."""
        resp = await self._send(method, path, json_body, **kw)
        if resp.status == 401:
            resp.release()
            self.token.reload()  # a rotated token file
            resp = await self._send(method, path, json_body, **kw)
        return resp

    async def _send(self, method: str, path: str, json_body: str | None, **kw) -> aiohttp.ClientResponse:
        assert self._session is not None
        headers = self.token.headers()
        if json_body is not None:
            headers["Content-Type"] = "application/json"
        return await self._session.request(method, self.base + path, headers=headers,
                                           data=None if json_body is None else json_body.encode(), **kw)

    # ---- routes down -------------------------------------------------------------------------
    async def _watch_routes(self) -> None:
        backoff = 0.1
        while True:
            started = self.clock()
            try:
                # Nothing new, answered without waiting: polling again at once would spin with it.
                retry_later = not await self.poll_once() and self.clock() - started < QUICK_ANSWER_SECONDS
            except AutoscalerStopping:
                if self._announced_at is None:
                    log.info("the autoscaler at %s is shutting down; keeping the current routes", self.base)
                    self._announced_at = self.clock()
                retry_later = True
            except Exception as exc:
                log.log(absence_level(self._announced_at, self.clock()),
                        "routes from %s unavailable (%s); keeping the current routes", self.base, exc)
                retry_later = True
            if retry_later:
                await asyncio.sleep(backoff)
                backoff = min(2.0, backoff * 2)
            else:
                backoff = 0.1

    async def poll_once(self) -> bool:
        """One long-poll; True when an update was applied. Raises with the reason when none could be."""
        params = {"since": str(self.held[1]) if self.held else "-1", "wait": str(WAIT_SECONDS), "activator": self.id}
        if self.held:
            params["epoch"] = self.held[0]
        resp = await self._call("GET", "/v1/routes", params=params,
                                timeout=aiohttp.ClientTimeout(total=WAIT_SECONDS + 10,
                                                              sock_connect=CONNECT_SECONDS))
        async with resp:
            if resp.status != 200:
                text = (await resp.content.read(300)).decode(errors="replace")
                if resp.status == 503 and SHUTTING_DOWN in text:
                    raise AutoscalerStopping(text)
                raise RuntimeError(f"HTTP {resp.status}: {text}")
            body = await _read_bounded(resp, MAX_ROUTES_BYTES)
        try:
            update = RoutesUpdate.model_validate_json(body)
        except ValidationError as exc:
            why = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:3])
            raise RuntimeError(f"not a wire.RoutesUpdate ({why})") from None
        if not accept(self.held, update):
            if self.held != (update.epoch, update.version):  # else: a long-poll that ended with no news
                log.info("ignoring routes epoch %s version %d (holding %s)", update.epoch, update.version,
                         self.held)
            return False
        self.on_routes(update)
        self._announced_at = None  # an autoscaler is back
        self.held = (update.epoch, update.version)
        self.synced.set()
        return True

    # ---- stats and pokes up ------------------------------------------------------------------
    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            await self.send_stats()

    async def _post(self, path: str, body: str) -> None:
        if self._session is None:
            return
        try:
            resp = await self._call("POST", path, body, timeout=aiohttp.ClientTimeout(total=2, sock_connect=CONNECT_SECONDS))
            async with resp:
                if resp.status >= 400:
                    text = (await resp.content.read(300)).decode(errors="replace")
                    level = absence_level(self._announced_at, self.clock())
                    log.log(logging.DEBUG if SHUTTING_DOWN in text else level, "%s answered %d: %s", path,
                            resp.status, text)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.debug("%s failed: %s", path, exc)

    async def send_stats(self) -> None:
        if stats := self.collect_stats():
            await self._post("/v1/stats", StatsReport(activator=self.id, stats=tuple(stats)).model_dump_json())

    async def poke(self, key: str, side: LoadSide, traceparent: str | None = None) -> None:
        await self._post("/v1/poke", Poke(service=key, side=side, traceparent=traceparent).model_dump_json())

    async def wake(self, key: str, side: LoadSide, traceparent: str | None = None) -> None:
        """Requests are held for this side: poke (with the held request's trace, to link the scale-up
        to it), and send fresh stats so the held load is seen now."""
        await self.poke(key, side, traceparent)
        await self.send_stats()


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    if resp.content_length is not None and resp.content_length > limit:
        raise RuntimeError(f"routes of {resp.content_length} bytes exceed the limit of {limit}")
    chunks, size = [], 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise RuntimeError(f"routes larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
