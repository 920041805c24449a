"""Fixtures of the cluster suite: one real single-node Kubernetes per session (scripts/cluster.sh up,
and down at the end), with deploy/ applied and a short scale-to-zero grace.

Without root (the node needs iptables, mounts and network namespaces) or when `up` fails, the tests
skip with the reason, or fail when CI is set, so a broken node never passes silently. A node left
running by an earlier `scripts/cluster.sh up` is reused and left running.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.cluster.node import CLUSTER_SH, STATE, SYSTEM_NS, Node, parse_activator_line, running_node
from tests.helpers import wait_for

UP_TIMEOUT = 50 * 60  # a cold `up` builds Kubernetes and the images
# Worker nodes of the suite: two, so spreading, cross-node routing and a node's death are tested.
NODES = os.environ.get("ELASTICSERVING_CLUSTER_NODES", "2")
GRACE = "5s"          # scale-to-zero grace of the suite (the deploy default is 30s)


def _unavailable(msg: str) -> None:
    msg = f"cluster node unavailable: {msg}"
    if os.environ.get("CI"):
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


SYSCTLS = ["net/ipv4/ip_forward", "net/ipv4/conf/all/route_localnet", "vm/overcommit_memory",
           "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops"]


def read_sysctls() -> dict[str, str]:
    out = {}
    for k in SYSCTLS:
        try:
            out[k] = open(f"/proc/sys/{k}").read().strip()
        except OSError:
            pass
    return out


class Session:
    started_here = False
    up_seconds: float | None = None
    sysctls_before: dict[str, str] = {}
    timings: dict[str, list[float]] = {}


@pytest.fixture(scope="session")
def session_info() -> type[Session]:
    return Session


@pytest.fixture(scope="session")
def node() -> Iterator[Node]:
    if sys.platform != "linux":
        _unavailable("needs Linux")
    found = running_node()
    if found is not None:
        print(f"\ncluster: reusing the running node ({found.activator})")
        yield found
        return
    if os.geteuid() != 0:
        _unavailable("scripts/cluster.sh needs root (iptables, mounts, network namespaces)")
    if shutil.which("apt-get") is None and shutil.which("containerd") is None:
        _unavailable("no containerd and no apt-get to install it")
    STATE.mkdir(parents=True, exist_ok=True)
    Session.sysctls_before = read_sysctls()
    log_path = STATE / "up.log"
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        p = subprocess.run([str(CLUSTER_SH), "up", "--nodes", NODES], stdout=subprocess.PIPE, stderr=log, text=True,
                           timeout=UP_TIMEOUT)
    Session.up_seconds = time.monotonic() - t0
    Session.started_here = True
    try:
        if p.returncode != 0:
            tail = log_path.read_text()[-3000:]
            _unavailable(f"scripts/cluster.sh up failed ({p.returncode}); end of {log_path}:\n{tail}")
        node = Node(STATE / "kubeconfig", parse_activator_line(p.stdout))
        print(f"\ncluster: node up in {Session.up_seconds:.0f}s ({node.activator})")
        yield node
    finally:
        d = subprocess.run([str(CLUSTER_SH), "down"], capture_output=True, text=True, timeout=600)
        if d.returncode != 0:
            print(f"cluster: scripts/cluster.sh down failed ({d.returncode}): {d.stderr[-2000:]}")


@pytest.fixture(scope="session")
def stack(node: Node) -> Node:
    """deploy/ applied (by `up`) with a short scale-to-zero grace: the documented way to change the
    ConfigMap (edit, then restart the controller), so the suite does not wait 30 s per scale-down."""
    have = node.get("configmap", "-n", SYSTEM_NS, "config-autoscaler")["data"]
    if have.get("scale-to-zero-grace-period") != GRACE:
        node.kubectl("patch", "configmap", "-n", SYSTEM_NS, "config-autoscaler", "--type=merge",
                     "-p", f'{{"data": {{"scale-to-zero-grace-period": "{GRACE}"}}}}')
        node.kubectl("rollout", "restart", "-n", SYSTEM_NS, "deployment/elasticserving-controller")
    node.kubectl("rollout", "status", "-n", SYSTEM_NS, "deployment/elasticserving-controller",
                 "--timeout=300s", timeout=320)
    node.kubectl("rollout", "status", "-n", SYSTEM_NS, "deployment/elasticserving-activator",
                 "--timeout=300s", timeout=320)
    wait_for(node.leader_published, 120, 0.5, "the leader published as the autoscaler's endpoint")
    return node
