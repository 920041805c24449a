"""Releases lose nothing on a real node: a steady load over HTTP and gRPC (six connections, ~70 req/s)
across a default version change, a canary at 0 %, 50 % and 100 %, a promotion, a rollback and a
gradual rollout during which the leading controller Pod is deleted. Every request is counted: none
fails, and none is answered by a version the spec no longer names once the release has settled."""

from __future__ import annotations

import pytest

from tests.cluster.node import Node
from tests.cluster.release_load import report, run_releases, stale

NS, NAME = "es-release-load", "steady"


def test_every_release_step_under_load_loses_nothing(stack: Node) -> None:
    pytest.importorskip("tritonclient.grpc")
    traffic, steps, steady = run_releases(stack, NS, NAME, rollout="20s")
    results = traffic.snapshot()
    summary = report(results, steps, steady)
    print(summary)
    failed = [r for r in results if r.version is None]
    assert not failed, f"{len(failed)} of {len(results)} failed, e.g. {[(r.protocol, r.error) for r in failed[:5]]}"
    assert summary["rate_per_second"] >= 50, summary
    assert {r.protocol for r in results} == {"http", "grpc"}
    old = stale(results, steps)
    assert not old, f"{len(old)} answers by a version no longer named, e.g. {old[:5]}"
    # Each version served where the spec named it: the exercise really moved traffic.
    assert {r.version for r in results} == {"v1", "v2", "v3"}
    stack.kubectl("delete", "namespace", NS, "--wait=true", timeout=300)
