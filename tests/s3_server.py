"""Test helper: a real S3-compatible server (SeaweedFS `weed server -s3`, built by scripts/build-seaweedfs.sh)
on loopback (or another local address) with SigV4 identities, driven with the MinIO client the product
uses (runtime/storage/s3.py); the session fixture `s3_server` is in tests/conftest.py."""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import secrets
import shutil
import signal
import string
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import urllib3

from tests.helpers import free_ports, require_binary

if TYPE_CHECKING:
    from minio import Minio

REGION = "us-east-1"
# weed's default ports (volume 8080, filer 8888, ...) are never used: every port is passed explicitly.
BIND_RACE = ("address already in use", "bind: address")
_PR_SET_PDEATHSIG = 1


def require_weed() -> Path:
    """The `weed` scripts/build-seaweedfs.sh built ($WEED first), or skip (fail when CI is set)."""
    return require_binary("weed", "WEED", "scripts/build-seaweedfs.sh")


def _random_key(n: int, alphabet: str) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL weed if the test process dies without stopping it (no orphan left behind).
    Linux sends it when the thread that started weed ends: start the server from a long-lived thread."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass
class S3Server:
    """A running SeaweedFS S3 gateway. `access_key`/`secret_key` are the admin identity's (all actions);
    `read_only_access_key`/`read_only_secret_key` may only Read and List. Secrets stay out of repr()."""

    endpoint: str
    access_key: str
    secret_key: str = field(repr=False)
    read_only_access_key: str
    read_only_secret_key: str = field(repr=False)
    region: str = REGION
    answer_seconds: float = 0.0  # from start until a signed ListBuckets answered
    start_seconds: float = 0.0  # from start until writable (a put succeeded): what the fixture waits for
    workdir: Path = field(default_factory=Path)
    pid: int = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / "weed.log"

    def client(self, access_key: str | None = None, secret_key: str | None = None, *,
               signed: bool = True, retries: int = 3) -> Minio:
        """A MinIO client (path-style, SigV4, this server's region: no GetBucketLocation) for this server,
        set up as runtime/storage/s3.py sets up its own: the admin identity unless keys are given;
        `signed=False` sends anonymous (unsigned) requests. `retries`: attempts per request (connection
        errors and 5xx answers), with 5 s connect and 30 s read timeouts."""
        from minio import Minio

        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5, read=30),
            retries=urllib3.Retry(total=max(retries - 1, 0), connect=max(retries - 1, 0), read=0,
                                  backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]))
        netloc = urllib3.util.parse_url(self.endpoint).netloc
        if not signed:
            return Minio(netloc, secure=False, region=self.region, http_client=http)
        return Minio(netloc, access_key=access_key or self.access_key, secret_key=secret_key or self.secret_key,
                     secure=False, region=self.region, http_client=http)

    def read_only_client(self) -> Minio:
        return self.client(self.read_only_access_key, self.read_only_secret_key)

    def make_bucket(self, name: str) -> str:
        """Create bucket `name` (no error if this server already has it); returns the name."""
        _make_bucket(self.client(), name)
        return name

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.client().put_object(bucket, key, io.BytesIO(data), len(data))

    def env(self, read_only: bool = False) -> dict[str, str]:
        """The AWS_* variables a process (runtime/storage) needs to reach this server as an identity."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.read_only_access_key if read_only else self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.read_only_secret_key if read_only else self.secret_key,
        }


def get_bytes(client: Minio, bucket: str, key: str) -> bytes:
    """The whole body of one object (the connection goes back to the pool)."""
    resp = client.get_object(bucket, key)
    try:
        return resp.read()
    finally:
        resp.close()
        resp.release_conn()


def _make_bucket(client: Minio, name: str) -> None:
    from minio.error import S3Error

    try:
        client.make_bucket(name)
    except S3Error as exc:
        if exc.code != "BucketAlreadyOwnedByYou":
            raise


def _identities(admin: tuple[str, str], reader: tuple[str, str]) -> dict[str, Any]:
    def ident(name: str, keys: tuple[str, str], actions: list[str]) -> dict[str, Any]:
        return {"name": name, "actions": actions,
                "credentials": [{"accessKey": keys[0], "secretKey": keys[1]}]}

    # No "anonymous" identity: an unsigned request is denied.
    return {"identities": [ident("admin", admin, ["Admin", "Read", "List", "Tagging", "Write"]),
                           ident("reader", reader, ["Read", "List"])]}


def _weed_command(weed: Path, workdir: Path, ports: list[int], host: str = "127.0.0.1") -> list[str]:
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = ports
    return [
        str(weed), f"-logdir={workdir / 'logs'}", "server",
        # `host` is both what every server binds and what it announces to the others.
        f"-ip={host}", f"-ip.bind={host}", f"-dir={workdir / 'data'}",
        # Every port explicit: weed's defaults collide with the stack (volume 8080), and the gRPC ones
        # would otherwise be port+10000 (not checked free).
        f"-master.port={master}", f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={workdir / 'identities.json'}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.iam=false",
        f"-filer.localSocket={workdir / 'filer.sock'}", f"-s3.localSocket={workdir / 's3.sock'}",
        # Small and quick: volumes are sparse files grown one per bucket (see _weed_env) up to 128 MB, at
        # most 100 (a bucket is a collection with volumes of its own); no telemetry; no 10 s drain on stop.
        "-master.telemetry=false", "-master.volumeSizeLimitMB=128", "-volume.max=100",
        "-volume.preStopSeconds=0",
    ]


def _weed_env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEED_", "AWS_"))}
    # HOME and cwd are the workdir, so no ~/.seaweedfs/*.toml applies; TMPDIR keeps weed's temp files there.
    env.update(HOME=str(workdir), TMPDIR=str(workdir / "tmp"),
               # One volume per bucket (collection) at a time instead of 7; no allocation hold at start.
               WEED_MASTER_VOLUME_GROWTH_COPY_1="1", WEED_MASTER_VOLUME_GROWTH_ALLOCATION_DEFERRAL="0s")
    return env


def _probe_errors() -> tuple[type[BaseException], ...]:
    """What a probe of a server still starting may raise: an S3 error answer, a non-S3 answer (weed's
    HTTP layer before the gateway), a connection or timeout error (urllib3), an OS error."""
    from minio.error import MinioException

    return (MinioException, urllib3.exceptions.HTTPError, OSError)


def _answers(server: S3Server) -> bool:
    """A signed ListBuckets answers (the S3 gateway is up and checks signatures)."""
    try:
        server.client(retries=1).list_buckets()
        return True
    except _probe_errors():
        return False


def _writes(server: S3Server, bucket: str) -> bool:
    """A PutObject succeeds. Until the embedded filer has joined the master's lock ring (~8 s after
    ListBuckets answers, weed's membership confirm of a fresh filer store), a put blocks server-side."""
    c = server.client(retries=1)
    try:
        _make_bucket(c, bucket)
        c.put_object(bucket, "probe", io.BytesIO(b"ready"), 5)
        c.remove_object(bucket, "probe")
        c.remove_bucket(bucket)
        return True
    except _probe_errors():
        return False


def _poll(proc: subprocess.Popen, deadline: float, ready: Callable[[], bool]) -> bool:
    """Poll `ready` until it is true (True), or until the process exits or the deadline passes (False)."""
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            return True
        time.sleep(0.1)
    return False


def _group_alive(pgid: int) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{d}/stat").read_text()
                fields = stat[stat.rindex(")") + 2:].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    pids.append(int(d))
    return pids


def _stop(proc: subprocess.Popen, grace: float = 1.0) -> None:
    """SIGTERM weed's process group, SIGKILL it after `grace` seconds; raise if any process survives.
    The grace is short on purpose: a graceful stop takes ~15 s (the filer retries flushing its metadata
    log after the embedded volume server has gone), and nothing of a test server's data is worth that."""
    pgid = proc.pid  # start_new_session: weed leads its own group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.1)
        left = _group_alive(pgid)
        if not left:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"weed processes {left} survived SIGKILL")


def _remove_grpc_sockets(ports: list[int]) -> None:
    """weed puts a Unix socket per gRPC port in /tmp (hard-coded) and removes it only on a graceful stop."""
    for name, port in zip(("master", "volume", "filer", "s3"), ports[1::2], strict=True):
        path = Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock")
        with contextlib.suppress(OSError):
            if path.is_socket():
                path.unlink()


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def run_s3_server(weed: Path | None = None, timeout: float = 60.0, wait_writable: bool = True,
                  host: str = "127.0.0.1") -> Iterator[S3Server]:
    """Start `weed server -s3` on free ports of `host` (an IPv4 address of this machine: what weed binds
    and announces, and the endpoint's host; a cluster test passes the node's bridge address so Pods reach
    it) with fresh random keys and data in a temp dir; yield
    an S3Server once a signed ListBuckets answers and (unless `wait_writable` is false) a put succeeds;
    on exit stop it (every process of its group) and remove its files. A port taken between choosing
    and binding it: weed exits, and it starts again on other ports (up to three times)."""
    weed = weed or require_weed()
    workdir = Path(tempfile.mkdtemp(prefix="es-s3-"))
    proc: subprocess.Popen | None = None
    ports: list[int] = []
    try:
        for d in ("data", "logs", "tmp"):
            (workdir / d).mkdir()
        alnum = string.ascii_uppercase + string.digits
        admin = ("ES" + _random_key(18, alnum), _random_key(40, string.ascii_letters + string.digits))
        reader = ("ESRO" + _random_key(16, alnum), _random_key(40, string.ascii_letters + string.digits))
        config = workdir / "identities.json"
        config.touch(mode=0o600)
        config.write_text(json.dumps(_identities(admin, reader)))
        for attempt in range(3):
            ports = free_ports(8, host)
            server = S3Server(endpoint=f"http://{host}:{ports[6]}", workdir=workdir,
                              access_key=admin[0], secret_key=admin[1],
                              read_only_access_key=reader[0], read_only_secret_key=reader[1])
            start = time.monotonic()
            with open(server.log_path, "ab") as log:
                proc = subprocess.Popen(_weed_command(weed, workdir, ports, host), cwd=workdir,
                                        env=_weed_env(workdir), stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        preexec_fn=_die_with_parent)
            server.pid = proc.pid
            deadline = start + timeout
            if _poll(proc, deadline, lambda s=server: _answers(s)):
                server.answer_seconds = time.monotonic() - start
                probe = f"es-ready-{secrets.token_hex(4)}"
                if not wait_writable or _poll(proc, deadline, lambda s=server, b=probe: _writes(s, b)):
                    server.start_seconds = time.monotonic() - start
                    break
            code = proc.poll()
            _stop(proc)
            proc = None
            tail = _log_tail(server.log_path)
            if code is not None and attempt < 2 and any(m in tail.lower() for m in BIND_RACE):
                _remove_grpc_sockets(ports)
                continue
            what = f"exited with code {code}" if code is not None else f"was not ready within {timeout:g}s"
            raise AssertionError(f"weed server {what}; the end of its log:\n{tail}")
        yield server
    finally:
        try:
            if proc is not None:
                _stop(proc)
        finally:
            if ports:
                _remove_grpc_sockets(ports)
            shutil.rmtree(workdir, ignore_errors=True)
