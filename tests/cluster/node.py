"""The real single-node Kubernetes of the cluster suite, seen from the tests: kubectl, the
activator's NodePorts, Pods and Deployments of a PaddleService.

Sits under tests/cluster/conftest.py, which brings the node up and down with scripts/cluster.sh;
also used by benchmarks/cluster_bench.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SH = ROOT / "scripts/cluster.sh"
STATE = Path(os.environ.get("ELASTICSERVING_CLUSTER_DIR") or ROOT / ".cache/cluster")
SYSTEM_NS = "elasticserving-system"
LAC_BODY = json.dumps({"feed": [{"words": "我爱北京天安门"}], "fetch": ["word_seg"]}).encode()
LAC_ANSWER = {"result": [{"word_seg": "我|爱|北京|天安门"}]}
SERVICE_LABEL = "elasticserving.paddlepaddle.org/paddleservice"
SIDE_LABEL = "elasticserving.paddlepaddle.org/side"


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)


def parse_activator_line(output: str) -> str:
    """`activator: http://127.0.0.1:PORT`, the last line of `scripts/cluster.sh up`."""
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    m = re.fullmatch(r"activator: (http://127\.0\.0\.1:\d+)", lines[-1].strip()) if lines else None
    if m is None:
        raise ValueError(f"no `activator: http://127.0.0.1:PORT` last line in {output[-500:]!r}")
    return m.group(1)


@dataclass
class Node:
    """A running node: its admin kubeconfig and the activator's HTTP URL (NodePort on loopback)."""

    kubeconfig: Path
    activator: str

    # ---- kubectl ---------------------------------------------------------------------------------
    def kubectl(self, *args: str, input: str | None = None, timeout: float = 120, check: bool = True) -> str:
        p = subprocess.run(["kubectl", "--kubeconfig", str(self.kubeconfig), *args], input=input,
                           capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
        return p.stdout

    def get(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", "-o", "json", *args))

    def get_or_none(self, *args: str) -> dict[str, Any] | None:
        out = self.kubectl("get", "-o", "json", "--ignore-not-found", *args)
        return json.loads(out) if out.strip() else None

    def apply(self, manifest: str) -> None:
        self.kubectl("apply", "-f", "-", input=manifest)

    # ---- a PaddleService's children --------------------------------------------------------------
    def pods(self, namespace: str, name: str, side: str | None = None) -> list[dict[str, Any]]:
        selector = f"{SERVICE_LABEL}={name}" + (f",{SIDE_LABEL}={side}" if side else "")
        return self.get("pods", "-n", namespace, "-l", selector)["items"]

    def deployment_replicas(self, namespace: str, name: str, side: str = "default") -> int | None:
        dep = self.get_or_none("deployment", "-n", namespace, f"{name}-{side}")
        return None if dep is None else int(dep["spec"].get("replicas") or 0)

    def at_zero(self, namespace: str, name: str) -> bool:
        """Scaled to zero and no Pod left: a leaving Pod stays routed through its preStop sleep, so only
        once it is gone is the next request surely a cold one."""
        return self.deployment_replicas(namespace, name) == 0 and not self.pods(namespace, name)

    def psvc(self, namespace: str, name: str) -> dict[str, Any]:
        return self.get("paddleservice", "-n", namespace, name)

    def state_of(self, namespace: str, name: str) -> str:
        """What a failed assertion about service `name` should show: its status, its Pods (node, phase,
        conditions, containers, last log lines) and the namespace's events about it."""
        out = [f"status: {json.dumps(self.psvc(namespace, name).get('status'))}"]
        for pod in self.pods(namespace, name):
            md, st = pod["metadata"], pod.get("status") or {}
            conds = {c["type"]: c["status"] + (f" ({c['reason']})" if c.get("reason") else "")
                     for c in st.get("conditions") or []}
            containers = {c["name"]: c.get("state") for c in st.get("containerStatuses") or []}
            logs = self.kubectl("logs", "-n", namespace, md["name"], "--all-containers", "--tail=15", check=False)
            out.append(f"pod {md['name']} on {pod['spec'].get('nodeName')}: {st.get('phase')} "
                       f"{'deleting ' if md.get('deletionTimestamp') else ''}{conds} {containers}\n{logs}")
        events = self.kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False)
        out += [line for line in events.splitlines() if name in line][-20:]
        return "\n".join(out)

    # ---- the activator ---------------------------------------------------------------------------
    def node_port(self, name: str) -> int:
        svc = self.get("service", "-n", SYSTEM_NS, "elasticserving-activator")
        return next(int(p["nodePort"]) for p in svc["spec"]["ports"] if p["name"] == name)

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.node_port('grpc')}"

    def activator_pods(self) -> dict[str, str]:
        """Ready activator Pods: name -> `http://POD_IP:8080` (the host reaches Pod IPs on cni0)."""
        pods = self.get("pods", "-n", SYSTEM_NS, "-l", "app.kubernetes.io/component=activator")["items"]
        return {p["metadata"]["name"]: f"http://{p['status']['podIP']}:8080" for p in pods
                if not p["metadata"].get("deletionTimestamp")
                and any(c.get("ready") for c in p["status"].get("containerStatuses") or [])}

    def activator_on(self, node_name: str) -> str | None:
        """The URL of a ready activator Pod on node `node_name`, if one runs there."""
        pods = self.get("pods", "-n", SYSTEM_NS, "-l", "app.kubernetes.io/component=activator")["items"]
        ready = self.activator_pods()
        return next((ready[p["metadata"]["name"]] for p in pods
                     if p["spec"].get("nodeName") == node_name and p["metadata"]["name"] in ready), None)

    def activator_kept_on(self, node_name: str) -> str:
        """A ready activator on `node_name`; when both run elsewhere (a restart can place them so: their
        spread is preferred, not required), one is moved there (the scheduler prefers the node without)."""
        url = self.activator_on(node_name)
        if url is None:
            pods = self.get("pods", "-n", SYSTEM_NS, "-l", "app.kubernetes.io/component=activator")["items"]
            self.kubectl("delete", "pod", "-n", SYSTEM_NS, pods[0]["metadata"]["name"])
            url = wait_for(lambda: self.activator_on(node_name), 180, 1, f"an activator on {node_name}")
        return url

    def leader_published(self) -> bool:
        """The Lease holder's Pod IP is the autoscaler Service's endpoint (activators reach it)."""
        lease = self.get_or_none("lease", "-n", SYSTEM_NS, "elasticserving-controller")
        holder = ((lease or {}).get("spec") or {}).get("holderIdentity")
        sl = self.get_or_none("endpointslice", "-n", SYSTEM_NS, "elasticserving-autoscaler-leader")
        pod = self.get_or_none("pod", "-n", SYSTEM_NS, holder) if holder else None
        if not sl or not pod or pod["metadata"].get("deletionTimestamp"):
            return False
        eps = sl.get("endpoints") or []
        return [e.get("addresses") for e in eps] == [[pod["status"].get("podIP")]]

    def post(self, host: str, path: str, body: bytes, timeout: float = 120,
             headers: dict[str, str] | None = None, base: str | None = None) -> Answer:
        """One POST through the activator's NodePort, or `base` (a fresh connection per request)."""
        req = urllib.request.Request((base or self.activator) + path, data=body, method="POST",
                                     headers={"Host": host, "Content-Type": "application/json",
                                              **(headers or {})})
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return Answer(r.status, r.read(), {k.lower(): v for k, v in r.headers.items()},
                              time.monotonic() - t0)
        except urllib.error.HTTPError as e:
            return Answer(e.code, e.read(), {k.lower(): v for k, v in e.headers.items()}, time.monotonic() - t0)

    def lac(self, host: str, timeout: float = 120, base: str | None = None) -> Answer:
        return self.post(host, "/lac/prediction", LAC_BODY, timeout=timeout, base=base)

    def routed_by_every_activator(self, host: str, sides: set[str]) -> bool:
        """Each ready activator answers `host` from each of `sides` (requests sent to its Pod IP):
        the routes reached all of them."""
        for base in self.activator_pods().values():
            seen = {self.lac(host, timeout=60, base=base).headers.get("x-paddleservice-side") for _ in range(6)}
            if not sides <= seen:
                return False
        return True


def host_of(namespace: str, name: str, domain: str = "example.com") -> str:
    return f"{name}.{namespace}.{domain}"


def running_node() -> Node | None:
    """The node of an earlier `scripts/cluster.sh up` when it still answers, else None."""
    kubeconfig = STATE / "kubeconfig"
    if not kubeconfig.exists():
        return None
    p = subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), "get", "service", "-n", SYSTEM_NS,
                        "elasticserving-activator", "-o",
                        'jsonpath={.spec.ports[?(@.name=="http")].nodePort}', "--request-timeout=5s"],
                       capture_output=True, text=True, timeout=30)
    if p.returncode != 0 or not p.stdout.strip():
        return None
    return Node(kubeconfig, f"http://127.0.0.1:{p.stdout.strip()}")


def lac_service(namespace: str, name: str, *, min_scale: int = 0, canary_percent: int | None = None,
                annotations: dict[str, str] | None = None, window: str = "10s") -> str:
    """A Namespace + a PaddleService serving LAC (examples/lac.yaml's spec) as YAML."""
    side = ("    arg: python3 -m runtime --model lac --name lac --port $PORT\n"
            "    containerImage: elasticserving/runtime-lac\n    port: 9292\n    tag: latest\n")
    ann = "".join(f'    {k}: "{v}"\n' for k, v in (annotations or {}).items())
    text = (f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n---\n"
            "apiVersion: elasticserving.paddlepaddle.org/v1\nkind: PaddleService\n"
            f"metadata:\n  name: {name}\n  namespace: {namespace}\n"
            + (f"  annotations:\n{ann}" if ann else "")
            + f"spec:\n  default:\n{side}")
    if canary_percent is not None:
        text += f"  canary:\n{side}  canaryTrafficPercent: {canary_percent}\n"
    text += f"  service:\n    minScale: {min_scale}\n    window: {window}\n"
    return text


def fresh_service(node: Node, namespace: str, name: str, manifest: str) -> None:
    """Apply `manifest` after deleting an earlier PaddleService of that name (a reused node)."""
    node.kubectl("delete", "paddleservice", "-n", namespace, name, "--ignore-not-found", "--wait=true",
                 timeout=180)
    node.apply(manifest)


class Load:
    """`clients` threads sending the LAC request through the activator until stopped; every answer
    (status, side header) or error is kept, so a test can assert that none was lost."""

    def __init__(self, node: Node, host: str, clients: int, base: str | None = None):
        import threading

        self.node, self.host, self.base = node, host, base
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.results: list[tuple[int, str]] = []  # (HTTP status or 0 for an error, side or error text)
        self.times: list[tuple[float, float]] = []  # (monotonic sent, monotonic answered), as results
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        while not self.stop_event.is_set():
            sent = time.monotonic()
            try:
                a = self.node.lac(self.host, timeout=60, base=self.base)
                ok = a.status == 200 and a.json() == LAC_ANSWER
                item = (a.status if ok else -a.status,
                        a.headers.get("x-paddleservice-side", "") if ok else a.body[:200].decode("utf-8", "replace"))
            except Exception as exc:  # noqa: BLE001 - a lost request, whatever the cause
                item = (0, repr(exc))
            with self.lock:
                self.results.append(item)
                self.times.append((sent, time.monotonic()))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(90)

    def count(self) -> int:
        with self.lock:
            return len(self.results)

    def failures(self) -> list[tuple[int, str]]:
        with self.lock:
            return [r for r in self.results if r[0] != 200]

    def failure_times(self) -> list[tuple[float, float]]:
        """(sent, answered) of each failed request."""
        with self.lock:
            return [t for r, t in zip(self.results, self.times, strict=True) if r[0] != 200]

    def answered_after(self, t: float) -> int:
        """Requests sent after monotonic time `t` and answered 200."""
        with self.lock:
            return sum(1 for r, (sent, _) in zip(self.results, self.times, strict=True) if r[0] == 200 and sent > t)


def apply_local_volume(node: Node, pv: str, path: str, namespace: str, claim: str, storage_class: str) -> None:
    """A read-only local PersistentVolume of `path` on the node, bound to the claim `namespace/claim`
    (`pvc://CLAIM/...` in a storageUri)."""
    node_name = node.get("nodes")["items"][0]["metadata"]["name"]
    node.apply(json.dumps({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"], "storageClassName": storage_class,
                 "persistentVolumeReclaimPolicy": "Retain", "local": {"path": path},
                 "claimRef": {"namespace": namespace, "name": claim},
                 "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                     {"key": "kubernetes.io/hostname", "operator": "In", "values": [node_name]}]}]}}}}))
    node.apply(json.dumps({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim, "namespace": namespace},
        "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": storage_class, "volumeName": pv,
                 "resources": {"requests": {"storage": "1Gi"}}}}))



def import_built_image(target: str, timeout: float = 1800) -> str:
    """Build the image `target` of scripts/build-images.sh (cached) and import it into the first node's
    containerd, for an image `up` does not import (e.g. runtime-tf); returns its name."""
    built = subprocess.run([str(ROOT / "scripts/build-images.sh"), target], capture_output=True, text=True,
                           timeout=timeout)
    assert built.returncode == 0, f"build-images.sh {target}: {built.stderr[-3000:]}"
    image, tarball = built.stdout.split()[:2]
    imported = subprocess.run(["ctr", "--address", str(STATE / "containerd/containerd.sock"), "-n", "k8s.io",
                               "images", "import", tarball], capture_output=True, text=True, timeout=timeout)
    assert imported.returncode == 0, f"ctr images import {tarball}: {imported.stderr[-2000:]}"
    return image
