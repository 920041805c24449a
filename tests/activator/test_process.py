"""`python -m activator` as a real process against a fake control API and real replica processes:
the admin listener (and nothing of it on the public port), and draining on SIGTERM — readiness fails
at once, held and in-flight requests are all answered, new connections are still served, then exit 0."""

from __future__ import annotations

import asyncio
import json
import signal

import aiohttp
import pytest

from tests.activator.harness import full, poll, route, start_activator, start_replica, status

pytestmark = pytest.mark.timeout(120)


async def test_admin_port_and_draining_with_16_in_flight(control, tmp_path):
    replica, rport = await start_replica("--delay", "2")
    control.publish(full(route("ns/slow", ports=(rport,)), route("ns/cold"), version=1))
    log = (tmp_path / "activator.log").open("w")
    act, http, admin = await start_activator(control, "--drain-seconds", "30", "--log-format", "json", stderr=log)
    try:
        async with aiohttp.ClientSession() as s:
            await poll(lambda: _is(s, f"http://127.0.0.1:{admin}/ready", 200), 30, "activator ready")
            await poll(lambda: _is(s, f"http://127.0.0.1:{rport}/ready", 200), 30, "replica ready")
            assert await status(s, f"http://127.0.0.1:{admin}/metrics") == 200
            for path in ("/metrics", "/healthz", "/ready"):
                assert await status(s, f"http://127.0.0.1:{http}{path}") == 404, path

            async def call(host: str) -> tuple[int, str]:
                async with aiohttp.ClientSession() as own:  # a connection of its own
                    async with own.post(f"http://127.0.0.1:{http}/x", data=b"{}", headers={"Host": host},
                                        timeout=aiohttp.ClientTimeout(total=60)) as r:
                        return r.status, r.headers.get("Connection", "")

            slow = [asyncio.create_task(call("slow.ns.example.com")) for _ in range(16)]
            held = asyncio.create_task(call("cold.ns.example.com"))

            async def all_in() -> bool:
                async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
                    text = await r.text()
                return ('concurrency{service="ns/slow",side="default"} 16.0' in text
                        and 'concurrency{service="ns/cold",side="default"} 1.0' in text)

            await poll(all_in, 30, "16 requests in flight and 1 held at zero")
            act.send_signal(signal.SIGTERM)
            await poll(lambda: _is(s, f"http://127.0.0.1:{admin}/ready", 503), 5, "readiness to fail at once")
            late = asyncio.create_task(call("slow.ns.example.com"))  # a new connection while draining
            control.publish(full(route("ns/slow", ports=(rport,)), route("ns/cold", ports=(rport,)), version=2))
            results = await asyncio.gather(*slow, held, late)
            assert [r[0] for r in results] == [200] * 18
            assert all(r[1] == "close" for r in results)  # clients are told to go elsewhere
            assert await asyncio.wait_for(act.wait(), 30) == 0
        lines = [json.loads(line) for line in (tmp_path / "activator.log").read_text().splitlines()]
        requests = [ln for ln in lines if ln.get("msg") == "request" and ln["status"] != "404"]
        assert sum(ln.get("msg") == "request" and ln["status"] == "404" for ln in lines) == 3  # the admin paths
        assert len(requests) == 18 and {r["status"] for r in requests} == {"200"}
        assert {r["service"] for r in requests} == {"ns/slow", "ns/cold"}
        assert len({r["request_id"] for r in requests}) == 18
        assert any("draining" in ln.get("msg", "") for ln in lines)  # the process's own lines are JSON too
    finally:
        for p in (act, replica):
            if p.returncode is None:
                p.kill()
                await p.wait()


async def _is(s: aiohttp.ClientSession, url: str, want: int) -> bool:
    return await status(s, url) == want
