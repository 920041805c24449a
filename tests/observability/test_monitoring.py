"""Monitoring assets and a real Prometheus against the local stack: rules pass promtool, the
dashboard's queries name series the components export, and Prometheus scrapes real series."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse

import pytest
import yaml

from tests.helpers import ROOT, free_port, http, paddleservice, start_stack, wait_for, write_yaml

MON = ROOT / "deploy" / "monitoring"
RUNTIME = "python3 -m runtime --model lac --name lac --port $PORT"


def _require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        import os

        if os.environ.get("CI"):
            pytest.fail(f"{binary} is not installed (scripts/install-test-tools.sh installs it)")
        pytest.skip(f"{binary} not installed")
    return path


def test_rules_pass_promtool():
    promtool = _require("promtool")
    out = subprocess.run([promtool, "check", "rules", str(MON / "rules.yaml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_fires_and_stays_silent_in_promtool_unit_tests():
    """deploy/monitoring/rules_test.yaml proves each alert: promtool runs it, and every alert of
    rules.yaml has a case where it fires and one where it must not."""
    promtool = _require("promtool")
    out = subprocess.run([promtool, "test", "rules", "rules_test.yaml"], cwd=MON, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    alerts = {r["alert"] for g in yaml.safe_load((MON / "rules.yaml").read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    cases = [c for t in yaml.safe_load((MON / "rules_test.yaml").read_text())["tests"]
             for c in t.get("alert_rule_test", [])]
    fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
    silent = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert alerts and alerts == fires, f"alerts without a firing case: {alerts - fires}"
    assert alerts == silent, f"alerts without a silent case: {alerts - silent}"


def test_dashboard_panels_cover_the_issue():
    dash = json.loads((MON / "grafana-dashboard.json").read_text())
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for word in ("request rate", "p99", "replicas", "concurrency", "queue depth", "cold start"):
        assert word in titles, word
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    names = {m for e in exprs for m in re.findall(r"elasticserving_[a-z_]+", e)}
    assert {"elasticserving_activator_requests_total", "elasticserving_autoscaler_desired_replicas",
            "elasticserving_autoscaler_ready_replicas"} <= names


@pytest.mark.timeout(240)
def test_prometheus_scrapes_the_local_stack(tmp_path):
    _require("prometheus")
    port = free_port()
    f = write_yaml(tmp_path / "echo.yaml", paddleservice("echo", "mon", RUNTIME, minScale=1))
    s = start_stack(tmp_path, [f], extra=["--prometheus", "--prometheus-port", str(port)])
    try:
        wait_for(lambda: s.service("mon/echo")["status"]["replicas"] == 1, 60, 0.2, "replica ready")
        for _ in range(20):
            status, _, _ = s.request("echo.mon.example.com", "/lac/prediction",
                                     {"feed": [{"words": "我爱北京天安门"}], "fetch": ["word_seg"]})
            assert status == 200

        def query(q: str):
            status, _, data = http("GET", f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(q)}")
            if status != 200:
                return None
            return json.loads(data)["data"]["result"]

        def has(q: str):
            r = query(q)
            return r if r else None

        wait_for(lambda: has('up{job="elasticserving-runtime"} == 1'), 60, 0.5, "runtime target up")
        res = wait_for(lambda: has('elasticserving_activator_requests_total{service="mon/echo"}'), 60, 0.5,
                       "activator request series")
        assert sum(float(r["value"][1]) for r in res) >= 20
        res = wait_for(lambda: has('elasticserving_autoscaler_ready_replicas{service="mon/echo"}'), 60, 0.5,
                       "autoscaler series")
        assert float(res[0]["value"][1]) == 1.0
        status, _, data = http("GET", f"http://127.0.0.1:{port}/api/v1/rules")
        assert status == 200 and "ElasticServingStuckAtZero" in data.decode()
    finally:
        assert s.stop() == 0
