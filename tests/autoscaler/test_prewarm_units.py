"""Which replica commands the pre-warmed launcher forks (autoscaler.local.prewarm), and how long a start
waits for a zygote that is starting, without processes."""

from __future__ import annotations

import asyncio
import sys

import pytest

from autoscaler.local.prewarm import PrewarmLauncher, runtime_argv, runtime_kind, starting_wait

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


@pytest.mark.parametrize(("age", "budget", "wait"), [
    (None, 2.0, 0.0),  # no zygote starting (ready, dead, or restarting after a back-off)
    (0.0, 2.0, 2.0),
    (0.5, 2.0, 1.5),
    (2.0, 2.0, 0.0),
    (9.0, 2.0, 0.0),  # starting for longer than a plain start takes: start plainly
])
def test_starting_wait(age, budget, wait):
    assert starting_wait(age, budget) == pytest.approx(wait)


class FakeZygote:
    def __init__(self, age: float | None) -> None:
        self.ready = asyncio.Event()
        self.age = age
        self.forks = 0

    def alive(self) -> bool:
        return self.ready.is_set()

    def starting_age(self) -> float | None:
        return None if self.ready.is_set() else self.age

    async def fork(self, argv, env, stdout_fd):
        self.forks += 1
        return "forked"

    async def close(self) -> None:
        pass


async def test_a_start_waits_for_a_starting_zygote_and_forks_from_it():
    launcher = PrewarmLauncher(kinds=())
    try:
        z = launcher.zygotes["paddle"] = FakeZygote(age=0.0)
        spawn = asyncio.create_task(launcher.spawn("python3 -m runtime --port $PORT", ENV))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not spawn.done()  # waiting for the zygote, not started plainly
        z.ready.set()
        assert await asyncio.wait_for(spawn, 5) == "forked" and z.forks == 1
    finally:
        await launcher.close()


async def test_a_start_does_not_wait_for_a_zygote_that_is_not_starting():
    launcher = PrewarmLauncher(kinds=())
    try:
        z = launcher.zygotes["paddle"] = FakeZygote(age=None)  # e.g. dead, restarting after a back-off
        assert await asyncio.wait_for(launcher.spawn("python3 -m runtime --port $PORT", ENV), 1) is None
        assert z.forks == 0
    finally:
        await launcher.close()
