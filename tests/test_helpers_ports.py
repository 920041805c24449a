"""tests.helpers.start_runtime when the free port it chose is taken before the runtime binds it: the
runtime exits with "address already in use" and the helper starts it again on other ports."""

from __future__ import annotations

import socket

import pytest

import tests.helpers as helpers


@pytest.mark.timeout(180)
def test_start_runtime_retries_when_its_port_was_taken(monkeypatch):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy = taken.getsockname()[1]
        chosen = []
        real = helpers.free_port

        def free_port() -> int:
            chosen.append(busy if not chosen else real())
            return chosen[-1]

        monkeypatch.setattr(helpers, "free_port", free_port)
        p, port, _ = helpers.start_runtime("--model", "lac")
        try:
            assert chosen[0] == busy and port == chosen[1] != busy
            assert helpers.http("GET", f"http://127.0.0.1:{port}/ready")[0] == 200
        finally:
            p.terminate()
            p.wait(30)
