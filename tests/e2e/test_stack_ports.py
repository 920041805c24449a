"""`elasticserving up`'s own ports: bound by `up` before anything else starts and held across activator
restarts (the HTTP and admin listeners handed down, the gRPC port reserved), port 0 for a free one."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from autoscaler.local.stack import listening_socket, reserved_port
from tests.helpers import ROOT, child_pids, paddleservice, start_stack, wait_for, write_yaml

ECHO = f"{sys.executable} tests/fixtures/echo_replica.py"
HOST = "echo.default.example.com"


def _activator_pid(up_pid: int) -> int | None:
    for pid in child_pids(up_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # exited meanwhile
        if argv[1:3] == [b"-m", b"activator"]:
            return pid
    return None


def test_reserved_port_keeps_others_out_but_lets_grpc_listen():
    held = reserved_port("127.0.0.1", 0)
    port = held.getsockname()[1]
    try:
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", port))
        with ThreadPoolExecutor(1) as pool:
            server = grpc.server(pool)
            assert server.add_insecure_port(f"127.0.0.1:{port}") == port
            server.start()
            try:
                channel = grpc.insecure_channel(f"127.0.0.1:{port}")
                grpc.channel_ready_future(channel).result(timeout=10)  # the server's listener took it
                channel.close()
            finally:
                server.stop(0)
    finally:
        held.close()


def test_a_taken_port_is_a_clear_error(tmp_path):
    with listening_socket("127.0.0.1", 0) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}: "):
            listening_socket("127.0.0.1", port)
        f = write_yaml(tmp_path / "s.yaml", paddleservice("echo", "default", ECHO, minScale=0))
        out = subprocess.run([sys.executable, "-m", "autoscaler.local.cli", "up", "-f", str(f), "--http-port",
                              str(port), "--grpc-port", "0", "--control-port", "0",
                              "--token-file", str(tmp_path / "t.token")],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in out.stderr, out.stderr
    assert "restarting" not in out.stdout + out.stderr


@pytest.mark.timeout(180)
def test_activator_restart_keeps_its_ports_and_answers_what_waited(tmp_path):
    f = write_yaml(tmp_path / "s.yaml", paddleservice("echo", "default", ECHO, minScale=1))
    stack = start_stack(tmp_path, [f])
    try:
        assert len({stack.http_port, stack.grpc_port, stack.control_port}) == 3 and 0 not in (
            stack.http_port, stack.grpc_port, stack.control_port)
        status, _, body = stack.request(HOST, "/echo", body={"n": 1})
        assert status == 200, body
        first = _activator_pid(stack.proc.pid)
        assert first is not None, stack.output
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: _activator_pid(stack.proc.pid) != first, 30, 0.05, "the killed activator reaped")
        # Sent while the activator is down or starting again: the connection waits in the listener `up`
        # holds and is answered by the next activator, on the same port.
        status, _, body = stack.request(HOST, "/while-restarting", body={"n": 2}, timeout=60)
        assert status == 200 and json.loads(body)["path"] == "/while-restarting", body
        second = wait_for(lambda: _activator_pid(stack.proc.pid), 30, 0.1, "the restarted activator")
        assert second != first
        assert any("activator exited" in line and "restarting" in line for line in stack.output), stack.output
        # gRPC is back on the same port (the reservation held it through the restart).
        channel = grpc.insecure_channel(f"127.0.0.1:{stack.grpc_port}")
        try:
            grpc.channel_ready_future(channel).result(timeout=30)
        finally:
            channel.close()
    finally:
        stack.stop()
