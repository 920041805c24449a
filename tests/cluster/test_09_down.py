"""`scripts/cluster.sh down` after the suite (last module): no process (not even a daemon no pid file
names), mount, network namespace, interface or iptables chain of the node is left, the kernel settings
it changed are restored, and a second `down` is no error. Skipped when the node ran before the session
(it is left running)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.conftest import read_sysctls
from tests.cluster.node import CLUSTER_SH, STATE, Node

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy",
            "coredns", "containerd")


def our_processes() -> list[str]:
    """Processes started by the node: anything naming its state dir or binaries, shims of its containerd."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        cmd = b" ".join(argv).decode("utf-8", "replace")
        exe = os.path.basename(argv[0].decode("utf-8", "replace")) if argv and argv[0] else ""
        if str(STATE) in cmd or (exe in BINARIES and "/.cache/bin/" in cmd):
            found.append(f"{d.name}: {cmd[:200]}")
    return found


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)


def test_down_leaves_nothing_behind(node: Node, session_info) -> None:
    if not session_info.started_here:
        pytest.skip("the node was running before the session: left running")
    # A daemon no pid file names, as an `up` killed halfway leaves one: `down` finds it by what it runs.
    stray = subprocess.Popen(["kube-scheduler", "-c", "import time; time.sleep(600)",
                              str(STATE / "kubeconfigs/kube-scheduler")],
                             executable=sys.executable, start_new_session=True)  # argv[0]: what it runs
    d = subprocess.run([str(CLUSTER_SH), "down"], capture_output=True, text=True, timeout=600)
    assert d.returncode == 0, d.stderr[-2000:]
    assert stray.wait(30) == -signal.SIGKILL, d.stderr[-2000:]
    assert f"stopping a leftover kube-scheduler (pid {stray.pid})" in d.stderr
    assert our_processes() == []
    pods = [str(p) for p in Path("/sys/fs/cgroup").glob("*/kubepods/**/cgroup.procs") if p.read_text().strip()]
    assert pods == [], "processes left in Pod cgroups"
    assert run("ip", "link", "show", "cni0").returncode != 0, "cni0 left"
    assert [ln for ln in run("ip", "netns", "list").stdout.splitlines() if ln.startswith(("cni-", "es-"))] == []
    # nodes 2..N: their veths, routes, cgroup roots, and the host dirs only `up` made
    assert [ln for ln in run("ip", "-o", "link").stdout.splitlines() if ": es-h" in ln] == []
    assert [ln for ln in run("ip", "route").stdout.splitlines() if ln.startswith("10.244.")] == []
    assert list(Path("/sys/fs/cgroup").glob("*/elasticserving-node-*")) == []
    assert not (STATE / "host-dirs").exists()
    mounts = [ln for ln in Path("/proc/self/mounts").read_text().splitlines() if str(STATE) in ln]
    assert mounts == []
    for save in ("iptables-save", "ip6tables-save"):
        rules = run(save).stdout
        assert [ln for ln in rules.splitlines() if "KUBE-" in ln or "CNI-" in ln] == [], save
    assert read_sysctls() == session_info.sysctls_before
    # and once more: a node already down is no error (the extra nodes' state dirs are gone)
    again = subprocess.run([str(CLUSTER_SH), "down"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
