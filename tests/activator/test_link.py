"""The link to the autoscaler (activator.autoscaler_link) against a fake control API speaking
autoscaler/wire.py: full tables and deltas, stale and foreign updates refused, a standby's 503 keeping
the table, removed services failing their held requests, typed stats and pokes, bearer tokens."""

from __future__ import annotations

import asyncio

import pytest

from activator.autoscaler_link import TOKEN_ENV, AutoscalerLink, Token
from activator.outcomes import Failure
from autoscaler.wire import RoutesUpdate, SideStats
from tests.activator.harness import FakeControl, Setup, full, route


def link_for(control: FakeControl, setup: Setup, token: Token | None = None) -> AutoscalerLink:
    return AutoscalerLink(control.url, "act-1", setup.dispatcher.apply, setup.dispatcher.take_stats,
                          token or Token(None))


async def test_full_then_deltas_and_removed_services_fail_held_requests(control, setup):
    link = link_for(control, setup)
    await link.start()
    try:
        control.publish(full(route("ns/a"), route("ns/b"), version=5))  # a and b, no replicas yet
        await asyncio.wait_for(link.synced.wait(), 5)
        assert sorted(setup.dispatcher.table.routes) == ["ns/a", "ns/b"] and link.held == ("e1", 5)
        held = asyncio.create_task(setup.dispatcher.throttler("ns/b", "default").acquire(30))
        await asyncio.sleep(0.01)
        control.publish(RoutesUpdate(epoch="e1", version=6, full=False, services=(route("ns/c"),),
                                     removed=("ns/b",)))
        with pytest.raises(Failure, match="ns/b .* was removed"):
            await asyncio.wait_for(held, 5)
        assert sorted(setup.dispatcher.table.routes) == ["ns/a", "ns/c"] and link.held == ("e1", 6)
        assert control.polls[-1]["epoch"] == "e1" and control.polls[-1]["since"] == "6"
        assert control.polls[-1]["activator"] == "act-1" and control.polls[0]["since"] == "-1"
    finally:
        await link.close()


async def test_stale_and_foreign_updates_are_ignored_and_a_new_epoch_needs_a_full_table(control, setup):
    link = link_for(control, setup)
    control.publish(full(route("ns/a"), version=5))
    await link.start(loops=False)
    try:
        assert await asyncio.wait_for(link.poll_once(), 5) is True
        control.publish(full(route("ns/old"), version=4))  # an older table of the same epoch
        assert await link.poll_once() is False
        control.publish(RoutesUpdate(epoch="e2", version=9, full=False, services=(route("ns/x"),)))
        assert await link.poll_once() is False
        assert list(setup.dispatcher.table.routes) == ["ns/a"]
        control.publish(full(route("ns/new"), version=1, epoch="e2"))  # a new leader, in full
        assert await link.poll_once() is True
        assert list(setup.dispatcher.table.routes) == ["ns/new"] and link.held == ("e2", 1)
    finally:
        await link.close()


async def test_a_standby_503_keeps_the_current_table(control, setup):
    link = link_for(control, setup)
    control.publish(full(route("ns/a"), version=1))
    await link.start(loops=False)
    try:
        assert await link.poll_once()
        control.standby = True
        with pytest.raises(RuntimeError, match="503"):
            await link.poll_once()
        assert list(setup.dispatcher.table.routes) == ["ns/a"]
    finally:
        await link.close()


async def test_stats_and_pokes_are_typed_json(control, setup):
    link = link_for(control, setup)
    setup.dispatcher.apply(full(route("ns/a")))
    await link.start(loops=False)
    try:
        setup.dispatcher.throttler("ns/a", "default").requests += 3
        await link.wake("ns/a", "default")
        assert [(p.service, p.side) for p in control.pokes] == [("ns/a", "default")]
        (report,) = control.stats
        assert report.activator == "act-1"
        assert report.stats[0] == SideStats(service="ns/a", side="default", average_concurrency=0.0,
                                            concurrency=0, requests=3, window=report.stats[0].window)
    finally:
        await link.close()


async def test_bearer_token_from_a_file_is_read_again_after_a_401(control, setup, tmp_path):
    control.token = "new-secret"
    token_file = tmp_path / "token"
    token_file.write_text("old-secret\n")
    link = link_for(control, setup, Token(str(token_file)))
    control.publish(full(route("ns/a")))
    await link.start(loops=False)
    try:
        with pytest.raises(RuntimeError, match="401"):
            await link.poll_once()
        token_file.write_text("new-secret\n")  # rotated
        assert await link.poll_once()
        assert control.auth_seen[-1] == "Bearer new-secret"
        await link.poke("ns/a", "default")
        assert control.pokes and control.auth_seen[-1] == "Bearer new-secret"
    finally:
        await link.close()


def test_token_sources(monkeypatch, tmp_path):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert Token(None).headers() == {}
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert Token(None).headers() == {"Authorization": "Bearer from-env"}
    f = tmp_path / "t"
    f.write_text("from-file\n")
    assert Token(str(f)).headers() == {"Authorization": "Bearer from-file"}  # the file wins


async def test_an_answer_of_another_shape_is_refused_with_a_short_reason(setup):
    from aiohttp import web

    async def old_routes(_: web.Request) -> web.Response:  # the untyped answer of an older control API
        return web.json_response({"version": 3, "services": [{"service": "ns/a", "hosts": ["a.ns"]}]})

    app = web.Application()
    app.add_routes([web.get("/v1/routes", old_routes)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    link = AutoscalerLink(f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}", "act-1",
                          setup.dispatcher.apply, setup.dispatcher.take_stats, Token(None))
    await link.start(loops=False)
    try:
        with pytest.raises(RuntimeError, match=r"not a wire.RoutesUpdate \(epoch: Field required; full:") as exc:
            await link.poll_once()
        assert len(str(exc.value)) < 200 and not link.synced.is_set()
    finally:
        await link.close()
        await runner.cleanup()


async def test_a_server_answering_at_once_with_nothing_new_is_polled_with_a_back_off(control, setup):
    """A control API that answers every long-poll at once with the table already held (as one shutting
    down did) must not be polled in a spin: the link backs off 0.1, 0.2, 0.4 s, ... between polls."""
    control.answer_at_once = True
    control.publish(full(route("ns/a"), version=1))
    link = link_for(control, setup)
    await link.start()
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while len(control.poll_times) < 5:
            assert asyncio.get_running_loop().time() < deadline, control.poll_times
            await asyncio.sleep(0.05)
        assert link.held == ("e1", 1)
        t = control.poll_times  # 1: applied; 2: nothing new at once; then one back-off before each poll
        assert t[2] - t[1] >= 0.1 and t[3] - t[2] >= 0.2 and t[4] - t[3] >= 0.4, t
    finally:
        await link.close()
