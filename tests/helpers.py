"""Shared test helpers: free ports, polling with a deadline, finding replica and child processes, running
`elasticserving up` as a real process on loopback, and the seeded byte mutator of the fuzz tests."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


# The stack under test runs on these in other tests: never handed out as free.
RESERVED_PORTS = frozenset({8080, 8081, 8090})


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct free ports on the IPv4 address `host` (all held open together while chosen), none of
    RESERVED_PORTS."""
    held: list[socket.socket] = []
    try:
        while len(held) < n:
            s = socket.socket()
            s.bind((host, 0))
            if s.getsockname()[1] in RESERVED_PORTS:
                s.close()
                continue
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def wait_for(predicate: Callable[[], T], timeout: float, interval: float = 0.05, what: str = "condition") -> T:
    """Poll `predicate` until it returns a truthy value; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


def child_pids(parent: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                out.append(int(d))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of process `pid` so far (all its threads, not its children; Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """cpu_seconds of `root` and of every process under it that is still running."""
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        try:
            total += cpu_seconds(pid)
        except OSError:  # it ended meanwhile
            continue
        todo += child_pids(pid)
    return total


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def replica_pids(service_key: str | None = None) -> list[int]:
    """Processes started by a local platform (they carry ELASTICSERVING_SERVICE in their environment)."""
    return sorted(_replica_procs(service_key))


def replica_ids(service_key: str | None = None) -> set[str]:
    """Distinct live replicas (a replica may be a shell and its child, both carrying the same id)."""
    return set(_replica_procs(service_key).values())


def _replica_procs(service_key: str | None) -> dict[int, str]:
    pids: dict[int, str] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            env = Path(f"/proc/{d}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        values = dict(kv.split(b"=", 1) for kv in env if b"=" in kv)
        svc = values.get(b"ELASTICSERVING_SERVICE")
        if svc is not None and (service_key is None or svc.decode() == service_key):
            pids[int(d)] = values.get(b"ELASTICSERVING_REPLICA", b"").decode()
    return pids


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 60.0, raw: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None and "Content-Type" not in (headers or {}):
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@dataclass
class Stack:
    """A running `elasticserving up` process."""

    proc: subprocess.Popen
    http_port: int
    grpc_port: int
    control_port: int
    token_file: Path | None = None  # the control API's bearer token (`up --token-file`)
    output: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def control(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    def request(self, host: str, path: str, body: Any = None, raw: bytes | None = None,
                timeout: float = 60.0, headers: dict[str, str] | None = None):
        h = {"Host": host, **(headers or {})}
        return http("POST" if (body is not None or raw is not None) else "GET", self.base + path, body,
                    h, timeout, raw)

    @property
    def token(self) -> str:
        assert self.token_file is not None
        return self.token_file.read_text().strip()

    def control_http(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                     timeout: float = 60.0) -> tuple[int, dict[str, str], bytes]:
        """A control API call with the stack's token (what the CLI and the activator send)."""
        h = {"Authorization": f"Bearer {self.token}"} if self.token_file else {}
        return http(method, self.control + path, body, {**h, **(headers or {})}, timeout)

    def service(self, key: str) -> dict[str, Any]:
        status, _, data = self.control_http("GET", f"/v1/paddleservices/{key}")
        assert status == 200, data
        return json.loads(data)

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        token = ["--token-file", str(self.token_file)] if self.token_file and "--token-file" not in args else []
        return subprocess.run([sys.executable, "-m", "autoscaler.local.cli", *args, "--server", self.control,
                               *token], capture_output=True, text=True, timeout=timeout, cwd=ROOT)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def write_yaml(path: Path, *docs: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump_all(list(docs), allow_unicode=True))
    return path


def paddleservice(name: str, namespace: str, arg: str, **service: Any) -> dict[str, Any]:
    return {
        "apiVersion": "elasticserving.paddlepaddle.org/v1", "kind": "PaddleService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"default": {"arg": arg, "containerImage": "elasticserving/runtime-lac", "tag": "latest",
                             "port": 9292}, "runtimeVersion": "paddleserving", "service": service},
    }


UP_LINE = re.compile(r"ElasticServing is up: activator http://\S+:(\d+) \(gRPC (\d+)\), "
                     r"control API http://127\.0\.0\.1:(\d+)")


def start_stack(tmp: Path, files: list[Path | str], config: dict[str, Any] | None = None,
                extra: list[str] | None = None, timeout: float = 60.0) -> Stack:
    """`elasticserving up` on free ports (port 0: the stack binds them and its "is up" line names them;
    choosing free ports here and binding them later raced with everything else choosing free ports)."""
    cfg = tmp / "autoscaler-config.yaml"
    cfg.write_text(yaml.safe_dump(config or {}))
    token_file = tmp / "control.token"
    cmd = [sys.executable, "-m", "autoscaler.local.cli", "up", "--http-port", "0", "--grpc-port", "0",
           "--control-port", "0", "--config", str(cfg), "--log-dir", str(tmp / "logs"),
           "--token-file", str(token_file), *(extra or [])]
    for f in files:
        cmd += ["-f", str(f)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            start_new_session=True)
    stack = Stack(proc, 0, 0, 0, token_file)
    up = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            stack.output.append(line.rstrip())
            m = UP_LINE.search(line)
            if m and not up.is_set():
                stack.http_port, stack.grpc_port, stack.control_port = (int(g) for g in m.groups())
                up.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not up.wait(0.1):
        if proc.poll() is not None or time.monotonic() > deadline:
            stack.stop(signal.SIGKILL)
            raise AssertionError("stack did not come up:\n" + "\n".join(stack.output[-40:]))
    return stack


def wait_answering(p: subprocess.Popen, url: str, timeout: float, what: str) -> None:
    """Poll GET `url` until it answers 200; RuntimeError at once when the process `p` exits first."""
    def up() -> bool:
        if p.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with code {p.returncode}")
        try:
            return http("GET", url, timeout=1)[0] == 200
        except OSError:
            return False

    wait_for(up, timeout, 0.05, what)


BIND_RACE = ("address already in use", "failed to bind to address")


def start_runtime(*args: str, grpc: bool = False, timeout: float = 90.0) -> tuple[subprocess.Popen, int, int | None]:
    """`python -m runtime ARGS` on loopback free ports; returns once /ready answers 200.

    A free port chosen here is bound by the runtime only seconds later, after its imports; if someone
    took it meanwhile the runtime exits with "address already in use" and it starts again on other
    ports (up to three times)."""
    for attempt in range(3):
        port = free_port()
        grpc_port = free_port() if grpc else None
        p = subprocess.Popen([sys.executable, "-m", "runtime", "--port", str(port), "--host", "127.0.0.1", *args],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "GRPC_PORT": str(grpc_port or ""),
                                  "ELASTICSERVING_LOG_LEVEL": "WARNING"})
        try:
            wait_answering(p, f"http://127.0.0.1:{port}/ready", timeout, "runtime ready")
            return p, port, grpc_port
        except RuntimeError:  # it exited
            err = p.stderr.read()
            if attempt == 2 or not any(m in err.lower() for m in BIND_RACE):
                raise AssertionError(f"runtime exited with code {p.returncode}: {err}") from None
    raise AssertionError("unreachable")


def read_answer(sock: socket.socket, reader=None) -> tuple[int, dict[bytes, bytes], bytes]:
    """One HTTP answer (Content-Length framed, as the activator always sends); pass the same buffered
    `reader` (sock.makefile("rb")) for pipelined answers. socket.timeout = a hang."""
    reader = reader or sock.makefile("rb")
    line = reader.readline(65536)
    if not line:
        raise ConnectionError("closed before an answer")
    headers: dict[bytes, bytes] = {}
    while (h := reader.readline(65536)) not in (b"\r\n", b""):
        k, _, v = h.partition(b":")
        headers[k.strip().lower()] = v.strip()
    body = reader.read(int(headers.get(b"content-length", b"0")))
    return int(line.split()[1]), headers, body


def require_binary(name: str, env_var: str, script: str) -> Path:
    """A program one of our scripts builds: $ENV_VAR, the repo's .cache/bin, the home cache, then PATH.
    Missing, the test is skipped, or fails when CI is set (so a broken build never passes silently)."""
    import shutil

    import pytest

    home_cache = Path(os.environ.get("ELASTICSERVING_CACHE") or Path.home() / ".cache/elasticserving")
    for c in (os.environ.get(env_var), str(ROOT / ".cache/bin" / name), str(home_cache / "bin" / name),
              shutil.which(name)):
        if c and os.access(c, os.X_OK):
            return Path(c)
    msg = f"{name} not built (run {script} or scripts/install-test-tools.sh)"
    if os.environ.get("CI"):
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def mutate(rng: random.Random, data: bytes, tokens: list[bytes], max_cut: int) -> bytes:
    """`data` with 1 to 4 edits drawn from `rng`: a byte replaced, one of `tokens` inserted, up to `max_cut`
    bytes deleted, or the rest cut off."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        pos = rng.randrange(len(out) + 1)
        if op == 0 and out:
            out[min(pos, len(out) - 1)] = rng.randrange(256)
        elif op == 1:
            out[pos:pos] = rng.choice(tokens)
        elif op == 2:
            del out[pos:pos + rng.randint(1, max_cut)]
        else:
            out = out[:pos]
    return bytes(out)
