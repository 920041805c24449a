"""Two activators in front of one autoscaler (HA): both route and both report, and the autoscaler
sums their load — 2 x 10 concurrent clients with target 10 give 2 replicas, not 1. And each enforces
its share of a replica's containerConcurrency: with cc 1, a replica never sees 2 requests at once."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading

import pytest

from tests.activator.harness import FakeControl, full, poll, route, start_activator, start_replica, status
from tests.helpers import ROOT, free_port, http, paddleservice, start_stack, wait_for, write_yaml

pytestmark = pytest.mark.timeout(180)


def test_two_activators_reports_are_summed(tmp_path):
    arg = f"python3 {ROOT}/tests/fixtures/echo_replica.py --delay 0.1"
    f = write_yaml(tmp_path / "ha.yaml", paddleservice("ha", "act", arg, minScale=1, target=10,
                                                        targetUtilization="100", window="6s"))
    s = start_stack(tmp_path, [f])
    port2, admin2 = free_port(), free_port()
    token_file = getattr(s, "token_file", None)  # a stack whose control API wants the bearer token
    token = ["--control-token-file", str(token_file)] if token_file else []
    second = subprocess.Popen([sys.executable, "-m", "activator", "--host", "127.0.0.1", "--http-port", str(port2),
                               "--grpc-port", "0", "--admin-host", "127.0.0.1", "--admin-port", str(admin2),
                               "--autoscaler", s.control, "--id", "second", *token], cwd=ROOT)
    stop = threading.Event()
    errors: list[int] = []
    try:
        def up() -> bool:
            try:
                return http("GET", f"http://127.0.0.1:{admin2}/ready", timeout=1)[0] == 200
            except OSError:
                return False

        wait_for(up, 30, 0.1, "second activator")
        wait_for(lambda: s.service("act/ha")["status"]["replicas"] == 1, 60, 0.2, "first replica")

        def client(base: str) -> None:
            while not stop.is_set():
                status, _, _ = http("POST", base + "/x", {}, {"Host": "ha.act.example.com"}, timeout=30)
                if status != 200:
                    errors.append(status)

        threads = [threading.Thread(target=client, args=(b,)) for b in (s.base, f"http://127.0.0.1:{port2}")
                   for _ in range(10)]
        for t in threads:
            t.start()
        wait_for(lambda: s.service("act/ha")["autoscaler"]["default"]["desired"] == 2, 60, 0.2,
                 "the summed load of both activators to ask for 2 replicas")
        # one activator alone carries ~10; the autoscaler must see both (~20)
        wait_for(lambda: s.service("act/ha")["autoscaler"]["default"]["stable_concurrency"] > 15, 30, 0.2,
                 "stable concurrency to reflect both activators")
        stop.set()
        for t in threads:
            t.join(30)
        assert errors == []
    finally:
        stop.set()
        second.terminate()
        second.wait(10)
        assert s.stop() == 0


async def test_two_activators_share_container_concurrency_one(tmp_path):
    """Two real activators told by the routes that they are 2, cc 1: with one replica neither may use it
    (their requests are held and reported as load); with two, each uses its own, and no replica ever
    has 2 requests in flight."""
    control = FakeControl()
    await control.start()
    r1, p1 = await start_replica("--delay", "0.05", name="one")
    r2, p2 = await start_replica("--delay", "0.05", name="two")
    control.publish(full(route("ns/cc1", ports=(p1,), cc=1), version=1, activators=2))
    a0, h0, admin0 = await start_activator(control, "--id", "a0", "--activator-index", "0")
    a1, h1, admin1 = await start_activator(control, "--id", "a1", "--activator-index", "1")
    procs = [a0, a1, r1, r2]
    try:
        import aiohttp

        async with aiohttp.ClientSession() as s:
            for admin in (admin0, admin1):
                await poll(lambda a=admin: _ready(s, f"http://127.0.0.1:{a}/ready"), 30, "activator ready")
            for p in (p1, p2):
                await poll(lambda p=p: _ready(s, f"http://127.0.0.1:{p}/ready"), 30, "replica ready")

            async def call(port: int) -> dict:
                async with s.post(f"http://127.0.0.1:{port}/x", data=b"{}", headers={"Host": "cc1.ns.example.com"},
                                  timeout=aiohttp.ClientTimeout(total=60)) as r:
                    assert r.status == 200, await r.text()
                    return json.loads(await r.read())

            # one replica, two activators, cc 1: floor(1 / 2) = 0 slots each -> held, reported as load
            held = [asyncio.create_task(call(port)) for port in (h0, h1)]
            await poll(lambda: _held_reported(control), 30, "held requests reported by both activators")
            assert not any(t.done() for t in held)
            control.publish(full(route("ns/cc1", ports=(p1, p2), cc=1), version=2, activators=2))
            bodies = list(await asyncio.gather(*held))
            bodies += await asyncio.gather(*(call(port) for _ in range(20) for port in (h0, h1)))  # 40 at once
        assert max(b["max_inflight"] for b in bodies) == 1  # 42 requests, 16 at a time, never 2 on a replica
        assert {b["replica"] for b in bodies} == {"one", "two"}
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
        await control.close()


async def _ready(s, url: str) -> bool:
    return await status(s, url) == 200


async def _held_reported(control: FakeControl) -> bool:
    seen = {r.activator for r in control.stats for st in r.stats if st.service == "ns/cc1" and st.concurrency >= 1}
    return seen == {"a0", "a1"}
