"""Monitoring on the real node: Prometheus scrapes the control plane and the replica Pods through
deploy/monitoring/prometheus.yaml (kubernetes service discovery of annotated Pods), its rules load,
and every query of the Grafana dashboard returns series after traffic, a cold start, a canary split
and a 5xx (a side whose Pod crash-loops: its held request is refused at once with the Pod's reason).

Prometheus runs on the node itself, not in a Pod (scripts/build-prometheus.sh builds it with kubernetes
discovery, which Debian's package lacks): outside
a Pod there is no in-cluster config, so the one change to deploy/monitoring/prometheus.yaml is the
admin kubeconfig for discovery (`kubeconfig_file`), plus a 1 s scrape interval for a short test.
The host reaches every Pod IP over cni0, as an in-cluster Prometheus would.
"""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.cluster.node import LAC_ANSWER, ROOT, Load, Node, fresh_service, host_of, lac_service
from tests.helpers import free_port, wait_for
from tests.observability.test_dashboard_live import dashboard_queries

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

MONITORING = ROOT / "deploy" / "monitoring"
NS = "es-monitoring"


def prometheus_config(kubeconfig: Path) -> dict:
    """deploy/monitoring/prometheus.yaml as a Prometheus on the node runs it."""
    cfg = yaml.safe_load((MONITORING / "prometheus.yaml").read_text())
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
    cfg["rule_files"] = [str(MONITORING / "rules.yaml")]
    for job in cfg["scrape_configs"]:
        for sd in job.get("kubernetes_sd_configs", []):
            sd["kubeconfig_file"] = str(kubeconfig)
    return cfg


class Prometheus:
    def __init__(self, base: str):
        self.base = base

    def get(self, path: str) -> dict | None:
        try:
            with urllib.request.urlopen(self.base + path, timeout=10) as r:
                return json.loads(r.read())["data"]
        except OSError:
            return None

    def series(self, query: str) -> list:
        data = self.get("/api/v1/query?query=" + urllib.parse.quote(query))
        return (data or {}).get("result") or []

    def up_targets(self) -> dict[str, int]:
        """Healthy targets per component label."""
        out: dict[str, int] = {}
        for t in (self.get("/api/v1/targets?state=active") or {}).get("activeTargets", []):
            if t.get("health") == "up":
                comp = t["labels"].get("component", "?")
                out[comp] = out.get(comp, 0) + 1
        return out


@pytest.fixture(scope="module")
def prometheus(stack: Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    p = subprocess.run([str(ROOT / "scripts/build-prometheus.sh")], capture_output=True, text=True, timeout=1200)
    if p.returncode != 0:
        pytest.fail(f"scripts/build-prometheus.sh failed: {p.stderr[-2000:]}")
    binary = p.stdout.strip().splitlines()[-1]
    tmp = tmp_path_factory.mktemp("prometheus")
    (tmp / "prometheus.yaml").write_text(yaml.safe_dump(prometheus_config(stack.kubeconfig)))
    port = free_port()
    log = open(tmp / "prometheus.log", "w")
    p = subprocess.Popen([binary, f"--config.file={tmp / 'prometheus.yaml'}", f"--storage.tsdb.path={tmp / 'data'}",
                          f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    prom = Prometheus(f"http://127.0.0.1:{port}")
    try:
        wait_for(lambda: p.poll() is not None or prom.get("/api/v1/status/runtimeinfo"), 60, 0.5,
                 "Prometheus to answer")
        assert p.poll() is None, (tmp / "prometheus.log").read_text()[-2000:]
        yield prom
    finally:
        p.terminate()
        p.wait(30)
        log.close()


def test_discovery_finds_the_control_plane_pods(prometheus: Prometheus) -> None:
    # deploy/: 2 activators and 2 controllers, each annotated prometheus.io/scrape
    wait_for(lambda: (t := prometheus.up_targets()).get("activator", 0) >= 2 and t.get("autoscaler", 0) >= 2
             and t, 90, 1.0, "both activators and both controllers scraped (up)")
    rules = prometheus.get("/api/v1/rules") or {}
    names = {r["name"] for g in rules.get("groups", []) for r in g.get("rules", [])}
    want = {r["alert"] for g in yaml.safe_load((MONITORING / "rules.yaml").read_text())["groups"]
            for r in g["rules"] if "alert" in r}
    assert want and want <= names, (want, names)


def test_crash_looping_side_refuses_held_requests_with_the_reason(stack: Node) -> None:
    manifest = lac_service(NS, "broken").replace(
        "arg: python3 -m runtime --model lac --name lac --port $PORT", "arg: exit 3")
    fresh_service(stack, NS, "broken", manifest)
    wait_for(lambda: stack.deployment_replicas(NS, "broken") == 0, 60, 0.5, "the broken service's Deployment")
    a = wait_for(lambda: (r := stack.lac(host_of(NS, "broken"), timeout=120)).status != 404 and r, 60, 0.2,
                 "the route of the broken service")
    assert a.status == 503, (a.status, a.body[:300])
    assert "exit code 3" in a.json()["error"], a.body
    # Refused when the Pod failed, long before the activator's 60 s request timeout.
    assert a.seconds < 45, a.seconds
    cond = wait_for(lambda: next((c for c in stack.psvc(NS, "broken")["status"].get("conditions", [])
                                  if c["type"] == "Ready" and c["status"] == "False"
                                  and "exit code 3" in (c.get("message") or "")), None),
                    60, 0.5, "a Ready=False condition naming the exit code")
    assert cond["reason"], cond


def test_every_dashboard_query_returns_series(stack: Node, prometheus: Prometheus) -> None:
    fresh_service(stack, NS, "split", lac_service(NS, "split", canary_percent=50))
    host = host_of(NS, "split")
    # A cold start from zero on both sides, then the split under 4 clients.
    a = wait_for(lambda: (r := stack.lac(host, timeout=300)).status != 404 and r, 60, 0.2, "the split route")
    assert a.status == 200 and a.json() == LAC_ANSWER, a.body[:300]
    with Load(stack, host, clients=4) as load:
        wait_for(lambda: {s for code, s in load.results[:] if code == 200} >= {"default", "canary"}, 120, 0.5,
                 "answers from both sides")
        # The 5xx comes from the crash-looping service (test above); keep one fresh within 5m windows.
        assert stack.lac(host_of(NS, "broken"), timeout=120).status == 503
        missing = []
        for title, q in dashboard_queries():
            try:
                wait_for(lambda q=q: prometheus.series(q), 90, 1.0, f"series for panel {title!r}")
            except AssertionError:
                missing.append((title, q))
        assert not missing, missing
        # the default and the canary Pod are scraped
        wait_for(lambda: len(prometheus.series(f'up{{component="replica", namespace="{NS}"}} == 1')) >= 2,
                 60, 1.0, "both replica Pods of the split scraped")
    assert not load.failures(), load.failures()[:5]


def test_cleanup(stack: Node) -> None:
    stack.kubectl("delete", "namespace", NS, "--wait=false")
