"""What `elasticserving up` promises in the README, through `up` itself: `--log-format json` for the
activator and the replicas, the activator's limits passed through, the admin port chosen and named in
the "is up" line; a port another stack holds refused with that stack's pid and ports; a quiet start and
stop (no third-party warnings, nothing at WARNING for Ctrl-C, replicas stopped "for shutdown")."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.helpers import ROOT, free_port, http, paddleservice, start_stack, wait_for, write_yaml

HOST = "lac.default.example.com"


@pytest.mark.timeout(240)
def test_up_options_reach_the_activator_and_the_replicas(tmp_path):
    f = write_yaml(tmp_path / "lac.yaml", paddleservice("lac", "default", "python3 -m runtime --model lac --name lac "
                                                         "--port $PORT", minScale=0))
    admin = free_port()
    stack = start_stack(tmp_path, [f], extra=["--log-format", "json", "--admin-port", str(admin),
                                              "--max-body-bytes", "200", "--prewarm"])
    try:
        up_line = next(line for line in stack.output if "ElasticServing is up" in line)
        assert f"admin http://127.0.0.1:{admin}" in up_line, up_line
        assert http("GET", f"http://127.0.0.1:{admin}/ready", timeout=10)[0] == 200
        status, _, body = stack.request(HOST, "/lac/prediction", body={"feed": [{"words": "我爱北京天安门"}],
                                                                        "fetch": ["word_seg"]}, timeout=120)
        assert status == 200, body
        status, _, body = stack.request(HOST, "/lac/prediction", raw=b"{" + b" " * 300 + b"}", timeout=30,
                                        headers={"Content-Type": "application/json"})
        assert status == 413, body  # --max-body-bytes 200, passed through to the activator

        def json_request_lines() -> list[dict]:
            out = []
            for line in list(stack.output):
                if line.startswith("{"):
                    out.append(json.loads(line))
            return out

        wait_for(lambda: any(r.get("service") == "default/lac" for r in json_request_lines()), 30, 0.1,
                 "the activator's request line, in JSON")
        logs = stack.cli("logs", "lac", "--tail", "200")
        assert logs.returncode == 0, logs.stderr
        replica_json = [line.split("] ", 1)[1] for line in logs.stdout.splitlines() if "] {" in line]
        assert replica_json and all(isinstance(json.loads(x), dict) for x in replica_json), logs.stdout
        # Ctrl-C in a terminal: SIGINT to the whole foreground process group (`up` leads its own here).
        os.killpg(stack.proc.pid, signal.SIGINT)
        assert stack.proc.wait(60) == 0
    finally:
        stack.stop()
    # The output is read by a thread: wait for the stop's last lines before reading it whole.
    wait_for(lambda: any("(shutdown)" in line for line in stack.output), 10, 0.05, "the replica's stop line")
    text = "\n".join(stack.output)
    assert "No ccache found" not in text and "UserWarning" not in text, text
    assert " WARNING " not in text, text
    assert "(shutdown)" in text and "(scale down)" not in text, text


@pytest.mark.timeout(120)
def test_a_second_up_on_the_same_ports_names_the_stack_that_holds_them(tmp_path):
    f = write_yaml(tmp_path / "s.yaml", paddleservice("echo", "default", f"{sys.executable} "
                                                      "tests/fixtures/echo_replica.py", minScale=0))
    first = start_stack(tmp_path, [f])
    try:
        for flags, role, port in [
            (["--http-port", str(first.http_port), "--grpc-port", "0", "--control-port", "0"], "activator HTTP",
             first.http_port),
            (["--http-port", "0", "--grpc-port", str(first.grpc_port), "--control-port", "0"], "gRPC",
             first.grpc_port),
            (["--http-port", "0", "--grpc-port", "0", "--control-port", str(first.control_port)], "control API",
             first.control_port),
        ]:
            out = subprocess.run([sys.executable, "-m", "autoscaler.local.cli", "up", "-f", str(f), *flags,
                                  "--token-file", str(tmp_path / "second.token")],
                                 capture_output=True, text=True, timeout=60, cwd=ROOT)
            assert out.returncode == 1, out.stdout + out.stderr
            err = out.stderr
            assert f"port {port} ({role}) is held by another ElasticServing stack (pid {first.proc.pid}: " in err, err
            assert f"activator HTTP {first.http_port}, gRPC {first.grpc_port}, control API {first.control_port}" \
                in err, err
            assert "--http-port 0 --grpc-port 0 --control-port 0" in err and "Errno" not in err, err
            assert "ElasticServing is up" not in out.stdout
        status, _, _ = first.request("echo.default.example.com", "/still-mine", body={})
        assert status == 200  # the first stack kept its ports and serves on
    finally:
        first.stop()
