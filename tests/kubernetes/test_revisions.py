"""A side's replicas on kubernetes are the ready Pods of its revision, whichever Deployment runs them: the
old Pods of a rolling update serve as `previous`, a promoted canary's as `default` until the default's own
are ready. Caches only (no API server): the tests feed Pod and EndpointSlice events as the watches would."""

from __future__ import annotations

import pytest

from autoscaler.kube.manifests import LABEL_REVISION, build_deployment, rolling_update
from autoscaler.kube.platform import KubernetesPlatform, SideRecord
from autoscaler.spec import PaddleService

KEY = "ns/a"


def _pod(name: str, side: str, rev: str, deleting: bool = False) -> dict:
    md: dict = {"name": name, "namespace": "ns",
                "labels": {"elasticserving.paddlepaddle.org/paddleservice": "a",
                           "elasticserving.paddlepaddle.org/side": side, LABEL_REVISION: rev}}
    if deleting:
        md["deletionTimestamp"] = "2026-12-05T00:00:00Z"
    return {"metadata": md, "status": {"phase": "Running"}}


def _slice(side: str, pods: list[str]) -> dict:
    return {"metadata": {"name": f"a-{side}-x", "namespace": "ns",
                         "labels": {"elasticserving.paddlepaddle.org/paddleservice": "a",
                                    "elasticserving.paddlepaddle.org/side": side,
                                    "kubernetes.io/service-name": f"a-{side}"}},
            "ports": [{"name": "http", "port": 80}],
            "endpoints": [{"addresses": [f"10.0.0.{i + 1}"], "conditions": {"ready": True},
                           "targetRef": {"name": p}} for i, p in enumerate(pods)]}


class Node:
    """The platform's watch caches, fed as the API server's watches would."""

    def __init__(self) -> None:
        self.platform = KubernetesPlatform(kube=None)  # type: ignore[arg-type]  # caches only
        self.changes = 0
        self.platform.on_change = lambda key: setattr(self, "changes", self.changes + 1)

    def pod(self, name: str, side: str, rev: str, deleting: bool = False) -> None:
        p = _pod(name, side, rev, deleting)
        old = self.platform.pods.store.get(f"ns/{name}")
        self.platform.pods.store[f"ns/{name}"] = p
        self.platform._pod_event("MODIFIED" if old else "ADDED", p, old)

    def ready(self, side: str, pods: list[str]) -> None:
        sl = _slice(side, pods)
        self.platform.slices.store[f"ns/a-{side}-x"] = sl
        self.platform._slice_event("MODIFIED", sl, None)

    def side(self, name: str) -> SideRecord:
        return self.platform.record(KEY).side(name)

    def ids(self, side: str) -> list[str]:
        return [e.id for e in self.platform.state(KEY, side).ready]


@pytest.mark.parametrize(("revisions", "own", "rev", "want"), [
    ({}, "default", "r1", "default"),  # before the first apply: with its Service
    ({"default": "r1"}, "default", None, "default"),  # its revision not known yet: with its Service
    ({"default": "r1"}, "default", "r1", "default"),
    ({"default": "r2"}, "default", "r1", "previous"),  # the old Pods of a rolling update
    ({"default": "r2", "canary": "r3"}, "canary", "r2", "default"),  # a promoted canary's Pods
    ({"default": "r2"}, "canary", "r9", None),  # a removed canary's Pods serve nothing
    ({"default": "r1", "canary": "r1"}, "canary", "r1", "canary"),  # the same version on both: its own
    ({"default": "r1", "canary": "r2"}, "default", "r2", "canary"),
])
def test_the_side_a_ready_pod_serves(revisions, own, rev, want) -> None:
    assert KubernetesPlatform.side_of_pod(revisions, own, rev) == want


async def test_old_pods_of_a_rolling_update_serve_as_previous_until_gone() -> None:
    node = Node()
    node.side("default").revision = "r1"
    node.pod("old-1", "default", "r1")
    node.ready("default", ["old-1"])
    assert node.ids("default") == ["old-1"]
    # A version change: the default now names r2; the old Pod is the outgoing version.
    await node.platform.move(KEY, "default", "previous")
    node.side("default").revision = "r2"
    node.platform._attribute(KEY)
    assert (node.ids("default"), node.ids("previous")) == ([], ["old-1"])
    assert node.platform.state(KEY, "previous").error is None
    # The new Pod is ready beside the old one: each serves its own side, never the other's.
    node.pod("new-1", "default", "r2")
    node.ready("default", ["new-1", "old-1"])
    assert (node.ids("default"), node.ids("previous")) == (["new-1"], ["old-1"])
    # The old Pod leaves: the outgoing version has nothing left, which the release reads as retired.
    node.pod("old-1", "default", "r1", deleting=True)
    node.ready("default", ["new-1"])
    st = node.platform.state(KEY, "previous")
    assert (st.ready, st.error) == ([], "the outgoing version has no replica left")
    # Gone from the cache, gone from the per-service index the Pod events read
    for name in ("old-1", "new-1"):
        node.platform._pod_event("DELETED", node.platform.pods.store.pop(f"ns/{name}"), None)
    assert node.platform._pods_of == {}


async def test_a_promoted_canary_serves_as_default_until_the_defaults_own_pods_are_ready() -> None:
    node = Node()
    node.side("default").revision, node.side("canary").revision = "r1", "r2"
    node.pod("d-1", "default", "r1")
    node.pod("c-1", "canary", "r2")
    node.ready("default", ["d-1"])
    node.ready("canary", ["c-1"])
    assert (node.ids("default"), node.ids("canary")) == (["d-1"], ["c-1"])
    await node.platform.move(KEY, "default", "previous")
    await node.platform.move(KEY, "canary", "default")
    assert (node.ids("default"), node.ids("previous"), node.ids("canary")) == (["c-1"], ["d-1"], [])
    # apply() found the canary's Deployment running the default's revision: it is kept until relieved.
    node.side("canary").retiring = "r2"
    node.platform._retire_covered(KEY)
    assert node.side("canary").retiring == "r2"
    node.pod("d-2", "default", "r2")
    deleted: list[tuple[str, str, str]] = []

    async def delete_side(ns: str, name: str, side: str) -> None:
        deleted.append((ns, name, side))

    node.platform._delete_side = delete_side  # type: ignore[method-assign]
    node.ready("default", ["d-1", "d-2"])
    assert node.ids("default") == ["c-1", "d-2"] and node.ids("previous") == ["d-1"]
    assert node.side("canary").retiring is None
    for task in list(node.platform._tasks):
        await task
    assert deleted == [("ns", "a", "canary")]


async def test_pods_stay_with_their_service_until_revisions_are_known() -> None:
    """A new leader before its first apply, or Pods of a controller that did not label revisions."""
    node = Node()
    node.pod("d-1", "default", "r1")
    node.ready("default", ["d-1"])
    node.ready("canary", ["c-unlabelled"])
    assert (node.ids("default"), node.ids("canary"), node.ids("previous")) == (["d-1"], ["c-unlabelled"], [])


def _svc(rollout: str | None = None) -> PaddleService:
    spec: dict = {"default": {"containerImage": "img", "tag": "t", "port": 8000}}
    if rollout:
        spec["rolloutDuration"] = rollout
    return PaddleService.from_dict({"apiVersion": "elasticserving.paddlepaddle.org/v1", "kind": "PaddleService",
                                    "metadata": {"name": "a", "namespace": "ns", "uid": "u"}, "spec": spec})


@pytest.mark.parametrize(("rollout", "keep"), [(None, 0), ("30s", 45), ("1m", 75)])
def test_old_pods_are_kept_through_the_rollout_and_labelled_with_their_revision(rollout, keep) -> None:
    svc = _svc(rollout)
    dep = build_deployment(svc, "default")
    assert dep["spec"]["template"]["metadata"]["labels"][LABEL_REVISION] == svc.spec.default.revision
    assert LABEL_REVISION not in dep["spec"]["selector"]["matchLabels"]  # a new version is a rolling update
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": "100%", "maxUnavailable": 0}
    assert dep["spec"]["minReadySeconds"] == keep == rolling_update(svc.rollout_seconds)["minReadySeconds"]
    assert dep["spec"]["progressDeadlineSeconds"] > keep
