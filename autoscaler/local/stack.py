"""`elasticserving up`: the whole stack on one machine, in the foreground.

Runs the controller + local platform + control API in this process and the activator as a
supervised child process; Ctrl-C or a failed start stops all that started, replicas included.
The control API listens on loopback only, behind autoscaler/control_api.py's guards: /v1/* needs the
per-run token `up` writes (autoscaler/local/token.py) and hands to the activator (`--control-token-file`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

import runtime.tracing as tracing
from autoscaler.control_api import LOOPBACK_HOSTS, build_app
from autoscaler.controller import Controller
from autoscaler.local.models import LocalModels, load_secrets
from autoscaler.local.platform import LocalPlatform
from autoscaler.local.process import die_with_parent, terminate
from autoscaler.local.running import (
    StackRecord,
    port_taken_message,
    remove_record,
    running_stacks,
    write_record,
)
from autoscaler.local.token import default_token_path, remove_token, write_token
from autoscaler.spec import PaddleService, SpecError, load_paddleservices

log = logging.getLogger("elasticserving.up")
LOG_FORMAT_ENV = "ELASTICSERVING_LOG_FORMAT"  # read by the runtime for its --log-format default


@dataclass
class StackOptions:
    files: list[str]
    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 8081
    control_port: int = 8090
    admin_port: int = 0  # the activator's /metrics /healthz /ready, on loopback (0: a free port)
    log_format: str = "text"  # text | json: the activator's and the replicas' log lines
    domain: str = "example.com"
    config: str | None = None
    log_dir: str | None = None
    tick_seconds: float = 2.0
    ready_timeout: float = 120.0
    activator_args: list[str] = field(default_factory=list)
    prewarm: bool = False
    prewarm_ready_timeout: float = 10.0
    prometheus_port: int | None = None  # run a local Prometheus scraping the stack on this port
    token_file: str | None = None  # where to write the control API token (default: default_token_path)
    allowed_hosts: list[str] = field(default_factory=list)  # Host names accepted besides loopback
    model_cache: str | None = None  # storageUri models (default: autoscaler.local.models.default_cache_dir)

    @property
    def token_path(self) -> Path:
        return Path(self.token_file) if self.token_file else default_token_path(self.control_port)


def load_defaults(path: str | None) -> dict[str, Any]:
    """Cluster-level autoscaling defaults: a YAML mapping of Knative config-autoscaler keys
    (or a ConfigMap manifest whose `data` holds them)."""
    if not path:
        return {}
    data = yaml.safe_load(Path(path).read_text()) or {}
    if isinstance(data, dict) and data.get("kind") == "ConfigMap":
        data = data.get("data") or {}
    if not isinstance(data, dict):
        raise SpecError("config", f"{path}: expected a mapping of config-autoscaler keys")
    return {str(k): v for k, v in data.items()}


def load_files(files: list[str], defaults: dict[str, Any]) -> list[PaddleService]:
    out: list[PaddleService] = []
    for f in files:
        try:
            text = Path(f).read_text(encoding="utf-8")
        except OSError as exc:
            raise SpecError("", f"{f}: {exc.strerror}") from None
        try:
            out.extend(load_paddleservices(text, defaults))
        except SpecError as exc:
            raise exc.located(f) from None
    return out


class PortTaken(OSError):
    """A port `up` could not bind; `role` names it as the "is up" line does (autoscaler/local/running.py)."""

    def __init__(self, errno_: int | None, host: str, port: int, reason: str, role: str) -> None:
        super().__init__(errno_, f"cannot listen on {host}:{port}: {reason}")
        self.host, self.port, self.reason, self.role = host, port, reason, role

    def explain(self) -> str:
        """The message with who holds the port and how to choose another (reads the running stacks)."""
        return port_taken_message(self.role, self.host, self.port, self.reason, running_stacks())


def _cannot_listen(host: str, port: int, exc: OSError, role: str) -> PortTaken:
    reason = os.strerror(exc.errno) if exc.errno else str(exc)  # not socket.create_server's repr of the address
    return PortTaken(exc.errno, host, port, reason, role)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def listening_socket(host: str, port: int, role: str = "activator HTTP") -> socket.socket:
    """A listening TCP socket on host:port (0: a free port), to hand down to a child."""
    try:
        return socket.create_server((host, port), family=_family(host), backlog=1024)
    except OSError as exc:
        raise _cannot_listen(host, port, exc, role) from None


def reserved_port(host: str, port: int, role: str = "gRPC") -> socket.socket:
    """Hold host:port (0: a free port) without listening on it: bound with SO_REUSEPORT, so a child that
    also sets it (gRPC does by default on Linux) can bind and listen there, while nobody else can take
    the port, and a `bind(0)` never hands it out, for as long as this socket is open."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        # First without SO_REUSEPORT: a port another stack of this user holds (its reservation or its gRPC
        # listener, both with SO_REUSEPORT) would otherwise be shared with it silently.
        sock.bind((host, port))
        port = sock.getsockname()[1]
        sock.close()
        sock = socket.socket(_family(host), socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise _cannot_listen(host, port, exc, role) from None
    return sock


class ActivatorProcess:
    """The activator as a child process, restarted if it dies.

    `up` binds the activator's ports itself, before anything else starts, and keeps them across restarts:
    the HTTP and admin listeners are handed down as file descriptors (a client connecting during a restart
    waits in the backlog instead of being refused); the gRPC port is held by `reserved_port`, as grpcio
    cannot serve an inherited socket. Binding a free port later, in another process, raced with others.
    """

    def __init__(self, opts: StackOptions) -> None:
        self.opts = opts
        with contextlib.ExitStack() as bound:  # all three, or none left open
            self._http = bound.enter_context(listening_socket(opts.host, opts.http_port, "activator HTTP"))
            self._grpc = bound.enter_context(reserved_port(opts.host, opts.grpc_port, "gRPC"))
            # /metrics /healthz /ready live off the public port
            self._admin = bound.enter_context(listening_socket("127.0.0.1", opts.admin_port, "admin"))
            bound.pop_all()
        self.http_port, self.grpc_port, self.admin_port = (s.getsockname()[1]
                                                           for s in (self._http, self._grpc, self._admin))
        self.proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False

    def close_sockets(self) -> None:
        for sock in (self._http, self._grpc, self._admin):
            sock.close()

    async def start(self) -> None:
        await self._spawn()
        self._task = asyncio.create_task(self._supervise())

    async def _spawn(self) -> None:
        o = self.opts
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "activator",
            "--host", o.host, "--http-fd", str(self._http.fileno()), "--grpc-port", str(self.grpc_port),
            "--domain", o.domain, "--autoscaler", f"http://127.0.0.1:{o.control_port}",
            "--control-token-file", str(o.token_path), "--admin-host", "127.0.0.1",  # named in its log line
            "--admin-fd", str(self._admin.fileno()), "--log-format", o.log_format, *o.activator_args,
            stdin=asyncio.subprocess.DEVNULL, preexec_fn=die_with_parent,
            pass_fds=(self._http.fileno(), self._admin.fileno()))

    async def _supervise(self) -> None:
        while not self._stopping:
            assert self.proc is not None
            code = await self.proc.wait()
            if self._stopping:
                return
            log.error("activator exited with code %s; restarting", code)
            await asyncio.sleep(0.5)
            await self._spawn()

    async def wait_listening(self, timeout: float = 30.0) -> bool:
        url = f"http://127.0.0.1:{self.admin_port}/ready"  # the admin listener: ready once routes are in
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with s.get(url, timeout=aiohttp.ClientTimeout(total=1)) as r:
                        if r.status == 200:
                            return True
                await asyncio.sleep(0.05)
        return False

    async def stop(self) -> None:
        self._stopping = True
        if self._task:
            self._task.cancel()
        await terminate(self.proc)
        self.close_sockets()


async def run_stack(opts: StackOptions, stop: asyncio.Event | None = None) -> int:
    defaults = load_defaults(opts.config)
    services = load_files(opts.files, defaults)  # refuse bad input before starting anything
    async with contextlib.AsyncExitStack() as stack:  # each piece's teardown, in reverse order of the starts
        tracing.setup("elasticserving-autoscaler")  # the scale-from-zero spans (OTEL_*; off without an endpoint)
        stack.callback(tracing.shutdown)
        token = secrets.token_urlsafe(32)
        # The token file and the record, written once the ports are ours, go last: after every port and process
        # they describe (`opts` as it is then, with the ports we got; nothing written, nothing removed).
        stack.callback(remove_record)
        stack.callback(lambda: remove_token(opts.token_path, token))
        launcher = None
        if opts.prewarm:
            from autoscaler.local.prewarm import PrewarmLauncher  # optional: pre-warmed replica start

            launcher = PrewarmLauncher()
            stack.push_async_callback(launcher.close)
            await launcher.start()
        models = LocalModels(Path(opts.model_cache) if opts.model_cache else None,
                             secrets=load_secrets([Path(f).read_text(encoding="utf-8") for f in opts.files]))
        platform = LocalPlatform(host="127.0.0.1", log_dir=opts.log_dir, ready_timeout=opts.ready_timeout,
                                 spawner=launcher and launcher.spawn, warm=launcher and launcher.warm,
                                 prewarm_ready_timeout=opts.prewarm_ready_timeout, models=models,
                                 env={LOG_FORMAT_ENV: opts.log_format})  # the runtime's --log-format default
        controller = Controller(platform, domain=opts.domain, defaults=defaults, tick_seconds=opts.tick_seconds)
        runner = web.AppRunner(build_app(controller, token=token, logs=platform.logs,
                                         allowed_hosts=[*LOOPBACK_HOSTS, *opts.allowed_hosts]),
                               access_log=None, shutdown_timeout=5.0)
        await runner.setup()  # no socket yet
        stack.push_async_callback(runner.cleanup)
        # The controller (replicas) stops before the control API: its logs end, and `logs -f` streams with them.
        stack.push_async_callback(controller.close)
        await controller.start()
        # Signals stop the stack cleanly from here on, before "is up" tells anyone to press Ctrl-C.
        stop = stop or asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        with contextlib.ExitStack() as bound:  # closed here if the site cannot start, else by runner.cleanup
            control = bound.enter_context(listening_socket("127.0.0.1", opts.control_port, "control API"))
            await web.SockSite(runner, control).start()
            bound.pop_all()
        opts = replace(opts, control_port=control.getsockname()[1])  # 0 asks for a free port: the one we got
        # The activator's ports next, before any replica starts choosing free ports of its own.
        activator = ActivatorProcess(opts)
        stack.callback(activator.close_sockets)
        opts = replace(opts, http_port=activator.http_port, grpc_port=activator.grpc_port,
                       admin_port=activator.admin_port)
        write_token(opts.token_path, token)  # once the port is ours: a stack that fails to bind leaves it
        write_record(StackRecord(os.getpid(), stack_ports(opts), tuple(opts.files)))
        for svc in services:
            await controller.apply(svc)
        stack.push_async_callback(activator.stop)
        await activator.start()
        stack.callback(controller.routes.close)  # before the activator stops: its long-polls answer at once
        if not await activator.wait_listening():
            log.error("the activator did not start listening on port %d", opts.http_port)
            return 1
        print(f"ElasticServing is up: activator http://{opts.host}:{opts.http_port} (gRPC {opts.grpc_port}), "
              f"control API http://127.0.0.1:{opts.control_port}, admin http://127.0.0.1:{opts.admin_port}",
              flush=True)
        for svc in services:
            print(f"  {svc.key}: {svc.url(opts.domain)}  (Host: {svc.host(opts.domain)})", flush=True)
        if opts.prometheus_port:
            from autoscaler.local.prometheus import LocalPrometheus

            prometheus = LocalPrometheus(f"127.0.0.1:{activator.admin_port}", f"127.0.0.1:{opts.control_port}",
                                         port=opts.prometheus_port, token_file=str(opts.token_path))
            stack.push_async_callback(prometheus.close)
            await prometheus.start()
            print(f"  Prometheus: {prometheus.url} (dashboards: deploy/monitoring/grafana-dashboard.json)",
                  flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        await stop.wait()
        print("Stopping ElasticServing...", flush=True)
        return 0


def stack_ports(opts: StackOptions) -> dict[str, int]:
    """Every port the stack holds, by the name the "is up" line and the messages give it."""
    ports = {"activator HTTP": opts.http_port, "gRPC": opts.grpc_port, "control API": opts.control_port,
             "admin": opts.admin_port}
    if opts.prometheus_port:
        ports["Prometheus"] = opts.prometheus_port
    return ports


def up(opts: StackOptions) -> int:
    # This process's own few lines (scaling, replicas) stay text: its JSON formatter would be a copy of the
    # activator's, which autoscaler/ may not import (tests/test_layering.py).
    logging.basicConfig(level=os.environ.get("ELASTICSERVING_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return asyncio.run(run_stack(opts))
    except (SpecError, OSError) as exc:
        print(f"error: {exc.explain() if isinstance(exc, PortTaken) else exc}", file=sys.stderr)
        return 2 if isinstance(exc, SpecError) else 1
