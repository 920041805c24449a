"""The zygote's socket protocol refuses malformed requests with an error line and keeps serving."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from runtime.zygote import Zygote


@pytest.mark.parametrize("payload, fds, reason", [
    (b"[1]", 2, "expected {argv, env}"),  # JSON, but not an object
    (b'"argv"', 2, "expected {argv, env}"),
    (b'{"argv": "python"}', 2, "expected {argv, env}"),
    (b'{"argv": []}', 1, "expected {argv, env}"),  # one descriptor, not stdout and stderr
    (b"{not json", 2, "bad request"),
])
def test_malformed_requests_get_an_error_and_no_fork(tmp_path: Path, payload: bytes, fds: int, reason: str) -> None:
    zygote = Zygote(str(tmp_path / "z.sock"))
    r, w = os.pipe()
    try:
        for _ in range(2):  # the second request proves the first left the zygote serving
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(zygote.path)
                socket.send_fds(client, [payload], [w] * fds)
                zygote._accept()
                client.settimeout(5)
                answer = json.loads(client.recv(4096).decode())
            assert reason in answer["error"] and answer["error"].startswith("bad request")
            assert zygote.children == {}
    finally:
        zygote.listener.close()
        os.close(r)
        os.close(w)
