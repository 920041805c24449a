"""Releases under a steady load on a real node: the driver shared by tests/cluster/test_08e (0 failed,
0 stale answers) and benchmarks/cluster_bench.py (the p99 each transition adds).

Versions differ only in LAC's word separator (`--seg-separator`), so every answer, over HTTP and gRPC,
says which version served it. Each step edits the PaddleService, then waits for its status to say the
release is at its target (the `Released` condition) before the next one.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from statistics import median
from typing import Any

from autoscaler.spec import short_hash
from benchmarks.load import percentile
from tests.cluster.node import SYSTEM_NS, Node, host_of
from tests.helpers import wait_for

WORDS = "我爱北京天安门"
# the versions of the exercise: name -> LAC's separator (one character that is not in the sentence)
VERSIONS = {"v1": "/", "v2": "+", "v3": "_"}  # no shell syntax: the runtime stays PID 1
RATE_PER_CLIENT = 12.0  # requests per second per client (6 clients: ~70 req/s)
STALE_GRACE_SECONDS = 2.0  # a route change reaches every activator well within this


def arg_of(version: str) -> str:
    return f"python3 -m runtime --model lac --name lac --port $PORT --seg-separator '{VERSIONS[version]}'"


def side_yaml(version: str) -> str:
    return ("    containerImage: elasticserving/runtime-lac\n    tag: latest\n    port: 9292\n"
            f"    arg: \"{arg_of(version)}\"\n")


def manifest(ns: str, name: str, default: str, canary: str | None = None, percent: int = 0,
             rollout: str | None = None) -> str:
    text = (f"apiVersion: elasticserving.paddlepaddle.org/v1\nkind: PaddleService\n"
            f"metadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  default:\n{side_yaml(default)}")
    if canary is not None:
        text += f"  canary:\n{side_yaml(canary)}  canaryTrafficPercent: {percent}\n"
    if rollout:
        text += f"  rolloutDuration: {rollout}\n"
    return text + "  service:\n    minScale: 1\n    window: 10s\n"


def version_of(segmented: str) -> str | None:
    """Which version's separator segmented the sentence (None: not a LAC answer)."""
    for version, sep in VERSIONS.items():
        if segmented == sep.join(["我", "爱", "北京", "天安门"]):
            return version
    return None


@dataclass
class Result:
    sent: float
    answered: float
    protocol: str
    version: str | None  # None: failed
    error: str = ""


@dataclass
class Traffic:
    """HTTP and gRPC clients, each on its own connection(s), at a steady rate until stopped."""

    node: Node
    host: str
    grpc_key: str
    http_clients: int = 4
    grpc_clients: int = 2
    results: list[Result] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def _keep(self, r: Result) -> None:
        with self.lock:
            self.results.append(r)

    def _pace(self, next_at: float) -> float:
        self.stop.wait(max(0.0, next_at - time.monotonic()))
        return max(next_at + 1 / RATE_PER_CLIENT, time.monotonic())

    def _http(self) -> None:
        import json

        body = json.dumps({"feed": [{"words": WORDS}], "fetch": ["word_seg"]}).encode()
        next_at = time.monotonic()
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                a = self.node.post(self.host, "/lac/prediction", body, timeout=60)
                version = version_of(a.json()["result"][0]["word_seg"]) if a.status == 200 else None
                self._keep(Result(t0, time.monotonic(), "http", version,
                                  "" if version else f"HTTP {a.status}: {a.body[:200]!r}"))
            except Exception as exc:  # noqa: BLE001 - a lost request, whatever the cause
                self._keep(Result(t0, time.monotonic(), "http", None, repr(exc)[:300]))
            next_at = self._pace(next_at)

    def _grpc(self) -> None:
        import numpy as np
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.node.grpc_target)
        next_at = time.monotonic()
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                words = grpcclient.InferInput("words", [1], "BYTES")
                words.set_data_from_numpy(np.array([WORDS.encode()], dtype=object))
                r = client.infer("lac", [words], headers={"x-paddleservice": self.grpc_key}, client_timeout=60)
                version = version_of(r.as_numpy("word_seg")[0].decode())
                self._keep(Result(t0, time.monotonic(), "grpc", version, "" if version else "not a LAC answer"))
            except Exception as exc:  # noqa: BLE001
                self._keep(Result(t0, time.monotonic(), "grpc", None, repr(exc)[:300]))
            next_at = self._pace(next_at)
        client.close()

    def __enter__(self) -> Traffic:
        self.threads = [threading.Thread(target=self._http, daemon=True) for _ in range(self.http_clients)]
        self.threads += [threading.Thread(target=self._grpc, daemon=True) for _ in range(self.grpc_clients)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(90)

    def snapshot(self) -> list[Result]:
        with self.lock:
            return list(self.results)


@dataclass
class Step:
    """One transition: what the spec names once it is done, and when it ran (monotonic)."""

    name: str
    named: set[str]
    start: float = 0.0
    settled: float = 0.0  # the status said the release is at its target


def released(node: Node, ns: str, name: str, default: str, canary: str | None) -> bool:
    """Status says the split in force is the spec's (`Released`), each side proven on its version (by
    its arg's hash), none outgoing."""
    st = node.psvc(ns, name).get("status") or {}
    cond = next((c for c in st.get("conditions") or [] if c.get("type") == "Released"), {})
    if cond.get("status") != "True" or st.get("previous"):
        return False
    for side, version in (("default", default), ("canary", canary)):
        s = st.get(side) or {}
        if version is None:
            if s.get("revision"):
                return False
        elif s.get("argHash") != short_hash(arg_of(version)) or not s.get("ready"):
            return False
    return True


def delete_leader(node: Node) -> str:
    lease = node.get("lease", "-n", SYSTEM_NS, "elasticserving-controller")
    holder = lease["spec"]["holderIdentity"]
    node.kubectl("delete", "pod", "-n", SYSTEM_NS, holder, "--wait=false")
    return holder


def report(results: list[Result], steps: list[Step], steady: tuple[float, float]) -> dict[str, Any]:
    """Per step: requests, failures, stale answers, and the p99 added over the steady window's."""
    def lat(lo: float, hi: float) -> list[float]:
        return [(r.answered - r.sent) * 1000 for r in results if lo <= r.sent < hi and r.version]

    base = percentile(lat(*steady), 99)
    out: dict[str, Any] = {"steady_p99_ms": round(base, 1), "steps": {}}
    for s in steps:
        window = [r for r in results if s.start <= r.sent < s.settled]
        out["steps"][s.name] = {
            "requests": len(window), "failed": sum(1 for r in window if r.version is None),
            "seconds": round(s.settled - s.start, 1),
            "p99_ms": round(percentile(lat(s.start, s.settled), 99), 1),
            "added_p99_ms": round(percentile(lat(s.start, s.settled), 99) - base, 1)}
    out["requests"] = len(results)
    out["failed"] = sum(1 for r in results if r.version is None)
    out["rate_per_second"] = round(len(results) / max(1e-9, results[-1].sent - results[0].sent), 1) if results else 0
    out["p50_ms"] = round(median([(r.answered - r.sent) * 1000 for r in results if r.version]), 1)
    return out


def stale(results: list[Result], steps: list[Step]) -> list[tuple[str, Result]]:
    """Answers by a version the spec no longer named, sent after the step settled (plus the grace a
    route change takes to reach every activator) and before the next step began."""
    out = []
    for i, s in enumerate(steps):
        end = steps[i + 1].start if i + 1 < len(steps) else float("inf")
        out += [(s.name, r) for r in results
                if s.settled + STALE_GRACE_SECONDS <= r.sent < end and r.version and r.version not in s.named]
    return out


def run_releases(node: Node, ns: str, name: str, rollout: str = "20s") -> tuple[Traffic, list[Step], tuple[float, float]]:
    """The exercise: v1 serving; then each transition under load, waiting for each to settle."""
    node.apply(f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n")
    node.kubectl("delete", "paddleservice", "-n", ns, name, "--ignore-not-found", "--wait=true", timeout=180)
    node.apply(manifest(ns, name, "v1"))
    wait_for(lambda: released(node, ns, name, "v1", None)
             and node.lac(host_of(ns, name), timeout=120).status == 200, 300, 0.5, "v1 serving")
    steps: list[Step] = []
    traffic = Traffic(node, host_of(ns, name), grpc_key=f"{name}.{ns}")

    def transition(step_name: str, default: str, canary: str | None = None, percent: int = 0,
                   rollout_: str | None = None, mid=None) -> None:
        step = Step(step_name, {default, *([canary] if canary else [])}, start=time.monotonic())
        node.apply(manifest(ns, name, default, canary, percent, rollout_))
        if mid is not None:
            mid()
        wait_for(lambda: released(node, ns, name, default, canary), 300, 0.5, f"{step_name} settled")
        step.settled = time.monotonic()
        steps.append(step)

    with traffic:
        traffic.stop.wait(3)  # connections made, first requests served
        t0 = time.monotonic()
        traffic.stop.wait(10)  # the steady window the transitions are compared with
        steady = (t0, time.monotonic())
        transition("default version change", "v2")
        transition("canary at 0%", "v2", "v3", 0)
        transition("canary at 50%", "v2", "v3", 50)
        transition("canary at 100%", "v2", "v3", 100)
        transition("promotion", "v3")
        transition("rollback", "v2")

        def kill_leader_mid_ramp() -> None:
            wait_for(lambda: (node.psvc(ns, name).get("status") or {}).get("previous"), 120, 0.5,
                     "the ramp under way")
            deleted.append(delete_leader(node))

        deleted: list[str] = []
        transition("gradual rollout, leader deleted mid-ramp", "v1", rollout_=rollout, mid=kill_leader_mid_ramp)
        leader = node.get("lease", "-n", SYSTEM_NS, "elasticserving-controller")["spec"].get("holderIdentity")
        assert leader not in deleted, f"the ramp ended under the leader that was deleted ({deleted})"
        traffic.stop.wait(5)  # answers after the last step, for the stale check
    return traffic, steps, steady
