"""The in-cluster controller under failure: watch expiry (410), API server restart, leader failover.

Runs against the session's real etcd + kube-apiserver; the API server is restarted in place and
etcd is compacted so that resuming an old watch must fail with 410 Gone and force a relist.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import time
import urllib.request

import pytest
import yaml

from autoscaler.kube.client import Informer, Kube, resource_path
from tests.kubernetes.cluster import Cluster, ControllerProc, condition, wait_for

pytestmark = pytest.mark.kubernetes
NS = "es-rel"


def _etcd(cluster: Cluster, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{cluster.etcd_port}{path}", method="POST",
                                 data=json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def compact_etcd(cluster: Cluster) -> int:
    """Compact etcd at its current revision: older resourceVersions can no longer be watched."""
    rev = int(_etcd(cluster, "/v3/kv/range", {"key": base64.b64encode(b"/").decode()})["header"]["revision"])
    _etcd(cluster, "/v3/kv/compaction", {"revision": rev, "physical": True})
    return rev


def psvc(name: str, ns: str = NS, min_scale: int = 1) -> str:
    return yaml.safe_dump({
        "apiVersion": "elasticserving.paddlepaddle.org/v1", "kind": "PaddleService",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"default": {"containerImage": "elasticserving/runtime", "tag": "v1", "port": 8000},
                 "service": {"minScale": min_scale}}})


@pytest.fixture(scope="module")
def ns(installed: Cluster) -> str:
    installed.apply_yaml(f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NS}\n")
    return NS


async def test_informer_relists_after_watch_expiry(installed: Cluster, ns: str) -> None:
    kube = await Kube.connect(str(installed.kubeconfig))
    events: list[tuple[str, str]] = []
    informer = Informer(kube, resource_path("v1", "configmaps", ns),
                        lambda kind, obj, old: events.append((kind, obj["metadata"]["name"])),
                        name="configmaps", resync_seconds=0)
    try:
        installed.kubectl("create", "configmap", "before", "-n", ns)
        await informer.relist()
        assert ("ADDED", "before") in events
        stale = informer.resource_version
        # While "disconnected": one object appears, one disappears, history is compacted and the
        # API server's watch cache restarts, so resuming from `stale` is impossible.
        installed.kubectl("create", "configmap", "during", "-n", ns)
        installed.kubectl("delete", "configmap", "before", "-n", ns)
        compact_etcd(installed)
        await asyncio.to_thread(installed.restart_apiserver)
        informer.resource_version = stale
        informer.start()
        deadline = time.monotonic() + 20
        while informer.expirations == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert informer.expirations >= 1, "the stale watch was not answered with 410 Gone"
        while informer.lists < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert informer.lists == 2
        assert ("ADDED", "during") in events and ("DELETED", "before") in events
        assert f"{ns}/during" in informer.store and f"{ns}/before" not in informer.store
        # And the resumed watch delivers new events.
        installed.kubectl("create", "configmap", "after", "-n", ns)
        while ("ADDED", "after") not in events and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert ("ADDED", "after") in events
    finally:
        await informer.stop()
        await kube.close()


def test_controller_survives_apiserver_restarts_and_watch_expiry(installed: Cluster, ns: str) -> None:
    ctl = ControllerProc(installed, "ctl-restart",
                         extra=["--lease-duration", "15", "--renew-deadline", "10", "--retry-period", "1",
                                "--lease-name", "restart-test"]).start()
    try:
        wait_for(ctl.is_ready, 30, what="controller ready")
        installed.apply_yaml(psvc("before-restart"))
        wait_for(lambda: installed.get_json("deployment", "before-restart-default", "-n", ns), 20,
                 what="deployment before the restart")

        # 1. A crash of the API server shorter than the renew deadline: the leader keeps leading,
        # its watches resume from their resourceVersions, which compaction made too old: 410, relist.
        compact_etcd(installed)
        outage = installed.restart_apiserver(graceful=False)
        assert outage < 10, f"API server outage {outage:.1f}s longer than the renew deadline"
        installed.apply_yaml(psvc("after-crash", min_scale=2))
        wait_for(lambda: (d := installed.get_json("deployment", "after-crash-default", "-n", ns))
                 and d["spec"]["replicas"] == 2, 30, what="deployment created after the crash")
        assert "watch expired (410" in ctl.log(), ctl.log()[-3000:]
        assert "lost leadership" not in ctl.log()

        # 2. A graceful restart: kube-apiserver drains for ~10 s, past the renew deadline. The leader
        # steps down (stops writing), stays alive as a candidate and leads again with fresh caches.
        installed.restart_apiserver(graceful=True)
        assert ctl.alive(), ctl.log()[-3000:]
        wait_for(ctl.is_ready, 30, what="controller leading again")

        # Changes after the restarts are seen: created, updated and deleted PaddleServices.
        installed.apply_yaml(psvc("after-restart", min_scale=2))
        wait_for(lambda: (d := installed.get_json("deployment", "after-restart-default", "-n", ns))
                 and d["spec"]["replicas"] == 2, 30, what="deployment created after the restart")
        installed.apply_yaml(psvc("before-restart", min_scale=3))
        wait_for(lambda: installed.get_json("deployment", "before-restart-default", "-n", ns)["spec"]["replicas"] == 3,
                 20, what="update seen after the restart")
        installed.kubectl("delete", "psvc", "before-restart", "-n", ns, "--timeout=30s")
        assert installed.get_json("deployment", "before-restart-default", "-n", ns) is None
        obj = wait_for(lambda: (o := installed.get_json("psvc", "after-restart", "-n", ns))
                       and condition(o, "Ready") and o, 20, what="status after the restart")
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
        assert ctl.alive() and ctl.is_ready()
        for name in ("after-restart", "after-crash"):
            installed.kubectl("delete", "psvc", name, "-n", ns, "--timeout=30s")
    finally:
        code = ctl.stop()
        print(ctl.log()[-3000:])
    assert code == 0


def test_leader_election_two_replicas(installed: Cluster, ns: str) -> None:
    lease = ["--lease-name", "failover-test"]
    a = ControllerProc(installed, "replica-a", extra=lease).start()
    b = ControllerProc(installed, "replica-b", extra=lease).start()
    try:
        leader = wait_for(lambda: (a.is_ready() and a) or (b.is_ready() and b), 30, what="a leader")
        standby = b if leader is a else a
        status, body = wait_for(lambda: (r := standby.get("/ready"))[0] != 0 and r, 20,
                                what="standby serving its control API")
        assert status == 503 and body["reason"] == "not the leader"
        holder = installed.get_json("lease", "failover-test", "-n", "elasticserving-system")
        assert holder["spec"]["holderIdentity"] == leader.identity

        installed.apply_yaml(psvc("led"))
        # The route is published after the reconcile's last API call (the Deployment, then its scale),
        # so it can trail the Deployment's appearance by a moment on a busy machine.
        wait_for(lambda: installed.get_json("deployment", "led-default", "-n", ns), 20,
                 what="the leader reconciles")
        wait_for(lambda: leader.route(f"{ns}/led") is not None, 10, what="the leader routes it")
        assert standby.route(f"{ns}/led") is None  # the standby does nothing

        # The leader dies without releasing the lease: the standby takes over once it expires.
        leader.kill()
        wait_for(standby.is_ready, 20, what="standby takes over")
        holder = installed.get_json("lease", "failover-test", "-n", "elasticserving-system")
        assert holder["spec"]["holderIdentity"] == standby.identity
        assert holder["spec"]["leaseTransitions"] >= 1
        installed.apply_yaml(psvc("led-after"))
        wait_for(lambda: installed.get_json("deployment", "led-after-default", "-n", ns), 20,
                 what="the new leader reconciles")
        wait_for(lambda: standby.route(f"{ns}/led") is not None, 10, what="new leader routes old services")

        # A leader stopped gracefully releases the lease at once for the next replica.
        restarted = ControllerProc(installed, "replica-c", extra=lease).start()
        try:
            wait_for(lambda: restarted.get("/ready")[0] == 503, 20, what="replica-c standing by")
            assert standby.proc is not None
            standby.proc.send_signal(signal.SIGTERM)
            assert standby.proc.wait(20) == 0
            t0 = time.monotonic()
            wait_for(restarted.is_ready, 10, what="replica-c leads after a release")
            assert time.monotonic() - t0 < 3.0  # well under the 3 s lease duration + retry
            # Its first table already routes what exists: activators take a new leader's table whole
            # and would fail requests held for a service missing from it.
            assert restarted.route(f"{ns}/led") is not None and restarted.route(f"{ns}/led-after") is not None
            for name in ("led", "led-after"):
                installed.kubectl("delete", "psvc", name, "-n", ns, "--timeout=30s")
        finally:
            restarted.stop()
    finally:
        for c in (a, b):
            c.stop()
