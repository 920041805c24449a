"""Every query of deploy/monitoring/grafana-dashboard.json returns series on a real Prometheus that
scrapes a live local stack driven through traffic, a cold start, a canary split and a 5xx.

A renamed metric or label blanks a panel silently in Grafana; here it fails the suite."""

from __future__ import annotations

import json
import shutil
import urllib.parse

import pytest

from tests.helpers import ROOT, free_port, http, paddleservice, start_stack, wait_for, write_yaml

DASHBOARD = ROOT / "deploy" / "monitoring" / "grafana-dashboard.json"
LAC = "python3 -m runtime --model lac --name lac --port $PORT"
FEED = {"feed": [{"words": "我爱北京天安门"}], "fetch": ["word_seg"]}


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target, with Grafana's template variables substituted as the
    dashboard's defaults select them (`$service` = All = `.*`)."""
    dash = json.loads(DASHBOARD.read_text())
    values = {}
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            values[var["name"]] = var.get("allValue") or ".*"
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in values.items():
                expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
            assert "$" not in expr.replace("$__", ""), f"unsubstituted variable in {panel['title']}: {expr}"
            out.append((panel["title"], expr))
    return out


def test_dashboard_queries_are_parsed_from_the_json():
    queries = dashboard_queries()
    assert len(queries) >= 15
    assert any('service=~".*"' in q for _, q in queries)  # `$service` became the All selection


@pytest.mark.timeout(420)
def test_every_dashboard_query_returns_series_on_a_live_stack(tmp_path):
    if shutil.which("prometheus") is None:
        import os

        if os.environ.get("CI"):
            pytest.fail("prometheus is not installed (scripts/install-test-tools.sh installs it)")
        pytest.skip("prometheus not installed")
    prom = free_port()
    canary = paddleservice("split", "mon", LAC, minScale=0, window="10s")
    canary["spec"]["canary"] = dict(canary["spec"]["default"])
    canary["spec"]["canaryTrafficPercent"] = 50
    broken = paddleservice("broken", "mon", "exit 3", minScale=0, window="10s")
    files = [write_yaml(tmp_path / "split.yaml", canary), write_yaml(tmp_path / "broken.yaml", broken)]
    s = start_stack(tmp_path, files, extra=["--prometheus", "--prometheus-port", str(prom)])
    try:
        # The new canary proves itself with one replica before it takes its share (Knative's initial
        # scale); then a cold start from zero of the default side, and a canary split over 40 requests.
        wait_for(lambda: s.service("mon/split")["status"]["canary"]["percent"] == 50, 120, 0.2,
                 "the canary in the split")
        sides = set()
        for _ in range(40):
            status, headers, data = s.request("split.mon.example.com", "/lac/prediction", FEED)
            assert status == 200, data
            sides.add(headers.get("x-paddleservice-side"))
        assert sides == {"default", "canary"}
        # A 5xx: the broken service's replica exits at once, so its held request is refused.
        status, _, data = s.request("broken.mon.example.com", "/lac/prediction", FEED, timeout=90)
        assert 500 <= status < 600, (status, data)

        def series(q: str):
            status, _, data = http("GET", f"http://127.0.0.1:{prom}/api/v1/query?query={urllib.parse.quote(q)}")
            return json.loads(data)["data"]["result"] if status == 200 else None

        # rate() over the panels' windows needs two scrapes after the traffic: wait for each query,
        # then keep the traffic flowing so every window holds samples.
        for title, q in dashboard_queries():
            wait_for(lambda q=q: series(q) or s.request("split.mon.example.com", "/lac/prediction", FEED)
                     and None, 90, 1.0, f"series for panel {title!r}: {q}")
    finally:
        assert s.stop() == 0
