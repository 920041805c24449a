"""Which replica commands the pre-warmed launcher forks (autoscaler.local.prewarm), without processes."""

from __future__ import annotations

import sys

import pytest

from autoscaler.local.prewarm import runtime_argv, runtime_kind

ENV = {"PORT": "9000", "GRPC_PORT": "9001"}


@pytest.mark.parametrize(("cmd", "argv"), [
    ("python3 -m runtime --model lac --port $PORT", ["--model", "lac", "--port", "9000"]),
    ("exec python -m runtime --port ${PORT} --grpc-port $GRPC_PORT", ["--port", "9000", "--grpc-port", "9001"]),
    (f"{sys.executable} -m runtime", []),
    ("python3.11 -m runtime --model 'a b'", None),  # quoting: left to the shell
    ("python3 -m runtime --port $PORT && echo done", None),
    ("python3 -m runtime --port $(cat port)", None),
    ("python3 -m runtime --port $UNSET", None),
    ("python3 -m runtime > log", None),
    ("python3 -m runtime.zygote --socket s", None),
    ("python3 serve.py --port $PORT", None),
    ("ruby -m runtime", None),
    ("", None),
])
def test_runtime_argv(cmd, argv):
    assert runtime_argv(cmd, ENV) == argv


def test_runtime_kind(tmp_path):
    assert runtime_kind(["--model", "lac"]) == "paddle"
    assert runtime_kind([]) == "paddle"
    assert runtime_kind(["--backend", "onnx", "--model", "x"]) == "onnx"
    assert runtime_kind(["--backend=tensorflow", "--model", "m"]) is None
    assert runtime_kind(["--backend=tensorflow"]) == "paddle"  # the default model is LAC, a Paddle model
    (tmp_path / "m.onnx").write_bytes(b"")
    assert runtime_kind([f"--model={tmp_path / 'm.onnx'}"]) == "onnx"
    assert runtime_kind(["--model", "missing-dir"]) == "paddle"  # the replica refuses it with a message
    assert runtime_kind(["--no-such-flag"]) is None  # the runtime would refuse it: start it plainly
    onnx_dir = tmp_path / "o"
    onnx_dir.mkdir()
    (onnx_dir / "model.onnx").write_bytes(b"")
    assert runtime_kind(["--model", str(onnx_dir)]) == "onnx"
    tf_dir = tmp_path / "t"
    tf_dir.mkdir()
    (tf_dir / "saved_model.pb").write_bytes(b"")
    assert runtime_kind(["--model", str(tf_dir)]) is None
