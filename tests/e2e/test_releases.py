"""Releases end to end on the local platform: `elasticserving up` with echo replicas on loopback.

Tag routes reach only their side (a 0 % canary too, woken from zero by its tag); a raised canary share
and a new default version move over gradually (1 % first, then equal steps), seen in status over time
while clients keep sending; a canary that never turns ready keeps all traffic on default, its tag
route answers 503 with the reason, status says why and promoting it is refused; a rollout duration that
is not one is refused with the API server's words."""

from __future__ import annotations

import json
import threading
import time

import pytest

from autoscaler.spec import ROLLOUT_DURATION_PATTERN
from tests.helpers import ROOT, paddleservice, start_stack, wait_for, write_yaml

ECHO = f"python3 {ROOT}/tests/fixtures/echo_replica.py"
NS = "rel"
pytestmark = pytest.mark.timeout(300)


def service(name: str, *, canary: str | None = None, percent: int | None = None, duration: str | None = None,
            default: str = ECHO, min_scale: int = 0) -> dict:
    svc = paddleservice(name, NS, default, minScale=min_scale)
    if canary is not None:
        svc["spec"]["canary"] = {"arg": canary, "containerImage": "elasticserving/echo", "tag": "v2", "port": 9292}
    if percent is not None:
        svc["spec"]["canaryTrafficPercent"] = percent
    if duration is not None:
        svc["spec"]["rolloutDuration"] = duration
    return svc


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("releases")
    s = start_stack(tmp, [write_yaml(tmp / "rel.yaml", service("tagged", canary=ECHO, percent=0))],
                    config={"scale-to-zero-grace-period": "2s"},
                    extra=["--request-timeout", "20", "--replica-ready-timeout", "4", "--tick-seconds", "0.5"])
    yield s
    assert s.stop() == 0, "\n".join(s.output[-30:])


def apply(stack, tmp_path, svc: dict) -> None:
    out = stack.cli("apply", "-f", str(write_yaml(tmp_path / f"{svc['metadata']['name']}.yaml", svc)))
    assert out.returncode == 0, out.stderr


def status(stack, name: str) -> dict:
    return stack.service(f"{NS}/{name}")["status"]


def released(st: dict) -> dict:
    return next(c for c in st["conditions"] if c["type"] == "Released")


class Load:
    """Clients sending one request after another to a host until stopped; every answer is kept."""

    def __init__(self, stack, host: str, clients: int = 2) -> None:
        self.stack, self.host = stack, host
        self.results: list[tuple[int, str]] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        while not self.stopping.is_set():
            code, headers, _ = self.stack.request(self.host, "/x", {}, timeout=30)
            self.results.append((code, headers.get("x-paddleservice-side", "")))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(40)

    def sides(self) -> set[str]:
        return {side for _, side in self.results}

    def failed(self) -> list[tuple[int, str]]:
        return [r for r in self.results if r[0] != 200]


def watch(stack, name: str, side: str, until: int, timeout: float = 30.0) -> list[tuple[float, int | None]]:
    """The distinct shares of `side` in status, with when they were seen, until it reaches `until`."""
    seen: list[tuple[float, int | None]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pct = (status(stack, name).get(side) or {}).get("percent")
        if not seen or seen[-1][1] != pct:
            seen.append((time.monotonic(), pct))
        if pct == until:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"{side} never reached {until}%: {seen}")


def test_tag_routes_reach_one_side_and_wake_a_zero_percent_canary(stack):
    item = stack.service(f"{NS}/tagged")
    assert item["autoscaler"]["canary"]["desired"] == 0  # a 0 % canary is not started for its own sake
    assert item["status"]["canary"]["url"] == "http://canary-tagged.rel.example.com"
    code, headers, body = stack.request("canary-tagged.rel.example.com", "/x", {}, timeout=30)
    assert code == 200 and headers["x-paddleservice-side"] == "canary" and json.loads(body)["side"] == "canary"
    assert stack.service(f"{NS}/tagged")["autoscaler"]["canary"]["ready"] == 1  # scaled from zero for it
    for host, want in (("default-tagged.rel.example.com", {"default"}), ("tagged.rel.example.com", {"default"}),
                       ("canary-tagged.rel.example.com", {"canary"})):
        got = {stack.request(host, "/x", {}, timeout=30)[1]["x-paddleservice-side"] for _ in range(10)}
        assert got == want, host
    out = stack.cli("get", "tagged", "-n", NS, "-o", "wide")
    assert out.returncode == 0, out.stderr
    for needle in ("default 100%, canary 0%", "http://canary-tagged.rel.example.com",
                   "http://default-tagged.rel.example.com", "canary=elasticserving/echo:v2#", "AtTarget since"):
        assert needle in out.stdout, (needle, out.stdout)


def test_a_raised_canary_share_steps_1_percent_then_equal_steps_under_load(stack, tmp_path):
    apply(stack, tmp_path, service("ramp", canary=ECHO, percent=0, duration="4s", min_scale=1))
    wait_for(lambda: status(stack, "ramp")["canary"]["ready"], 30, 0.1, "the canary proven")
    with Load(stack, "ramp.rel.example.com") as load:
        apply(stack, tmp_path, service("ramp", canary=ECHO, percent=100, duration="4s", min_scale=1))
        seen = watch(stack, "ramp", "canary", 100)
        st = status(stack, "ramp")
    assert [pct for _, pct in seen][-4:] == [1, 34, 67, 100], seen
    assert [pct for _, pct in seen][:-4] in ([], [0]), seen
    took = seen[-1][0] - seen[-4][0]
    assert 3.0 <= took <= 6.0, seen  # 4 s: the 1 % holds 2 s, then a step each second
    assert released(st)["reason"] == "AtTarget" and st["default"]["percent"] == 0
    assert load.failed() == [] and load.sides() == {"default", "canary"}, load.results[-20:]


def test_a_new_default_version_keeps_the_old_one_serving_while_traffic_moves(stack, tmp_path):
    apply(stack, tmp_path, service("upgrade", duration="4s", min_scale=1))
    wait_for(lambda: status(stack, "upgrade")["default"]["readyReplicas"] == 1, 30, 0.1, "v1 ready")
    old_revision = status(stack, "upgrade")["default"]["revision"]
    with Load(stack, "upgrade.rel.example.com") as load:
        apply(stack, tmp_path, service("upgrade", duration="4s", min_scale=1, default=ECHO + " --delay 0.01"))
        st = status(stack, "upgrade")
        assert st["previous"]["revision"] == old_revision and st["default"]["revision"] != old_revision
        seen = watch(stack, "upgrade", "default", 100)
        wait_for(lambda: "previous" not in status(stack, "upgrade"), 10, 0.1, "the old version dropped")
    assert [pct for _, pct in seen][-4:] == [1, 34, 67, 100], seen
    assert load.failed() == [] and load.sides() == {"default", "previous"}, load.results[-20:]
    item = stack.service(f"{NS}/upgrade")
    assert set(item["autoscaler"]) == {"default"}


@pytest.mark.parametrize(("name", "canary", "why"), [
    ("broken", "echo 'model file is corrupt' >&2; exit 3", "exit code 3"),
    ("hangs", ECHO + " --ready-after 1000", "not ready after 4s"),
])
def test_a_canary_that_never_turns_ready_keeps_all_traffic_on_default(stack, tmp_path, name, canary, why):
    apply(stack, tmp_path, service(name, min_scale=1))
    wait_for(lambda: status(stack, name)["default"]["readyReplicas"] == 1, 30, 0.1, "default ready")
    with Load(stack, f"{name}.rel.example.com") as load:
        apply(stack, tmp_path, service(name, canary=canary, percent=50, min_scale=1))
        cond = wait_for(lambda: (c := released(status(stack, name)))["reason"] == "CanaryNotReady"
                        and why in c["message"] and c, 30, 0.1, "status saying why")
        code, _, body = stack.request(f"canary-{name}.rel.example.com", "/x", {}, timeout=30)
    assert "its 50% stays on default" in cond["message"]
    assert code == 503 and why in json.loads(body)["error"]
    assert load.failed() == [] and load.sides() == {"default"} and len(load.results) > 5
    st = status(stack, name)
    assert (st["default"]["percent"], st["canary"]["percent"], st["canary"]["ready"]) == (100, 0, False)
    out = stack.cli("promote", name, "-n", NS)
    assert out.returncode == 1 and "refusing to promote" in out.stderr and why in out.stderr, out.stderr
    assert status(stack, name)["default"]["image"] == "elasticserving/runtime-lac:latest"  # unchanged


def test_promote_a_ready_canary(stack, tmp_path):
    apply(stack, tmp_path, service("promo", canary=ECHO + " --delay 0.01", percent=30, min_scale=1))
    wait_for(lambda: status(stack, "promo")["canary"]["percent"] == 30, 30, 0.1, "canary at 30 %")
    canary_revision = status(stack, "promo")["canary"]["revision"]
    out = stack.cli("promote", "promo", "-n", NS)
    assert out.returncode == 0, out.stderr
    st = wait_for(lambda: (s := status(stack, "promo"))["default"]["percent"] == 100 and "previous" not in s
                  and s, 15, 0.1, "the promoted canary at 100 %")
    assert st["default"]["revision"] == canary_revision and "canary" not in st


def test_a_rollout_duration_that_is_not_one_is_refused_in_the_api_servers_words(stack, tmp_path):
    want = (f'spec.rolloutDuration: Invalid value: "soon": spec.rolloutDuration in body should match '
            f"'{ROLLOUT_DURATION_PATTERN}'")
    bad = service("typo", duration="soon")
    out = stack.cli("apply", "-f", str(write_yaml(tmp_path / "typo.yaml", bad)))
    assert out.returncode == 2 and want in out.stderr, out.stderr
    code, _, body = stack.control_http("POST", "/v1/paddleservices", bad)
    assert code == 400 and json.loads(body) == {"error": want, "field": "spec.rolloutDuration"}
