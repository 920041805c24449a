"""The S3 test server (tests/s3_server.py, SeaweedFS on loopback) serves a real, access-controlled S3:
signed requests work, a wrong secret, an unsigned request and a read-only identity's write get 403."""

from __future__ import annotations

import glob
import io
import os
import signal
import socket
import subprocess
import uuid

import pytest
from minio.error import S3Error

import tests.s3_server
from tests.helpers import RESERVED_PORTS
from tests.s3_server import S3Server, get_bytes, require_weed, run_s3_server


def _status(err: S3Error) -> int:
    return err.response.status


def _bucket(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_start_time(s3_server: S3Server):
    print(f"S3 server (SeaweedFS) at {s3_server.endpoint}: a signed ListBuckets answered after "
          f"{s3_server.answer_seconds:.2f}s, writable after {s3_server.start_seconds:.2f}s")
    assert 0 < s3_server.answer_seconds <= s3_server.start_seconds
    port = int(s3_server.endpoint.rsplit(":", 1)[1])
    assert s3_server.endpoint.startswith("http://127.0.0.1:") and port not in RESERVED_PORTS


def test_put_get_list_round_trip(s3_server: S3Server):
    bucket = s3_server.make_bucket(_bucket("models"))
    data = os.urandom(100_000) + b"\x00end"
    s3_server.put(bucket, "lac/1/model.bin", data)
    s3_server.put(bucket, "lac/1/config.json", b'{"x": 1}')
    c = s3_server.client()
    assert get_bytes(c, bucket, "lac/1/model.bin") == data
    listed = c.list_objects(bucket, prefix="lac/", recursive=True)
    assert {o.object_name: o.size for o in listed} == {"lac/1/model.bin": len(data), "lac/1/config.json": 8}
    assert bucket in {b.name for b in c.list_buckets()}
    # the read-only identity reads and lists
    ro = s3_server.read_only_client()
    assert get_bytes(ro, bucket, "lac/1/config.json") == b'{"x": 1}'
    assert len(list(ro.list_objects(bucket, recursive=True))) == 2


def test_wrong_secret_is_403(s3_server: S3Server):
    bucket = s3_server.make_bucket(_bucket("secret"))
    s3_server.put(bucket, "k", b"v")
    wrong = s3_server.client(secret_key=s3_server.secret_key[::-1], retries=1)
    for call in (lambda: get_bytes(wrong, bucket, "k"), wrong.list_buckets,
                 lambda: wrong.put_object(bucket, "k2", io.BytesIO(b"x"), 1)):
        with pytest.raises(S3Error) as e:
            call()
        assert _status(e.value) == 403, e.value
        assert e.value.code in ("SignatureDoesNotMatch", "AccessDenied"), e.value
    unknown = s3_server.client(access_key="AKIANOTAKEY000000000", retries=1)
    with pytest.raises(S3Error) as e:
        get_bytes(unknown, bucket, "k")
    assert _status(e.value) == 403
    # nothing was written by the refused put
    with pytest.raises(S3Error) as e:
        s3_server.client().stat_object(bucket, "k2")
    assert _status(e.value) == 404


def test_anonymous_get_is_403(s3_server: S3Server):
    bucket = s3_server.make_bucket(_bucket("anon"))
    s3_server.put(bucket, "k", b"v")
    anon = s3_server.client(signed=False, retries=1)
    with pytest.raises(S3Error) as e:
        get_bytes(anon, bucket, "k")
    assert _status(e.value) == 403, e.value
    with pytest.raises(S3Error) as e:
        list(anon.list_objects(bucket))
    assert _status(e.value) == 403


def test_read_only_identity_cannot_write(s3_server: S3Server):
    bucket = s3_server.make_bucket(_bucket("ro"))
    ro = s3_server.read_only_client()
    with pytest.raises(S3Error) as e:
        ro.put_object(bucket, "k", io.BytesIO(b"v"), 1)
    assert _status(e.value) == 403, e.value
    assert e.value.code == "AccessDenied", e.value
    new = _bucket("ro-new")
    with pytest.raises(S3Error) as e:
        ro.make_bucket(new)
    assert _status(e.value) == 403
    # neither the object nor the bucket exists
    with pytest.raises(S3Error) as e:
        s3_server.client().stat_object(bucket, "k")
    assert _status(e.value) == 404 and e.value.code == "NoSuchKey"
    assert not s3_server.client().bucket_exists(new)


def test_secret_stays_out_of_logs_and_repr(s3_server: S3Server):
    assert s3_server.secret_key not in repr(s3_server)
    assert s3_server.read_only_secret_key not in repr(s3_server)
    logs = [s3_server.log_path, *(s3_server.workdir / "logs").glob("*")]
    for p in logs:
        if p.is_file():
            assert s3_server.secret_key not in p.read_text(errors="replace"), p
    cmdline = open(f"/proc/{s3_server.pid}/cmdline", "rb").read()
    assert s3_server.secret_key.encode() not in cmdline


def _pgrep(pattern: str) -> list[int]:
    r = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()]


def test_own_server_retries_a_taken_port_and_leaves_no_process(monkeypatch):
    """A server of its own (the session one keeps running). Its first master port is taken before weed
    binds it: weed exits and starts again on other ports. After the context exits no weed process of it
    is left (pgrep), and its workdir and /tmp sockets are gone."""
    chosen: list[list[int]] = []
    real = tests.s3_server.free_ports

    def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
        ports = real(n, host)
        if not chosen:
            ports[0] = busy
        chosen.append(ports)
        return ports

    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy = taken.getsockname()[1]
        monkeypatch.setattr(tests.s3_server, "free_ports", free_ports)
        with run_s3_server(require_weed(), wait_writable=False) as server:
            print(f"second S3 server answered in {server.answer_seconds:.2f}s")
            workdir, pid = str(server.workdir), server.pid
            assert pid in _pgrep(workdir)
            assert server.client().list_buckets() == []
    assert len(chosen) == 2 and busy not in chosen[1]
    assert _pgrep(workdir) == []
    assert pid not in [int(p) for p in subprocess.run(["pgrep", "-x", "weed"], capture_output=True,
                                                      text=True).stdout.split()]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)
    assert not os.path.exists(workdir)
    assert not [p for ports in chosen for p in ports if glob.glob(f"/tmp/seaweedfs-*-grpc-{p}.sock")]


def test_host_is_what_weed_binds_and_announces():
    """`host` (here another loopback address, as a cluster test passes the node's bridge address): the
    endpoint names it, weed answers there, and none of its ports is bound on 127.0.0.1."""
    with run_s3_server(require_weed(), wait_writable=False, host="127.0.0.2") as server:
        assert server.endpoint.startswith("http://127.0.0.2:")
        assert server.client().list_buckets() == []
        cmdline = open(f"/proc/{server.pid}/cmdline", "rb").read().split(b"\0")
        assert b"-ip=127.0.0.2" in cmdline and b"-ip.bind=127.0.0.2" in cmdline
        ports = [int(a.split(b"=")[1]) for a in cmdline if a.startswith(b"-") and b".port" in a.split(b"=")[0]
                 and a.split(b"=")[1].isdigit() and a.split(b"=")[1] != b"0"]
        assert len(ports) == 8 and not set(ports) & RESERVED_PORTS
        for port in ports:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
