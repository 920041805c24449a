"""A throwaway control plane for the kubernetes tests: etcd + kube-apiserver on loopback.

Sits under tests/kubernetes/conftest.py: generates certificates and a service-account key pair with
openssl, an admin token (system:masters), starts both servers, writes a kubeconfig, and can restart
the API server in place (same port, same etcd) for the reliability tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.helpers import free_port, wait_for  # noqa: F401 - wait_for re-exported for the kubernetes tests

ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "elasticserving-test-admin-token"


def find_kube_apiserver() -> Path | None:
    """The binary built by scripts/build-kube-apiserver.sh (repo cache, then home cache, then PATH)."""
    candidates = [
        os.environ.get("KUBE_APISERVER"),
        str(ROOT / ".cache/bin/kube-apiserver"),
        str(Path.home() / ".cache/elasticserving/bin/kube-apiserver"),
        shutil.which("kube-apiserver"),
    ]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return Path(c)
    return None


def find_etcd() -> Path | None:
    found = os.environ.get("ETCD") or shutil.which("etcd")
    return Path(found) if found else None


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _generate_pki(d: Path) -> None:
    """Self-signed serving certificate for 127.0.0.1/localhost and the service-account key pair."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key",
             "-out", "apiserver.crt", "-days", "2", "-subj", "/CN=kube-apiserver",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc",
             cwd=d)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)


@dataclass
class Cluster:
    """etcd + kube-apiserver on loopback, managed by the test session."""

    workdir: Path
    apiserver_bin: Path
    etcd_bin: Path
    etcd_port: int = field(default_factory=free_port)
    etcd_peer_port: int = field(default_factory=free_port)
    port: int = field(default_factory=free_port)
    etcd: subprocess.Popen | None = None
    apiserver: subprocess.Popen | None = None
    restarts: int = 0

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "apiserver.crt"

    def env(self) -> dict[str, str]:
        """Environment for kubectl / the controller: the test kubeconfig only."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self, deadline_seconds: float = 90.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        _generate_pki(self.workdir)
        (self.workdir / "tokens.csv").write_text(f'{ADMIN_TOKEN},admin,admin,"system:masters"\n')
        self._write_kubeconfig()
        self._start_etcd()
        self.start_apiserver(deadline_seconds)

    def _start_etcd(self) -> None:
        data = self.workdir / "etcd-data"
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        log = open(self.workdir / "etcd.log", "wb")
        self.etcd = subprocess.Popen(
            [str(self.etcd_bin), "--name", "test", "--data-dir", str(data),
             "--listen-client-urls", client, "--advertise-client-urls", client,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"test={peer}", "--log-level", "warn"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.etcd.poll() is not None:
                raise RuntimeError(f"etcd exited: {self._tail('etcd.log')}")
            try:
                with urllib.request.urlopen(f"{client}/health", timeout=2) as r:
                    if b"true" in r.read():
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"etcd not healthy after 30s: {self._tail('etcd.log')}")

    def start_apiserver(self, deadline_seconds: float = 90.0) -> None:
        d = self.workdir
        log = open(d / "kube-apiserver.log", "ab")
        self.apiserver = subprocess.Popen(
            [str(self.apiserver_bin),
             f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
             "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
             f"--secure-port={self.port}",
             f"--tls-cert-file={d / 'apiserver.crt'}", f"--tls-private-key-file={d / 'apiserver.key'}",
             f"--token-auth-file={d / 'tokens.csv'}",
             "--authorization-mode=RBAC",
             f"--service-account-key-file={d / 'sa.pub'}",
             f"--service-account-signing-key-file={d / 'sa.key'}",
             "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
             "--service-cluster-ip-range=10.96.0.0/24",
             "--endpoint-reconciler-type=none",
             "--enable-priority-and-fairness=false",
             "--profiling=false",
             f"--cert-dir={d / 'certs'}",
             "--v=1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_ready(deadline_seconds)

    def wait_ready(self, deadline_seconds: float) -> None:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        deadline = time.monotonic() + deadline_seconds
        last = ""
        while time.monotonic() < deadline:
            assert self.apiserver is not None
            if self.apiserver.poll() is not None:
                raise RuntimeError(f"kube-apiserver exited ({self.apiserver.returncode}): "
                                   f"{self._tail('kube-apiserver.log')}")
            req = urllib.request.Request(f"{self.server}/readyz",
                                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            try:
                with urllib.request.urlopen(req, timeout=3, context=ctx) as r:
                    if r.status == 200:
                        return
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
            except (OSError, urllib.error.URLError) as e:
                last = str(e)
            time.sleep(0.2)
        raise RuntimeError(f"kube-apiserver not ready after {deadline_seconds:g}s ({last}): "
                           f"{self._tail('kube-apiserver.log')}")

    def stop_apiserver(self, graceful: bool = True) -> None:
        if not graceful and self.apiserver is not None and self.apiserver.poll() is None:
            self.apiserver.kill()
            self.apiserver.wait(10)
        _stop(self.apiserver)
        self.apiserver = None

    def restart_apiserver(self, graceful: bool = True) -> float:
        """Stop (SIGTERM, or SIGKILL: a crash) and start kube-apiserver on the same port and etcd;
        returns the outage in seconds."""
        t0 = time.monotonic()
        self.stop_apiserver(graceful)
        t1 = time.monotonic()
        self.restarts += 1
        self.start_apiserver()
        t2 = time.monotonic()
        print(f"kube-apiserver restart: stop {t1 - t0:.1f}s, start until ready {t2 - t1:.1f}s")
        return t2 - t0

    def stop(self) -> None:
        _stop(self.apiserver)
        _stop(self.etcd)

    # ---- helpers ------------------------------------------------------------------------------
    def _write_kubeconfig(self) -> None:
        cfg = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": self.server,
                                                       "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": "admin", "user": {"token": ADMIN_TOKEN}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
            "current-context": "test",
        }
        self.kubeconfig.write_text(yaml.safe_dump(cfg))

    def _tail(self, name: str, n: int = 3000) -> str:
        try:
            return (self.workdir / name).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True,
                              env=self.env(), timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): "
                                 f"{proc.stderr.strip()} {proc.stdout.strip()}")
        return proc

    def get_json(self, *args: str) -> dict | None:
        """`kubectl get ARGS -o json`, None when not found."""
        proc = self.kubectl("get", *args, "-o", "json", check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr or "not found" in proc.stderr:
                return None
            raise AssertionError(f"kubectl get {' '.join(args)}: {proc.stderr.strip()}")
        return json.loads(proc.stdout)

    def apply_yaml(self, text: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.kubectl("apply", "-f", "-", input=text, check=check)


def condition(obj: dict | None, cond_type: str) -> dict | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == cond_type:
            return c
    return None


def _stop(proc: subprocess.Popen | None, timeout: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@dataclass
class ControllerProc:
    """`python -m autoscaler.kube.main` as a real process against the test API server."""

    cluster: Cluster
    identity: str
    extra: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.cluster.workdir / f"controller-{self.identity}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_file(self) -> Path:
        path = self.cluster.workdir / "control-token"
        if not path.exists():
            path.write_text("test-control-token\n")
        return path

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token_file.read_text().strip()}"}

    def start(self) -> ControllerProc:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "autoscaler.kube.main", "--kubeconfig", str(self.cluster.kubeconfig),
             "--host", "127.0.0.1", "--port", str(self.port), "--identity", self.identity,
             "--system-namespace", "elasticserving-system",
             "--lease-duration", "3", "--renew-deadline", "2", "--retry-period", "0.5",
             "--tick-seconds", "0.5", "--resync-seconds", "5", "--control-token-file", str(self.token_file),
             *self.extra],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=self.cluster.env(), start_new_session=True)
        return self

    def get(self, path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(urllib.request.Request(self.url + path, headers=self._headers()),
                                        timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")
        except (OSError, urllib.error.URLError):
            return 0, {}

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **self._headers()})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def is_ready(self) -> bool:
        return self.get("/ready")[0] == 200

    def route(self, key: str) -> dict | None:
        status, body = self.get("/v1/routes")
        if status != 200:
            return None
        return next((r for r in body.get("services", []) if r["service"] == key), None)

    def describe(self, key: str) -> dict | None:
        """The control API's view of one service: manifest, status and live autoscaler numbers."""
        status, body = self.get(f"/v1/paddleservices/{key}")
        return body if status == 200 else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> int | None:
        _stop(self.proc)
        return self.proc.returncode if self.proc else None

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)
