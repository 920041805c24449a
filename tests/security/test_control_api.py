"""The control API's guards, through aiohttp's test client: bearer token on /v1/*, JSON-only bodies,
Host allow-list (DNS rebinding), no CORS, public probes; and the token file `up` writes."""

from __future__ import annotations

import os
import stat

import pytest
from aiohttp.test_utils import TestClient, TestServer

from autoscaler.control_api import LOOPBACK_HOSTS, build_app, host_name
from autoscaler.controller import Controller
from autoscaler.local.token import (
    default_token_path,
    read_token,
    remove_token,
    token_path_for_server,
    write_token,
)
from tests.fakes import FakePlatform
from tests.helpers import paddleservice

TOKEN = "s3cret-token"
JSON = {"Content-Type": "application/json"}
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MANIFEST = paddleservice("evil", "default", "touch /tmp/pwned", minScale=1)


@pytest.fixture
async def client():
    c = Controller(FakePlatform())
    client = TestClient(TestServer(build_app(c, token=TOKEN, allowed_hosts=[*LOOPBACK_HOSTS, "es.internal"])))
    await client.start_server()
    client.controller = c  # type: ignore[attr-defined]
    try:
        yield client
    finally:
        await client.close()


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/routes"), ("POST", "/v1/stats"), ("POST", "/v1/poke"), ("GET", "/v1/paddleservices"),
    ("POST", "/v1/paddleservices"), ("DELETE", "/v1/paddleservices/default/x"),
    ("GET", "/v1/prometheus/targets"), ("GET", "/v1/nothing-here"), ("GET", "/v1/paddleservices/default/x/logs"),
])
@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Bearer {TOKEN}x", TOKEN, f"Basic {TOKEN}"])
async def test_v1_without_the_right_token_is_401(client, method, path, authorization):
    headers = {**JSON, **({"Authorization": authorization} if authorization else {})}
    resp = await client.request(method, path, json={}, headers=headers)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert "token" in (await resp.json())["error"]


async def test_the_right_token_passes(client):
    resp = await client.post("/v1/paddleservices", json=MANIFEST, headers=AUTH)
    assert resp.status == 201, await resp.text()
    assert (await client.get("/v1/paddleservices", headers=AUTH)).status == 200


@pytest.mark.parametrize("path", ["/healthz", "/ready", "/metrics"])
async def test_probes_and_metrics_are_public(client, path):
    assert (await client.get(path)).status == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", ""])
async def test_json_endpoints_refuse_other_content_types(client, content_type):
    import json

    headers = {**AUTH, **({"Content-Type": content_type} if content_type else {})}
    resp = await client.post("/v1/paddleservices", data=json.dumps(MANIFEST), headers=headers)
    assert resp.status == 415
    assert "application/json" in (await resp.json())["error"]
    assert client.controller.services == {}  # type: ignore[attr-defined]


@pytest.mark.parametrize(("host", "status"), [
    ("127.0.0.1:8090", 200), ("localhost", 200), ("LOCALHOST:1", 200), ("[::1]:8090", 200),
    ("es.internal:8090", 200), ("evil.example", 403), ("evil.example:8090", 403), ("127.0.0.1.evil.example", 403),
    ("[::2]:8090", 403),
])
async def test_unexpected_host_is_refused(client, host, status):
    resp = await client.get("/healthz", headers={"Host": host})
    assert resp.status == status
    resp = await client.get("/v1/paddleservices", headers={**AUTH, "Host": host})
    assert resp.status == status
    if status == 403:
        assert "Host" in (await resp.json())["error"]


@pytest.mark.parametrize(("header", "name"), [
    ("127.0.0.1:8090", "127.0.0.1"), ("[::1]:80", "[::1]"), ("[::1]", "[::1]"), ("Example.COM", "example.com"),
    ("::1", "::1"),
])
def test_host_name(header, name):
    assert host_name(header) == name


async def test_no_cors_headers_even_for_a_preflight(client):
    origin = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    for resp in (await client.options("/v1/paddleservices", headers=origin),
                 await client.post("/v1/paddleservices", json=MANIFEST, headers={**AUTH, **origin})):
        assert not any(h.lower().startswith("access-control-") for h in resp.headers)


def test_token_file_is_private_and_replaced_atomically(tmp_path):
    path = tmp_path / "run" / "control-1.token"
    write_token(path, "first")
    assert read_token(path) == "first"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    write_token(path, "second")
    assert read_token(path) == "second" and os.listdir(path.parent) == [path.name]
    remove_token(path, "first")  # not ours any more: kept
    assert path.exists()
    remove_token(path, "second")
    assert not path.exists() and read_token(path) is None


def test_token_file_never_follows_a_planted_link(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    path = tmp_path / "control-2.token"
    path.symlink_to(target)
    write_token(path, "tok")  # replaces the link itself
    assert target.read_text() == "keep" and not path.is_symlink() and read_token(path) == "tok"


def test_default_token_path_per_port(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_token_path(8090) == tmp_path / "elasticserving" / "control-8090.token"
    assert token_path_for_server("http://127.0.0.1:9000") == tmp_path / "elasticserving" / "control-9000.token"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_token_path(8090).parent.name == "elasticserving"
