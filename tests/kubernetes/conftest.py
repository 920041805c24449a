"""Fixtures of the kubernetes tests: one etcd + kube-apiserver per session on loopback.

The API server binary comes from scripts/build-kube-apiserver.sh; without it the tests are skipped
(or fail when CI is set, so a broken build never passes silently).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kubernetes.cluster import Cluster, find_etcd, find_kube_apiserver


def _missing(what: str) -> None:
    msg = f"{what} (run scripts/install-test-tools.sh)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    apiserver = find_kube_apiserver()
    if apiserver is None:
        _missing("kube-apiserver not built")
    etcd = find_etcd()
    if etcd is None:
        _missing("etcd not installed")
    if shutil.which("kubectl") is None:
        _missing("kubectl not installed")
    if shutil.which("openssl") is None:
        _missing("openssl not installed")
    workdir = Path(tempfile.mkdtemp(prefix="es-kube-"))
    c = Cluster(workdir=workdir, apiserver_bin=apiserver, etcd_bin=etcd)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def installed(cluster: Cluster) -> Cluster:
    """`kubectl apply -f deploy/` done (CRD established): the in-cluster install of the manual."""
    root = Path(__file__).resolve().parents[2]
    cluster.kubectl("apply", "-f", str(root / "deploy"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                    "crd/paddleservices.elasticserving.paddlepaddle.org")
    return cluster
