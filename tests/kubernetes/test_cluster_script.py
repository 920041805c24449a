"""scripts/cluster.sh without a node: one `up`, `down` or `kill-node` at a time per state dir (a second
one waits for the lock the first holds), run on an empty state dir so the host is not touched."""

from __future__ import annotations

import fcntl
import os
import subprocess

import pytest

from tests.cluster.node import CLUSTER_SH

pytestmark = pytest.mark.timeout(60)


def test_a_second_command_waits_for_the_one_holding_the_state_dir(tmp_path) -> None:
    state = tmp_path / "cluster"
    env = {k: v for k, v in os.environ.items() if k != "CLUSTER_SH_LOCKED"}
    env["ELASTICSERVING_CLUSTER_DIR"] = str(state)
    with open(f"{state}.lock", "w") as held:  # as a running `up` holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        p = subprocess.Popen([str(CLUSTER_SH), "kill-node", "2"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        assert "waiting for another scripts/cluster.sh" in p.stderr.readline()
        assert p.poll() is None  # it cannot get past the lock while it is held
        fcntl.flock(held, fcntl.LOCK_UN)
    rest = p.communicate(timeout=30)[1]
    # then it runs: an empty state dir has no node 2
    assert p.returncode == 1 and "no node elasticserving-node-2" in rest, rest
