"""Every error a user can reach says what is wrong in their words: a seeded fuzz over the error paths of
the activator (unknown Host), the control API (bad JSON, bad manifests, bad calls), `elasticserving
apply` with bad YAML, and the runtime (bad Paddle Serving and v2 bodies, bad images). No body may carry
a Python repr, a traceback or a Python class name."""

from __future__ import annotations

import base64
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, http, paddleservice, start_runtime, start_stack, write_yaml

ECHO = f"{sys.executable} tests/fixtures/echo_replica.py"
LEAKS = re.compile(r"object at 0x|Traceback|BytesIO|\b[A-Z]\w*(Error|Exception)\b|NoneType|<class |"
                   r"\bdict\b|\bstr object\b|File \"")
SEED = 28
CASES = 60  # per generator: a few hundred requests in all, a few seconds


def assert_plain(status: int, body: bytes, what: str) -> None:
    assert 400 <= status < 500 or status in (501, 503), (what, status, body[:300])
    text = body.decode("utf-8", "replace")
    assert not LEAKS.search(text), f"{what}: {status} {text[:500]}"


def mutate(rng: random.Random, text: str) -> str:
    """One small edit of `text`: a character dropped, doubled, swapped or replaced."""
    if not text:
        return rng.choice(["{", "[", '"', "\\", "\xff"])
    i = rng.randrange(len(text))
    op = rng.randrange(4)
    if op == 0:
        return text[:i] + text[i + 1:]
    if op == 1:
        return text[:i] + text[i] + text[i:]
    if op == 2 and i + 1 < len(text):
        return text[:i] + text[i + 1] + text[i] + text[i + 2:]
    return text[:i] + rng.choice('{}[]":,0-x\\\x00é') + text[i + 1:]


def manifests(rng: random.Random) -> list[object]:
    """PaddleService manifests with one thing wrong: a misspelled key, a value of the wrong kind."""
    out: list[object] = []
    good = paddleservice("fz", "default", ECHO, minScale=0)
    for _ in range(CASES):
        doc = json.loads(json.dumps(good))
        target = rng.choice([doc, doc["spec"], doc["spec"]["default"], doc["spec"]["service"], doc["metadata"]])
        if target and rng.random() < 0.5:
            key = rng.choice(list(target))
            target[mutate(rng, key)] = target.pop(key)
        else:
            key = rng.choice(list(target) or ["x"])
            target[key] = rng.choice([None, 1, -1, 1.5, "x", [], {}, [1, 2], {"a": 1}, True, "9" * 400])
        out.append(doc)
    return out + [[], "text", 1, None, {}, {"spec": None}, {"spec": []}]


@pytest.mark.timeout(240)
def test_stack_errors_are_plain(tmp_path):
    rng = random.Random(SEED)
    f = write_yaml(tmp_path / "s.yaml", paddleservice("echo", "default", ECHO, minScale=0))
    stack = start_stack(tmp_path, [f])
    try:
        # The activator: hosts nobody serves.
        for host in ["echo.default.example.co", "", "x" * 300, "echo.default.example.org:8080", "[::1]",
                     "ECHO.DEFALT", "é.example.com"]:
            status, _, body = stack.request(host or "-", "/x", body={})
            assert status == 404, (host, body)
            assert_plain(status, body, f"Host {host!r}")
        # The control API: malformed JSON, wrong content types, bad manifests.
        text = json.dumps(paddleservice("fz", "default", ECHO, minScale=0))
        for _ in range(CASES):
            raw = mutate(rng, mutate(rng, text)).encode("utf-8", "replace")
            status, _, body = http("POST", stack.control + "/v1/paddleservices", raw=raw, timeout=30,
                                   headers={"Authorization": f"Bearer {stack.token}",
                                            "Content-Type": "application/json"})
            if status < 300:
                continue  # the edit left a valid manifest
            assert_plain(status, body, f"POST {raw[:80]!r}")
        for doc in manifests(rng):
            status, _, body = stack.control_http("POST", "/v1/paddleservices", doc)
            if status < 300:
                continue
            assert_plain(status, body, f"POST {json.dumps(doc)[:200]}")
        for method, path, payload in [
            ("GET", "/v1/routes?since=x", None), ("GET", "/v1/routes?wait=nan", None),
            ("GET", "/v1/routes?epoch=" + "e" * 100, None), ("GET", "/v1/routes?activator=" + "a" * 300, None),
            ("POST", "/v1/stats", {"stats": "x"}), ("POST", "/v1/stats", [1]), ("POST", "/v1/stats", None),
            ("POST", "/v1/poke", {"service": 1}), ("POST", "/v1/poke", {"service": "a/b", "side": "x"}),
            ("POST", "/v1/poke", {"service": "nope/nope", "side": "default"}),
            ("GET", "/v1/paddleservices/default/nope", None), ("DELETE", "/v1/paddleservices/default/nope", None),
            ("GET", "/v1/paddleservices/default/echo/logs?tail=x", None),
            ("GET", "/v1/paddleservices/default/echo/logs?side=x", None),
            ("POST", "/v1/paddleservices/default/echo/promote", {}),
        ]:
            status, _, body = stack.control_http(method, path, payload)
            assert_plain(status, body, f"{method} {path} {payload!r}")
        status, _, body = http("POST", stack.control + "/v1/paddleservices", raw=b"{}", timeout=30,
                               headers={"Authorization": f"Bearer {stack.token}", "Content-Type": "text/plain"})
        assert_plain(status, body, "text/plain")
        status, _, body = http("GET", stack.control + "/v1/paddleservices", timeout=30)
        assert status == 401
        assert_plain(status, body, "no token")
        # `elasticserving apply` with bad YAML: one line on stderr, the path once, no traceback.
        yaml_text = Path(f).read_text()
        for i in range(20):
            bad = tmp_path / f"bad{i}.yaml"
            bad.write_text(mutate(rng, mutate(rng, yaml_text)))
            out = stack.cli("apply", "-f", str(bad))
            if out.returncode == 0:
                continue
            assert out.stderr.startswith("error: "), out.stderr
            assert out.stderr.count(str(bad)) <= 1 and "Traceback" not in out.stderr, out.stderr
            assert not LEAKS.search(out.stderr), out.stderr
    finally:
        stack.stop()


def _image_bytes(rng: random.Random) -> list[bytes]:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buf, "JPEG")
    jpeg = buf.getvalue()
    out = [b"", b"x", b"\xff\xd8\xff", jpeg[: len(jpeg) // 2], b"GIF89a" + bytes(20), b"\x89PNG\r\n\x1a\n"]
    for _ in range(20):
        data = bytearray(jpeg)
        for _ in range(rng.randrange(1, 8)):
            data[rng.randrange(min(len(data), 200))] = rng.randrange(256)
        out.append(bytes(data))
    return out


def _runtime_cases(rng: random.Random, name: str) -> list[tuple[str, bytes]]:
    good_v2 = json.dumps({"inputs": [{"name": "words", "shape": [1], "datatype": "BYTES", "data": ["我爱北京"]}]})
    good_ps = json.dumps({"feed": [{"words": "我爱北京"}], "fetch": ["word_seg"]})
    cases = []
    for _ in range(CASES):
        cases.append((f"/v2/models/{name}/infer", mutate(rng, mutate(rng, good_v2)).encode("utf-8", "replace")))
        cases.append((f"/{name}/prediction", mutate(rng, mutate(rng, good_ps)).encode("utf-8", "replace")))
    for body in [{"inputs": "x"}, {"inputs": [{"name": "words"}]}, {"inputs": [{"name": "nope", "shape": [1],
                 "datatype": "BYTES", "data": ["a"]}]}, {"inputs": [{"name": "words", "shape": [2], "datatype":
                 "BYTES", "data": ["a"]}]}, {"inputs": [{"name": "words", "shape": [1], "datatype": "FP99",
                 "data": [1]}]}, {"inputs": [{"name": "words", "shape": [-1], "datatype": "BYTES", "data": []}]},
                 [], None, 1, {"feed": "x"}, {"feed": [{"nope": 1}]}, {"feed": [{"words": 1}]}]:
        cases.append((f"/v2/models/{name}/infer", json.dumps(body).encode()))
        cases.append((f"/{name}/prediction", json.dumps(body).encode()))
    return cases


@pytest.mark.timeout(240)
def test_runtime_errors_are_plain():
    rng = random.Random(SEED)
    proc, port, _ = start_runtime("--model", "lac", "--name", "lac")
    try:
        for path, raw in _runtime_cases(rng, "lac"):
            status, _, body = http("POST", f"http://127.0.0.1:{port}{path}", raw=raw, timeout=30,
                                   headers={"Content-Type": "application/json"})
            if status == 200:
                continue
            assert_plain(status, body, f"{path} {raw[:120]!r}")
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.timeout(240)
def test_bad_images_are_plain_400s():
    pytest.importorskip("PIL")
    model = Path.home() / ".cache/elasticserving/models/efficientnet-lite0"
    if not model.is_dir():
        pytest.skip("scripts/setup.sh builds efficientnet-lite0")
    rng = random.Random(SEED)
    proc, port, _ = start_runtime("--model", "efficientnet-lite0", "--backend", "onnx", "--handler", "imagenet",
                                  "--name", "image")
    try:
        for data in _image_bytes(rng):
            b64 = base64.b64encode(data).decode()
            for path, body in [("/image/prediction", {"feed": [{"image": b64}], "fetch": ["score"]}),
                               ("/v2/models/image/infer", {"inputs": [{"name": "image", "shape": [1],
                                                                       "datatype": "BYTES", "data": [b64]}]})]:
                status, _, answer = http("POST", f"http://127.0.0.1:{port}{path}", body, timeout=30)
                if status == 200:
                    continue  # a flipped byte the decoder tolerates
                assert status == 400, (status, answer)
                assert_plain(status, answer, f"{path} {data[:40]!r}")
        status, _, answer = http("POST", f"http://127.0.0.1:{port}/image/prediction",
                                 {"feed": [{"image": base64.b64encode(b"not an image").decode()}]}, timeout=30)
        assert status == 400 and b"undecodable image" in answer and b"BytesIO" not in answer, answer
    finally:
        proc.terminate()
        proc.wait(30)


def test_apply_cli_without_a_stack_says_so(tmp_path):
    f = write_yaml(tmp_path / "s.yaml", paddleservice("echo", "default", ECHO, minScale=0))
    out = subprocess.run([sys.executable, "-m", "autoscaler.local.cli", "apply", "-f", str(f), "--server",
                          "http://127.0.0.1:9", "--token-file", str(tmp_path / "none")], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 1 and "is `elasticserving up` running?" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
