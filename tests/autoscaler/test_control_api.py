"""The control API's side of the wire contract, through aiohttp's test client: a fake activator built
from autoscaler/wire.py messages long-polls routes (deltas per epoch), reports stats and pokes."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp.test_utils import TestClient, TestServer

from autoscaler.control_api import build_app
from autoscaler.controller import Controller
from autoscaler.wire import Poke, RoutesUpdate, SideStats, StatsReport
from tests.fakes import Clock, FakePlatform, svc


class FakeActivator:
    """The activator's half of the contract, as the wire module defines it."""

    def __init__(self, client: TestClient, ident: str = "act-1") -> None:
        self.client, self.id = client, ident
        self.epoch: str | None = None
        self.version = -1
        self.routes: dict[str, object] = {}

    async def poll(self, wait: float = 0.0) -> RoutesUpdate:
        params = {"since": str(self.version), "wait": str(wait), "activator": self.id}
        if self.epoch:
            params["epoch"] = self.epoch
        resp = await self.client.get("/v1/routes", params=params)
        assert resp.status == 200, await resp.text()
        u = RoutesUpdate.model_validate_json(await resp.read())
        if u.full:
            self.routes = {}
        for r in u.services:
            self.routes[r.service] = r
        for k in u.removed:
            self.routes.pop(k, None)
        self.epoch, self.version = u.epoch, u.version
        return u

    async def post(self, path: str, message) -> tuple[int, dict]:
        resp = await self.client.post(path, data=message.model_dump_json(),
                                      headers={"Content-Type": "application/json"})
        return resp.status, await resp.json()


@pytest.fixture
async def api():
    p = FakePlatform()
    clock = Clock()
    c = Controller(p, defaults={"scale-to-zero-grace-period": "4s"}, clock=clock)
    serving = {"on": True}
    client = TestClient(TestServer(build_app(c, serving=lambda: serving["on"])))
    await client.start_server()
    try:
        yield p, c, client, serving
    finally:
        await client.close()


async def test_first_poll_is_full_then_deltas_of_the_changed_service(api):
    p, c, client, _ = api
    for name in ("a", "b", "c"):
        await c.apply(svc(name=name))
    act = FakeActivator(client)
    first = await act.poll()
    assert first.full and sorted(act.routes) == ["ns/a", "ns/b", "ns/c"]
    waiting = asyncio.create_task(act.poll(wait=10))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # up to date: the long-poll holds
    p.set_ready("ns/b", "default", 1)
    delta = await asyncio.wait_for(waiting, 5)
    assert not delta.full and [r.service for r in delta.services] == ["ns/b"]
    assert act.routes["ns/b"].sides["default"].endpoints[0].http_port == 9000
    await c.delete("ns/c")
    delta = await act.poll()
    assert delta.removed == ("ns/c",) and sorted(act.routes) == ["ns/a", "ns/b"]


async def test_another_epoch_gets_the_full_table_at_once(api):
    _, c, client, _ = api
    await c.apply(svc())
    act = FakeActivator(client)
    await act.poll()
    act.epoch = "an-older-leader"
    u = await asyncio.wait_for(act.poll(wait=30), 5)  # answered at once, not after 30 s
    assert u.full and u.epoch == c.routes.epoch and list(act.routes) == ["ns/s"]


async def test_a_poll_without_epoch_still_long_polls(api):
    """The first protocol (no epoch): wait for a newer version, then the full table."""
    p, c, client, _ = api
    await c.apply(svc())
    v = c.routes.version
    poll = asyncio.create_task(client.get("/v1/routes", params={"since": str(v), "wait": "10"}))
    await asyncio.sleep(0.05)
    assert not poll.done()
    p.set_ready("ns/s", "default", 1)
    body = await (await asyncio.wait_for(poll, 5)).json()
    assert body["full"] is True and body["version"] == v + 1 and body["services"][0]["service"] == "ns/s"


async def test_polling_and_reporting_activators_are_counted(api):
    _, c, client, _ = api
    await c.apply(svc())
    a1, a2 = FakeActivator(client, "act-1"), FakeActivator(client, "act-2")
    await a1.poll()
    assert (await a2.poll()).activators == 2
    assert (await a1.poll()).activators == 2  # the count's change is a new version for act-1 too


async def test_stats_are_taken_and_unknown_services_ignored(api):
    _, c, client, _ = api
    await c.apply(svc())
    act = FakeActivator(client)
    status, body = await act.post("/v1/stats", StatsReport(activator="act-1", stats=[
        SideStats(service="ns/s", average_concurrency=3.5, requests=4),
        SideStats(service="ns/unknown", average_concurrency=1)]))
    assert (status, body) == (200, {"accepted": 1})
    assert ("ns/s", "default") in c.active


@pytest.mark.parametrize(("path", "body", "reason"), [
    ("/v1/stats", '{"activator": "a", "stats": [{"service": "ns/s", "average_concurrency": NaN}]}', "finite number"),
    ("/v1/stats", '{"activator": "a", "stats": [{"service": "ns/s", "average_concurrency": 1e300}]}',
     "stats.0.average_concurrency"),
    ("/v1/stats", '{"activator": "a", "stats": [{"service": "ns/s", "window": -1}]}', "stats.0.window"),
    ("/v1/stats", '{"activator": "a", "stats": [{"service": "NOT A KEY"}]}', "namespace/name"),
    ("/v1/stats", '{"stats": []}', "activator: Field required"),
    ("/v1/stats", '[1, 2]', "bad stats report"),
    ("/v1/stats", '{"activator": "a", "stats": [', "Invalid JSON"),
    ("/v1/poke", '{"service": "ns/s", "side": "blue"}', "'default', 'canary' or 'previous'"),
    ("/v1/poke", '{"side": "default"}', "service: Field required"),
])
async def test_bad_reports_and_pokes_are_400_with_the_reason(api, path, body, reason):
    _, c, client, _ = api
    await c.apply(svc())
    resp = await client.post(path, data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert reason in (await resp.json())["error"]


async def test_a_bad_report_leaves_the_others_working(api):
    p, c, client, _ = api
    await c.apply(svc())
    await client.post("/v1/stats", data='{"activator": "evil", "stats": [{"service": "ns/s", '
                      '"average_concurrency": Infinity}]}', headers={"Content-Type": "application/json"})
    act = FakeActivator(client)
    assert (await act.post("/v1/poke", Poke(service="ns/s")))[0] == 200
    assert p.scales[-1] == ("ns/s", "default", 1)


async def test_poke_of_an_unknown_service_is_404(api):
    _, c, client, _ = api
    act = FakeActivator(client)
    status, body = await act.post("/v1/poke", Poke(service="ns/nope"))
    assert status == 404 and "ns/nope" in body["error"]


@pytest.mark.parametrize("query", ["since=x", "wait=nan", "wait=abc", "epoch=" + "e" * 65, "activator="])
async def test_bad_route_queries_are_400(api, query):
    _, _, client, _ = api
    resp = await client.get("/v1/routes?" + query)
    assert resp.status == 400 and (await resp.json())["error"]


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/v1/routes", None),
    ("POST", "/v1/stats", StatsReport(activator="a").model_dump_json()),
    ("POST", "/v1/poke", Poke(service="ns/s").model_dump_json()),
])
async def test_a_controller_not_serving_answers_503_not_an_empty_table(api, method, path, body):
    _, c, client, serving = api
    await c.apply(svc())
    serving["on"] = False
    resp = await client.request(method, path, data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 503 and "not serving" in (await resp.json())["error"]
    assert (await client.get("/v1/paddleservices")).status == 200  # the rest still answers
    serving["on"] = True
    resp = await client.request(method, path, data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 200, await resp.text()


async def test_routes_json_is_the_wire_shape(api):
    _, c, client, _ = api
    await c.apply(svc(canary=True, percent=20))
    body = json.loads(await (await client.get("/v1/routes")).read())
    assert set(body) == {"epoch", "version", "full", "services", "removed", "activators", "activator_index"}
    assert set(body["services"][0]["sides"]) == {"default", "canary"}


# ---- replica output (elasticserving logs) -----------------------------------------------------------
@pytest.fixture
async def logs_api():
    from autoscaler.local.logs import SideLog

    p = FakePlatform()
    c = Controller(p, clock=Clock())
    sides: dict[tuple[str, str], SideLog] = {}
    client = TestClient(TestServer(build_app(c, logs=lambda key, side: sides.get((key, side)))))
    await client.start_server()
    try:
        yield c, client, sides, SideLog
    finally:
        await client.close()


async def test_logs_tail_and_follow(logs_api):
    c, client, sides, SideLog = logs_api
    await c.apply(svc(canary=True))
    log = sides[("ns/s", "default")] = SideLog()
    for i in range(5):
        log.append("ns-s-default-1", f"line {i}\n".encode())
    resp = await client.get("/v1/paddleservices/ns/s/logs", params={"tail": "2"})
    assert resp.status == 200 and resp.content_type == "text/plain"
    assert await resp.text() == "[ns-s-default-1] line 3\n[ns-s-default-1] line 4\n"
    assert await (await client.get("/v1/paddleservices/ns/s/logs", params={"side": "canary"})).text() == ""
    resp = await client.get("/v1/paddleservices/ns/s/logs", params={"follow": "1", "tail": "0"})
    log.append("ns-s-default-2", b"live\n")
    assert await asyncio.wait_for(resp.content.readline(), 5) == b"[ns-s-default-2] live\n"
    log.close()  # the side is gone: the stream ends
    assert await asyncio.wait_for(resp.content.read(), 5) == b""


@pytest.mark.parametrize(("path", "status"), [
    ("/v1/paddleservices/ns/nope/logs", 404),
    ("/v1/paddleservices/ns/s/logs?side=canary", 404),  # no canary in this service
    ("/v1/paddleservices/ns/s/logs?side=blue", 400),
    ("/v1/paddleservices/ns/s/logs?tail=-1", 400),
    ("/v1/paddleservices/ns/s/logs?tail=x", 400),
])
async def test_logs_errors(logs_api, path, status):
    c, client, _, _ = logs_api
    await c.apply(svc())
    resp = await client.get(path)
    assert resp.status == status and (await resp.json())["error"]


async def test_logs_without_a_log_source_is_501(api):
    _, c, client, _ = api
    await c.apply(svc())
    resp = await client.get("/v1/paddleservices/ns/s/logs")
    assert resp.status == 501 and "kubectl logs" in (await resp.json())["error"]


async def test_shutting_down_answers_waiting_and_new_polls_503(api):
    """Closing the routes releases every long-poll with a 503 (activators keep their table and back
    off) instead of the table they already hold, which they would ask for again at once."""
    _, c, client, _ = api
    await c.apply(svc())
    v = c.routes.version
    poll = asyncio.create_task(client.get("/v1/routes", params={"epoch": c.routes.epoch, "since": str(v),
                                                                "wait": "30"}))
    deadline = asyncio.get_running_loop().time() + 10
    while not c.routes._changed._waiters:  # until the poll waits (asyncio.Event keeps its waiters there)
        assert asyncio.get_running_loop().time() < deadline, "the poll never waited"
        await asyncio.sleep(0.01)
    c.routes.close()
    resp = await asyncio.wait_for(poll, 5)
    assert resp.status == 503 and "shutting down" in (await resp.json())["error"]
    resp = await client.get("/v1/routes", params={"epoch": c.routes.epoch, "since": str(v), "wait": "30"})
    assert resp.status == 503


async def test_promote_is_refused_with_the_reason_until_the_canary_is_ready(api):
    p, c, client, _ = api
    await c.apply(svc(canary=True, percent=30))
    headers = {"Content-Type": "application/json"}
    p.set_ready("ns/s", "canary", 0, error="replica command exited before it was ready (exit code 3)")
    resp = await client.post("/v1/paddleservices/ns/s/promote", data="{}", headers=headers)
    assert resp.status == 409
    assert "no ready replica (replica command exited before it was ready (exit code 3))" in (await resp.json())["error"]
    assert c.services["ns/s"].svc.spec.default.tag == "v1"
    resp = await client.post("/v1/paddleservices/ns/nope/promote", data="{}", headers=headers)
    assert resp.status == 404
    p.set_ready("ns/s", "canary", 1)
    resp = await client.post("/v1/paddleservices/ns/s/promote", data="{}", headers=headers)
    assert resp.status == 200
    body = await resp.json()
    assert body["spec"]["default"]["tag"] == "v2" and "canary" not in body["spec"]


async def test_promote_on_a_read_only_control_api_is_405():
    c = Controller(FakePlatform())
    client = TestClient(TestServer(build_app(c, read_only=True)))
    await client.start_server()
    try:
        resp = await client.post("/v1/paddleservices/ns/s/promote", data="{}",
                                 headers={"Content-Type": "application/json"})
        assert resp.status == 405 and "kubectl" in (await resp.json())["error"]
    finally:
        await client.close()
