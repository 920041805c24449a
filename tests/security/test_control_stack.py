"""The attack on a running `elasticserving up`: any web page could POST a PaddleService as `text/plain`
(no CORS preflight) to the control API on 127.0.0.1 and have the stack run its `arg` as a shell command.
Refused now: no token (401), not JSON (415), a foreign Host (403); the command never runs."""

from __future__ import annotations

import json
import stat
import sys

import pytest

from tests.helpers import http, paddleservice, start_stack, wait_for, write_yaml

ECHO = f"{sys.executable} tests/fixtures/echo_replica.py"


@pytest.fixture
def stack(tmp_path):
    f = write_yaml(tmp_path / "none.yaml", paddleservice("placeholder", "default", ECHO, minScale=0))
    s = start_stack(tmp_path, [f])
    try:
        yield s
    finally:
        s.stop()


def _evil(tmp_path, name: str) -> tuple[dict, object]:
    marker = tmp_path / f"pwned-{name}"
    return paddleservice(name, "default", f"touch {marker}; exec {ECHO}", minScale=1), marker


@pytest.mark.timeout(180)
def test_cross_site_text_plain_post_neither_creates_nor_runs(stack, tmp_path):
    browser = {"Origin": "http://evil.example", "Referer": "http://evil.example/page.html"}
    attempts = []
    # 1. What a page can send without a preflight: text/plain, no credentials.
    manifest, marker1 = _evil(tmp_path, "evil-plain")
    attempts.append(http("POST", stack.control + "/v1/paddleservices", raw=json.dumps(manifest).encode(),
                         headers={**browser, "Content-Type": "text/plain"}))
    # 2. Same, with the name re-pointed at 127.0.0.1 (DNS rebinding): a foreign Host.
    manifest, marker2 = _evil(tmp_path, "evil-rebound")
    attempts.append(http("POST", stack.control + "/v1/paddleservices", raw=json.dumps(manifest).encode(),
                         headers={**browser, "Content-Type": "text/plain", "Host": "evil.example:80"}))
    # 3. Even holding the token, text/plain is refused, and a foreign Host too.
    manifest, marker3 = _evil(tmp_path, "evil-token-plain")
    attempts.append(stack.control_http("POST", "/v1/paddleservices", headers={"Content-Type": "text/plain"},
                                       body=manifest))
    manifest, marker4 = _evil(tmp_path, "evil-token-host")
    attempts.append(stack.control_http("POST", "/v1/paddleservices", body=manifest,
                                       headers={"Host": "evil.example"}))
    assert [a[0] for a in attempts] == [401, 403, 415, 403], [a[2] for a in attempts]
    for _, headers, _ in attempts:
        assert not any(h.lower().startswith("access-control-") for h in headers), headers
    # A legitimate apply of a minScale 1 service that leaves its own marker: once it ran, the attacker's
    # services would have run too had any been accepted.
    good = tmp_path / "ran-good"
    ok = paddleservice("good", "default", f"touch {good}; exec {ECHO}", minScale=1)
    assert stack.control_http("POST", "/v1/paddleservices", body=ok)[0] == 201
    wait_for(good.exists, 60, 0.1, "the legitimate service's command")
    names = {i["metadata"]["name"] for i in json.loads(stack.control_http("GET", "/v1/paddleservices")[2])["items"]}
    assert names == {"placeholder", "good"}
    assert not any(m.exists() for m in (marker1, marker2, marker3, marker4))


def test_token_file_is_0600_and_probes_stay_public(stack):
    assert stat.S_IMODE(stack.token_file.stat().st_mode) == 0o600
    assert http("GET", stack.control + "/healthz")[0] == 200
    assert http("GET", stack.control + "/metrics")[0] == 200
    assert http("GET", stack.control + "/v1/routes")[0] == 401
    assert http("GET", stack.control + "/v1/paddleservices")[0] == 401
    assert stack.control_http("GET", "/v1/paddleservices")[0] == 200


def test_cli_reads_the_token_file(stack, tmp_path):
    out = stack.cli("get")
    assert out.returncode == 0 and "placeholder" in out.stdout, out.stderr
    wrong = tmp_path / "wrong.token"
    wrong.write_text("nope\n")
    out = stack.cli("get", "--token-file", str(wrong))
    assert out.returncode == 1 and "token" in out.stderr


def test_token_file_removed_when_the_stack_stops(tmp_path):
    f = write_yaml(tmp_path / "none.yaml", paddleservice("placeholder", "default", ECHO, minScale=0))
    s = start_stack(tmp_path, [f])
    assert s.token_file.exists()
    assert s.stop() == 0
    assert not s.token_file.exists()
