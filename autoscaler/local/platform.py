"""The local platform: each replica is a process on this machine, started from `spec.<side>.arg`.

A supervisor per side starts replicas with `sh -c`, probes `/ready`, restarts crashed ones with back-off
and reports ready endpoints (`ReplicaJudge` decides, without I/O); replica output goes line by line to
the side's `SideLog` (autoscaler/local/logs.py) and, with `log_dir`, to `<log_dir>/<replica>.log`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from autoscaler.local.logs import SideLog
from autoscaler.local.models import LocalModels
from autoscaler.local.process import die_with_parent, pipe_reader
from autoscaler.platform import Platform, ReplicaAddress, SideState
from autoscaler.spec import MODEL_DIR_ENV, EndpointSpec, PaddleService
from runtime.storage import ModelVersion, StorageError
from runtime.storage.names import PULL_REPORT_ENV

log = logging.getLogger("elasticserving.local")

STARTING, READY, STOPPING = "starting", "ready", "stopping"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Replica:
    id: str
    side: str
    generation: int
    http_port: int
    grpc_port: int
    proc: asyncio.subprocess.Process | None = None
    state: str = STARTING
    started: float = field(default_factory=time.monotonic)
    stderr_tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=20))
    stdout: asyncio.StreamReader | None = None
    task: asyncio.Task | None = None


@dataclass
class SideRuntime:
    """Desired and actual replicas of one side of one service."""

    key: str
    side: str
    spec: EndpointSpec
    generation: int = 0
    desired: int = 0
    replicas: dict[str, Replica] = field(default_factory=dict)
    error: str | None = None
    error_reason: str = "ReplicaFailed"
    failures: int = 0  # consecutive failed starts, for back-off
    last_start_seconds: float | None = None
    plain_generation: int = -1  # a forked replica of this generation failed: start the rest plainly
    backoff_until: float = 0.0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    log: SideLog = field(default_factory=SideLog)
    model: tuple[int, ModelVersion] | None = None  # the storageUri version pulled for a generation


PLAIN, EXITED, FAILED, STOPPED = "plain", "exited", "failed", "stopped"  # ReplicaJudge.verdict's actions


@dataclass(frozen=True)
class Verdict:
    action: str
    message: str = ""  # PLAIN: what the forked replica did; EXITED, FAILED: the side's error (EXITED: + stderr)
    stop_reason: str = ""  # FAILED: `_stop`'s reason


@dataclass
class ReplicaJudge:
    """The supervisor's decisions about one started process, pure (no I/O, no clock): the supervisor
    reports what it sees (probe answers; seconds since the start, exit code) and acts on the verdict."""

    forked: bool  # a pre-warmed replica: a short deadline, and a plain start rather than a failure
    ready_timeout: float
    prewarm_ready_timeout: float
    ready: bool = False
    misses: int = 0  # probes missed in a row since ready

    def probed(self, answered: bool) -> bool:
        """Count one readiness probe; True: the replica has just turned ready."""
        if self.ready:
            self.misses = 0 if answered else self.misses + 1
            return False
        self.ready = answered
        return answered

    def verdict(self, elapsed: float, exit_code: int | None, stopping: bool = False) -> Verdict | None:
        """What to do `elapsed` seconds after the start (exit code None: running); None: probe on. PLAIN:
        kill it and start it plainly (forked, failed before ready); EXITED: it failed; FAILED: it failed,
        stop it; STOPPED: we are stopping it, nothing to do."""
        if stopping:
            return Verdict(STOPPED)
        if exit_code is not None:
            # The runtime's own refusals (2: bad arguments, 3: the model does not load) would fail a plain
            # start just the same; other deaths of a forked replica may be fork hazards.
            if self.forked and not self.ready and exit_code not in (2, 3):
                return Verdict(PLAIN, f"exited (code {exit_code})")
            what = "crashed" if self.ready else "exited before it was ready"
            return Verdict(EXITED, f"replica command {what} (exit code {exit_code})")
        if self.ready:
            return Verdict(FAILED, "replica stopped answering its readiness probe", "unhealthy") \
                if self.misses >= 3 else None
        timeout = self.prewarm_ready_timeout if self.forked else self.ready_timeout
        if elapsed < timeout:
            return None
        if self.forked:  # a hang may be a fork hazard too
            return Verdict(PLAIN, f"was not ready after {timeout:g}s")
        return Verdict(FAILED, f"replica not ready after {timeout:g}s", "never ready")


class LocalPlatform(Platform):
    """Replicas as local processes; the embedded default platform of `elasticserving up`."""

    name = "local"
    moves_sides = True

    def __init__(self, host: str = "127.0.0.1", ready_timeout: float = 120.0, probe_interval: float = 0.02,
                 drain_timeout: float = 15.0, log_dir: str | os.PathLike | None = None, max_backoff: float = 30.0,
                 env: dict[str, str] | None = None, spawner: Callable[..., object] | None = None,
                 warm: Callable[[str], object] | None = None, prewarm_ready_timeout: float = 10.0,
                 models: LocalModels | None = None) -> None:
        super().__init__()
        self.host = host
        self.ready_timeout = ready_timeout
        self.probe_interval = probe_interval
        self.drain_timeout = drain_timeout
        self.log_dir = Path(log_dir) if log_dir else None
        self.max_backoff = max_backoff
        self.extra_env = dict(env or {})
        # Pre-warmed start (autoscaler/local/prewarm.py): `await spawner(cmd, env, stdout_fd)` forks a replica
        # or returns None (a plain start); `warm(cmd)` readies a side's zygote at apply, before its first replica.
        self.spawner = spawner
        self.warm = warm
        self.prewarm_ready_timeout = prewarm_ready_timeout
        self.models = models or LocalModels()
        self._sides: dict[tuple[str, str], SideRuntime] = {}
        self._tasks: set[asyncio.Task] = set()  # background stops and output copies
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0))
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        self._closed = True
        sides = list(self._sides.values())
        for sr in sides:
            if sr.task:
                sr.task.cancel()
        await asyncio.gather(*(self._stop(sr, r, "shutdown") for sr in sides for r in list(sr.replicas.values())),
                             return_exceptions=True)
        # Stops under way and output still being copied; a pipe some orphan keeps open is not waited for.
        if self._tasks:
            _, late = await asyncio.wait(list(self._tasks), timeout=5.0)
            for task in late:
                task.cancel()
        for sr in sides:
            sr.log.close()
        await asyncio.gather(*(sr.task for sr in sides if sr.task), return_exceptions=True)
        if self._session:
            await self._session.close()

    async def apply(self, svc: PaddleService) -> None:
        for side in svc.sides:
            spec = svc.side_spec(side)
            assert spec is not None
            cmd = spec.command(svc.name)
            if self.warm is not None and cmd:
                self.warm(cmd)
            sr = self._sides.get((svc.key, side))
            if sr is None:
                sr = self._sides[(svc.key, side)] = SideRuntime(svc.key, side, spec)
                sr.task = asyncio.create_task(self._supervise(sr), name=f"supervise {svc.key}/{side}")
            elif sr.spec != spec:
                log.info("%s/%s: spec changed, rolling replicas", svc.key, side)
                sr.spec = spec
                sr.generation += 1
                sr.error, sr.failures, sr.backoff_until = None, 0, 0.0
                sr.wake.set()
        for (key, side), sr in list(self._sides.items()):
            # `previous` is not in the spec: the controller drops it once its traffic has moved.
            if key == svc.key and side not in svc.sides and side != "previous":
                await self._remove_side(sr)

    async def move(self, key: str, from_side: str, to_side: str) -> None:
        """No restart: the replicas change side; what `to_side` ran stops in the background (no traffic left)."""
        sr = self._sides.pop((key, from_side), None)
        old = self._sides.pop((key, to_side), None)
        if old is not None:
            self._background(self._remove_side(old), f"retire {key}/{to_side}")
        if sr is None:
            return
        log.info("%s: the replicas of %s now serve as %s", key, from_side, to_side)
        sr.side = to_side
        for r in sr.replicas.values():
            r.side = to_side
        self._sides[(key, to_side)] = sr
        self.on_change(key)

    async def drop(self, key: str, side: str) -> None:
        sr = self._sides.pop((key, side), None)
        if sr is not None:
            log.info("%s/%s: no traffic left, stopping its replicas", key, side)
            self._background(self._remove_side(sr), f"retire {key}/{side}")
            self.on_change(key)

    async def delete(self, key: str) -> None:
        for (k, _side), sr in list(self._sides.items()):
            if k == key:
                await self._remove_side(sr)
        self.on_change(key)

    async def scale(self, key: str, side: str, replicas: int) -> None:
        sr = self._sides.get((key, side))
        if sr is not None and replicas != sr.desired:
            sr.desired = replicas
            if replicas > 0:  # a new demand (e.g. a poke) retries a failed side at once
                sr.backoff_until = 0.0
            sr.wake.set()

    def state(self, key: str, side: str) -> SideState:
        sr = self._sides.get((key, side))
        if sr is None:
            return SideState()
        ready = [ReplicaAddress(r.id, self.host, r.http_port, r.grpc_port)
                 for r in sr.replicas.values() if r.state == READY]
        starting = sum(1 for r in sr.replicas.values() if r.state == STARTING)
        return SideState(desired=sr.desired, ready=ready, starting=starting, error=sr.error,
                         error_reason=sr.error_reason, last_start_seconds=sr.last_start_seconds)

    def logs(self, key: str, side: str) -> SideLog | None:
        sr = self._sides.get((key, side))
        return sr.log if sr else None

    async def _remove_side(self, sr: SideRuntime) -> None:
        if self._sides.get((sr.key, sr.side)) is sr:  # a side moved in its place stays
            del self._sides[(sr.key, sr.side)]
        sr.log.close()
        if sr.task:
            sr.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sr.task
        await asyncio.gather(*(self._stop(sr, r, "service removed") for r in list(sr.replicas.values())),
                             return_exceptions=True)

    async def _supervise(self, sr: SideRuntime) -> None:
        """Level-triggered loop: make the set of replicas match `desired` and the current spec."""
        while not self._closed:
            sr.wake.clear()
            try:
                await self._reconcile(sr)
            except Exception:
                log.exception("%s/%s: reconcile failed", sr.key, sr.side)
            # A side at zero with nothing running sleeps until told (scale, spec change): a thousand
            # idle services cost no wake-ups. Otherwise look again every second, as a level trigger.
            timeout: float | None = None if sr.desired == 0 and not sr.replicas else 1.0
            if sr.backoff_until:
                timeout = max(0.0, min(timeout or 1.0, sr.backoff_until - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sr.wake.wait(), timeout)

    async def _reconcile(self, sr: SideRuntime) -> None:
        live = [r for r in sr.replicas.values() if r.state != STOPPING]
        current = [r for r in live if r.generation == sr.generation]
        outdated = [r for r in live if r.generation != sr.generation]
        # Old-generation replicas go once the new generation covers the demand.
        ready_current = sum(1 for r in current if r.state == READY)
        if outdated and (ready_current >= min(sr.desired, len(outdated)) or sr.desired == 0):
            for r in outdated:
                self._background(self._stop(sr, r, "replaced by the new version"), f"stop {r.id}")
        missing = sr.desired - len(current)
        if missing > 0:
            if time.monotonic() < sr.backoff_until:
                return
            for _ in range(missing):
                self._launch(sr)
        elif missing < 0:
            # Scale down: stop starting replicas first, then the newest ready ones.
            for r in sorted(current, key=lambda r: (r.state == READY, -r.started))[:-missing]:
                self._background(self._stop(sr, r), f"stop {r.id}")

    def _background(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task:
        """Run `coro` as a task we keep (the loop holds tasks only weakly) until it is done."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _launch(self, sr: SideRuntime) -> None:
        rid = f"{sr.key.replace('/', '-')}-{sr.side}-{next(self._ids)}"
        r = sr.replicas[rid] = Replica(rid, sr.side, sr.generation, *self._free_ports(2))  # HTTP and gRPC
        r.task = asyncio.create_task(self._run(sr, r), name=f"replica {rid}")

    def _free_ports(self, n: int) -> list[int]:
        """`n` free ports none of our replicas was given: a replica binds its $PORT only once it has
        started, so until then the kernel may hand the same free port out again."""
        given = {p for sr in self._sides.values() for r in sr.replicas.values() for p in (r.http_port, r.grpc_port)}
        ports: list[int] = []
        while len(ports) < n:
            port = free_port(self.host)
            if port not in given and port not in ports:
                ports.append(port)
        return ports

    def _env(self, sr: SideRuntime, r: Replica) -> dict[str, str]:
        env = {**os.environ, **self.extra_env}
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        env.update(PORT=str(r.http_port), GRPC_PORT=str(r.grpc_port), ELASTICSERVING_REPLICA=r.id,
                   ELASTICSERVING_SERVICE=sr.key, ELASTICSERVING_SIDE=sr.side, ELASTICSERVING_BIND_HOST=self.host,
                   PYTHONUNBUFFERED="1")
        return env

    async def _model(self, sr: SideRuntime, generation: int) -> ModelVersion:
        """The side's storageUri model for this generation: pulled once, then kept (a scale-up of the
        same generation asks the storage nothing, as a Knative revision keeps its resolved digest)."""
        if sr.model is not None and sr.model[0] == generation:
            version = dataclasses.replace(sr.model[1], cached=True, seconds=0.0)  # this start pulled nothing
        else:
            version = await self.models.pull(sr.key.split("/", 1)[0], sr.spec,
                                             lambda line: log.info("%s/%s: %s", sr.key, sr.side, line))
            if sr.generation == generation:
                sr.model = (generation, version)
        how = "from the model cache, nothing downloaded" if version.cached else \
            f"downloaded in {version.seconds:.1f}s"
        size = f"{version.size / 1e6:.1f} MB" if version.size >= 100_000 else f"{version.size / 1e3:.1f} kB"
        log.info("%s/%s: model %s (%s) %s", sr.key, sr.side, version.uri, size, how)
        return version

    async def _spawn(self, sr: SideRuntime, r: Replica) -> tuple[asyncio.subprocess.Process,
                                                                 asyncio.StreamReader | None]:
        """Start the replica's process; returns it and its stdout (its stderr is `proc.stderr`)."""
        cmd = sr.spec.command(sr.key.split("/", 1)[1])
        if not cmd:
            raise RuntimeError(f"spec.{sr.side}.arg is empty: the local platform runs it as the replica command")
        env = self._env(sr, r)
        if sr.spec.storageUri:
            version = await self._model(sr, r.generation)
            env[MODEL_DIR_ENV] = str(version.path)
            env[PULL_REPORT_ENV] = json.dumps(version.report())
        if self.spawner is not None and sr.plain_generation != r.generation:
            out_r, out_w = os.pipe()
            proc = None
            try:
                proc = await self.spawner(cmd, env, out_w)  # type: ignore[misc]
            finally:
                os.close(out_w)  # the forked replica holds its own copy
                if proc is None:
                    os.close(out_r)
            if proc is not None:
                return proc, await pipe_reader(out_r)
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", cmd, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True, preexec_fn=die_with_parent)
        return proc, proc.stdout

    async def _run(self, sr: SideRuntime, r: Replica) -> None:
        """One replica's life: spawn, wait for ready, watch until it exits or is stopped."""
        while True:
            try:
                r.proc, r.stdout = await self._spawn(sr, r)
            except StorageError as exc:
                self._failed(sr, r, exc.reason, reason="ModelPullFailed")
                return
            except Exception as exc:
                self._failed(sr, r, f"cannot start replica: {exc}")
                return
            if not await self._supervise_process(sr, r):
                return
            # A forked replica hung or crashed before it was ready: this generation starts plainly.
            sr.plain_generation = r.generation
            r.started = time.monotonic()

    async def _supervise_process(self, sr: SideRuntime, r: Replica) -> bool:
        """Watch one started process, acting on `ReplicaJudge`'s verdict; True: start it again plainly."""
        assert r.proc is not None
        judge = ReplicaJudge(getattr(r.proc, "prewarmed", False), self.ready_timeout, self.prewarm_ready_timeout)
        log.info("%s/%s: started replica %s (pid %d, port %d%s)", sr.key, sr.side, r.id, r.proc.pid,
                 r.http_port, ", pre-warmed" if judge.forked else "")
        # The output is copied until its pipes close (after the replica exits), even when this
        # supervision is cancelled by a stop: the last lines of a replica are often the telling ones.
        drained = self._background(self._drain_output(sr, r), f"output of {r.id}")
        exited = asyncio.create_task(r.proc.wait())

        def verdict() -> Verdict | None:
            return judge.verdict(time.monotonic() - r.started, exited.result() if exited.done() else None,
                                 stopping=r.state == STOPPING)
        try:
            v = verdict()
            while v is None:  # probe until there is a verdict: every 1s once ready, else every probe_interval
                if judge.probed(await self._probe(r)):
                    r.state = READY
                    sr.error, sr.failures, sr.backoff_until = None, 0, 0.0
                    sr.last_start_seconds = time.monotonic() - r.started
                    log.info("%s/%s: replica %s ready after %.2fs", sr.key, sr.side, r.id, sr.last_start_seconds)
                    self.on_change(sr.key)
                    sr.wake.set()
                if (v := verdict()) is None:
                    await asyncio.wait([exited], timeout=1.0 if judge.ready else self.probe_interval)
                    v = verdict()
            if v.action == PLAIN:
                log.warning("%s/%s: pre-warmed replica %s %s; starting it plainly", sr.key, sr.side, r.id, v.message)
                _signal_group(r.proc.pid, signal.SIGKILL)
                await asyncio.wait([exited], timeout=5.0)
                return True
            if v.action == EXITED:
                await asyncio.wait([drained], timeout=1.0)  # the last lines, unless a child keeps the pipes
                tail = " | ".join(list(r.stderr_tail)[-3:])
                _signal_group(r.proc.pid, signal.SIGKILL)  # leftovers of the replica's group
                self._failed(sr, r, v.message + (f": {tail}" if tail else ""))
            elif v.action == FAILED:
                self._failed(sr, r, v.message)
                await self._stop(sr, r, reason=v.stop_reason)
        except Exception as exc:  # supervision must not die silently
            log.exception("replica %s supervision failed", r.id)
            self._failed(sr, r, f"replica supervision failed: {exc}")
        finally:
            exited.cancel()  # a no-op once it is done
        return False

    def _failed(self, sr: SideRuntime, r: Replica, message: str, reason: str = "ReplicaFailed") -> None:
        log.warning("%s/%s: %s", sr.key, sr.side, message)
        sr.replicas.pop(r.id, None)
        sr.error, sr.error_reason = message, reason
        sr.failures += 1
        sr.backoff_until = time.monotonic() + min(self.max_backoff, 0.5 * 2 ** (sr.failures - 1))
        self.on_change(sr.key)
        sr.wake.set()

    async def _drain_output(self, sr: SideRuntime, r: Replica) -> None:
        assert r.proc is not None
        with open(self.log_dir / f"{r.id}.log", "ab") if self.log_dir else contextlib.nullcontext() as logf:
            await asyncio.gather(self._drain(sr, r, r.proc.stderr, logf, is_stderr=True),
                                 self._drain(sr, r, r.stdout, logf, is_stderr=False))

    async def _drain(self, sr: SideRuntime, r: Replica, stream: asyncio.StreamReader | None, logf: Any,
                     is_stderr: bool) -> None:
        """Copy one output stream of a replica, line by line, to the side's log (and the log file);
        stderr lines also feed the tail quoted when the replica fails."""
        if stream is None:
            return
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line over the reader's limit: the reader dropped it
                line = b"(a line of more than 64 KiB was cut)\n"
            if not line:
                return
            if logf is not None:
                logf.write(line)
                logf.flush()
            sr.log.append(r.id, line)
            if is_stderr and (text := line.decode("utf-8", "replace").strip()):
                r.stderr_tail.append(text[:300])

    async def _probe(self, r: Replica) -> bool:
        assert self._session is not None
        try:
            async with self._session.get(f"http://{self.host}:{r.http_port}/ready",
                                         timeout=aiohttp.ClientTimeout(total=1.0)) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def _stop(self, sr: SideRuntime, r: Replica, reason: str = "scale down") -> None:
        if r.state == STOPPING and r.proc is None:
            return
        was_ready = r.state == READY
        r.state = STOPPING
        if was_ready:
            self.on_change(sr.key)
        proc = r.proc
        if proc is not None and proc.returncode is None:
            log.info("%s/%s: stopping replica %s (%s)", sr.key, sr.side, r.id, reason)
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.drain_timeout)
            except TimeoutError:
                _signal_group(proc.pid, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(proc.wait(), 5.0)
        # make sure nothing of the group outlives the replica
        if proc is not None:
            _signal_group(proc.pid, signal.SIGKILL)
        if r.task and r.task is not asyncio.current_task() and not r.task.done():
            r.task.cancel()
        sr.replicas.pop(r.id, None)
        sr.wake.set()


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
