"""Pre-warmed replica start for the local platform: `PrewarmLauncher.spawn(cmd, env)` forks a command it
recognises as `python -m runtime ...` from the running zygote of its backend kind (runtime.zygote); for
anything else it returns None and the platform starts it the ordinary way (`sh -c`). Dead zygotes restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from autoscaler.local.process import die_with_parent, pipe_reader, terminate

log = logging.getLogger("elasticserving.prewarm")

_PYTHON = re.compile(r"^python(3(\.\d+)?)?$")
_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
_SHELL = set("|&;<>()`*?[]~!#\\\"'")  # anything a plain word split cannot honour


def runtime_argv(cmd: str, env: dict[str, str]) -> list[str] | None:
    """The runtime's arguments if `cmd` is just `[exec] python[3] -m runtime ARGS` (with $VARs from env)."""
    if any(ch in _SHELL for ch in cmd) or "$(" in cmd:
        return None

    def expand(m: re.Match) -> str:
        return env[m.group(1) or m.group(2)]  # KeyError: an unset variable

    try:
        words = [_VAR.sub(expand, w) for w in shlex.split(cmd)]
    except (KeyError, ValueError):
        return None
    if words and words[0] == "exec":
        words = words[1:]
    if len(words) < 3 or words[1:3] != ["-m", "runtime"]:
        return None
    exe = words[0]
    if not (_PYTHON.match(os.path.basename(exe)) or os.path.realpath(exe) == os.path.realpath(sys.executable)):
        return None
    return words[3:]


# What a replica's command sees in its environment, for telling its kind before any replica has ports
# or a model directory (a storageUri model's backend is told from its files only once pulled: paddle).
_WARM_ENV = {"PORT": "0", "GRPC_PORT": "0", "MODEL_DIR": "/nonexistent"}


def warm_kind(cmd: str) -> str | None:
    """The zygote kind of a side's replica command, told before it runs (None: not our runtime, or a
    backend no zygote pre-warms)."""
    return runtime_kind(runtime_argv(cmd, {**os.environ, **_WARM_ENV}))


def runtime_kind(argv: list[str] | None) -> str | None:
    """Which zygote can fork this replica: the backend the runtime itself would load for `argv`
    (runtime.cli parses it with the runtime's own flags and defaults); None: none can."""
    from runtime.cli import backend_kind  # light: imports neither numpy nor a backend

    return backend_kind(argv) if argv is not None else None


class ForkedReplica:
    """A replica forked by a zygote, with the asyncio.subprocess.Process surface the platform uses."""

    def __init__(self, pid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 stderr: asyncio.StreamReader) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.stderr = stderr
        self.prewarmed = True
        self._writer = writer  # the connection stays open for the replica's life: it is its lifeline
        self._done = asyncio.get_running_loop().create_task(self._await_exit(reader))

    async def _await_exit(self, reader: asyncio.StreamReader) -> int:
        code: int | None = None
        with contextlib.suppress(OSError, ValueError):
            async for line in reader:
                msg = json.loads(line)
                if "exit" in msg:
                    code = int(msg["exit"])
                    break
        if code is None:  # the zygote died first: watch the process itself
            code = await _wait_pid(self.pid)
        self.returncode = code
        self._writer.close()
        return code

    async def wait(self) -> int:
        return await asyncio.shield(self._done)


async def _wait_pid(pid: int) -> int:
    """Wait for a process that is not our child; its exit code is unknown (-1)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return -1
    loop = asyncio.get_running_loop()
    exited = loop.create_future()
    loop.add_reader(fd, lambda: exited.done() or exited.set_result(None))
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return -1


# A replica start waits for a zygote still importing its backend until it is this old. Measured here (2 vCPUs):
# the paddle zygote is ready ~1 s after it starts and a forked replica turns ready in ~0.25 s (LAC), against
# 1.2-2 s for a plain LAC start and 2.6 s for OCR, whose imports compete for the same busy cores: waiting wins
# well past the zygote's usual import time. 5 s covers a paddle and an onnx zygote warming side by side on 2
# busy cores (examples/image.yaml's canary is started at apply, to prove it ready, while both import).
STARTING_WAIT_SECONDS = 5.0


def starting_wait(age: float | None, budget: float = STARTING_WAIT_SECONDS) -> float:
    """How long a replica start waits for a zygote that is starting: what is left of `budget` since it
    started (`age` seconds ago; None: no zygote process is starting)."""
    return 0.0 if age is None else max(0.0, budget - age)


class ZygoteProcess:
    """One running `python -m runtime.zygote` of a kind, restarted when it dies."""

    def __init__(self, kind: str, workdir: Path, env: dict[str, str]) -> None:
        self.kind = kind
        self.path = str(workdir / f"{kind}.sock")
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self.preload_seconds: float | None = None
        self._started = 0.0  # monotonic, of the current process
        self._task: asyncio.Task | None = None
        self._closing = False

    def start(self) -> None:
        self._started = time.monotonic()  # starting from now: a spawn right after waits for it
        self._task = asyncio.get_running_loop().create_task(self._keep_running(), name=f"zygote {self.kind}")

    async def _keep_running(self) -> None:
        backoff = 0.5
        while not self._closing:
            await self._run_once()
            if self._closing:
                return
            backoff = 0.5 if time.monotonic() - self._started > 30 else min(backoff * 2, 30.0)
            log.warning("zygote %s exited; restarting in %.1fs", self.kind, backoff)
            await asyncio.sleep(backoff)

    async def _run_once(self) -> None:
        self.ready.clear()
        self._started = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runtime.zygote", "--socket", self.path, "--kind", self.kind,
            env=self.env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, preexec_fn=die_with_parent,  # never outlives the launcher
            # Out of the terminal's process group: a Ctrl-C meant for `up` would kill it before `up` closes
            # it (a "zygote exited; restarting" warning at every shutdown); `up` stops it itself.
            start_new_session=True)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        log_task = asyncio.create_task(self._log(self.proc.stderr))
        async for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                if json.loads(line).get("ready"):
                    self.ready.set()
                    log.info("zygote %s ready (pid %d)", self.kind, self.proc.pid)
        await self.proc.wait()
        self.ready.clear()
        await asyncio.wait([log_task], timeout=1.0)

    async def _log(self, stream: asyncio.StreamReader) -> None:
        async for line in stream:
            text = line.decode("utf-8", "replace").rstrip()
            with contextlib.suppress(ValueError, AttributeError):
                self.preload_seconds = json.loads(text)["seconds"]
                continue
            if text:
                log.info("zygote %s: %s", self.kind, text[:300])

    def alive(self) -> bool:
        return self.ready.is_set() and self.proc is not None and self.proc.returncode is None

    def starting_age(self) -> float | None:
        """Seconds since the zygote process started, while it runs and is not ready yet; else None."""
        exited = self.proc is not None and self.proc.returncode is not None  # waiting out a back-off
        if self.ready.is_set() or self._closing or self._task is None or exited:
            return None
        return time.monotonic() - self._started

    async def fork(self, argv: list[str], env: dict[str, str], stdout_fd: int | None) -> ForkedReplica:
        err_r, err_w = os.pipe()
        out_fd = stdout_fd if stdout_fd is not None else os.open(os.devnull, os.O_WRONLY)
        request = json.dumps({"argv": argv, "env": env, "cwd": os.getcwd()}).encode()
        try:
            conn = await asyncio.get_running_loop().run_in_executor(None, self._send, request, [out_fd, err_w])
        except BaseException:
            os.close(err_r)
            raise
        finally:
            os.close(err_w)
            if stdout_fd is None:
                os.close(out_fd)
        try:
            reader, writer = await asyncio.open_unix_connection(sock=conn)
            first = json.loads(await asyncio.wait_for(reader.readline(), 5.0) or b"{}")
            if "pid" not in first:
                raise OSError(first.get("error") or "the zygote closed the connection")
            stderr = await pipe_reader(err_r)
        except BaseException:
            conn.close()
            with contextlib.suppress(OSError):
                os.close(err_r)
            raise
        return ForkedReplica(int(first["pid"]), reader, writer, stderr)

    def _send(self, request: bytes, fds: list[int]) -> socket.socket:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.settimeout(5.0)
            conn.connect(self.path)
            socket.send_fds(conn, [request], fds)
            conn.setblocking(False)
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        self._closing = True
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await terminate(self.proc, timeout=5.0)


class PrewarmLauncher:
    """Zygotes per backend kind; `spawn` forks a replica, or returns None for a plain start."""

    def __init__(self, kinds: tuple[str, ...] = ("paddle",)) -> None:
        self.kinds = kinds
        self._workdir = Path(tempfile.mkdtemp(prefix="elasticserving-zygote-"))
        self._env = dict(os.environ)
        self.zygotes: dict[str, ZygoteProcess] = {}

    async def start(self) -> None:
        for kind in self.kinds:
            self._zygote(kind)

    def _zygote(self, kind: str) -> ZygoteProcess:
        z = self.zygotes.get(kind)
        if z is None:
            z = self.zygotes[kind] = ZygoteProcess(kind, self._workdir, self._env)
            z.start()
        return z

    def warm(self, cmd: str) -> None:
        """Start the zygote that will fork `cmd`'s replicas (a side's command of a loaded or applied
        spec), before its first scale-up, if a zygote can fork them."""
        if (kind := warm_kind(cmd)) is not None:
            self._zygote(kind)

    async def spawn(self, cmd: str, env: dict[str, str], stdout_fd: int | None = None) -> ForkedReplica | None:
        argv = runtime_argv(cmd, env)
        if argv is None or (kind := runtime_kind(argv)) is None:  # not our runtime, or no zygote for its backend
            return None
        z = self._zygote(kind)  # a kind first seen here warms up for the next scale-up
        if not z.alive() and (wait := starting_wait(z.starting_age())) > 0:
            with contextlib.suppress(TimeoutError):  # sooner than a plain start (STARTING_WAIT_SECONDS)
                await asyncio.wait_for(z.ready.wait(), wait)
        if not z.alive():
            log.info("zygote %s not ready: plain start", kind)
            return None
        try:
            return await z.fork(argv, env, stdout_fd)
        except (OSError, ValueError, TimeoutError) as exc:
            log.warning("zygote %s could not fork a replica (%s): plain start", kind, exc)
            return None

    async def close(self) -> None:
        await asyncio.gather(*(z.close() for z in self.zygotes.values()), return_exceptions=True)
        shutil.rmtree(self._workdir, ignore_errors=True)  # the zygotes' sockets
