"""A user's own model on the real node, as a Kubernetes user serves it (issue 24 item 9): a Secret with
S3 keys and a PaddleService with `storageUri: s3://...` and no `arg`, served by a Pod from zero (the
storage-initializer downloads into the node's cache); a second scale from zero downloads nothing (the
storage initializer's log and the replica's pull metric say so); `pvc://` on a local PersistentVolume; wrong
keys give 503 and a condition naming the URI, with the secret nowhere in status, events or logs; a
TensorFlow SavedModel from S3 served by the runtime-tf image (item 11) with its exact dtypes."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.cluster.node import ROOT, Node, apply_local_volume, host_of, import_built_image
from tests.helpers import wait_for
from tests.s3_server import run_s3_server

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

NS = "own-models"
NODE_IP = "10.244.0.1"  # the node's address on cni0: Pods reach a server bound there
CACHE_ROOT = Path("/var/cache/elasticserving/models")  # the controller's default hostPath
PV_DIR = Path("/var/lib/elasticserving-test-pv")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("own-model")
    subprocess.run([sys.executable, str(ROOT / "examples/own_model.py"), str(out / "m")], check=True,
                   capture_output=True, timeout=300)
    return out / "m"


@pytest.fixture(scope="module")
def s3(model_dir):
    with run_s3_server(host=NODE_IP) as server:
        bucket = server.make_bucket("own-models")
        for f in sorted(model_dir.iterdir()):
            server.put(bucket, f"iris/v1/{f.name}", f.read_bytes())
        yield server


@pytest.fixture(scope="module")
def ns(stack: Node):
    # the node's cache: the non-root storage initializer (uid 65532) creates its namespace's directory in it
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    CACHE_ROOT.chmod(0o1777)
    stack.kubectl("delete", "namespace", NS, "--ignore-not-found", "--wait=true", timeout=300)
    stack.kubectl("create", "namespace", NS)
    # The cache is per node: with the other nodes cordoned, every scale from zero lands on this one.
    others = [n["metadata"]["name"] for n in stack.get("nodes")["items"][1:]]
    for other in others:
        stack.kubectl("cordon", other)
    try:
        yield NS
    finally:
        for other in others:
            stack.kubectl("uncordon", other, check=False)
    stack.kubectl("delete", "namespace", NS, "--ignore-not-found", "--wait=true", timeout=300)
    stack.kubectl("delete", "pv", "own-models-pv", "--ignore-not-found", timeout=120)
    shutil.rmtree(CACHE_ROOT / NS, ignore_errors=True)
    shutil.rmtree(PV_DIR, ignore_errors=True)


def _secret(name: str, data: dict[str, str]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS},
                       "stringData": data})


def _psvc(name: str, uri: str, image: str = "elasticserving/runtime", **side: str) -> str:
    return json.dumps({"apiVersion": "elasticserving.paddlepaddle.org/v1", "kind": "PaddleService",
                       "metadata": {"name": name, "namespace": NS},
                       "spec": {"default": {"containerImage": image, "tag": "latest",
                                            "port": 9292, "storageUri": uri, **side},
                                "service": {"minScale": 0, "window": "6s"}}})


IRIS_INPUTS = [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4, 1.0, -1.0, 0.5, 2.0]}]


def _infer(node: Node, name: str, timeout: float = 300, inputs: list[dict] = IRIS_INPUTS):
    body = json.dumps({"inputs": inputs}).encode()
    # 404 only until the new route reaches the activators
    return wait_for(lambda: (a := node.post(host_of(NS, name), f"/v2/models/{name}/infer", body,
                                            timeout=timeout)).status != 404 and a, 60, 0.2, f"{name} routed")


def _init_logs(node: Node, name: str) -> str:
    pods = node.pods(NS, name)
    return "\n".join(node.kubectl("logs", "-n", NS, p["metadata"]["name"], "-c", "storage-initializer",
                                  check=False) for p in pods)


def _pull_metric(pod: dict) -> str:
    with urllib.request.urlopen(f"http://{pod['status']['podIP']}:9292/metrics", timeout=10) as r:
        return next(line for line in r.read().decode().splitlines()
                    if line.startswith("elasticserving_runtime_model_pull_downloaded_bytes{"))


def test_an_own_model_from_s3_is_served_from_zero_and_cached_on_the_node(stack: Node, ns, s3) -> None:
    stack.apply(_secret("s3-creds", s3.env() | {"AWS_ENDPOINT_URL": s3.endpoint}))
    stack.apply(_psvc("iris", "s3://own-models/iris/v1/", storageSecret="s3-creds"))
    first = _infer(stack, "iris")
    assert first.status == 200, first.body[:500]
    outputs = {o["datatype"]: o for o in first.json()["outputs"]}
    assert set(outputs) == {"FP32", "INT64"} and outputs["FP32"]["shape"] == [2, 3]
    assert "downloaded s3://own-models/iris/v1/" in _init_logs(stack, "iris")
    (pod,) = [p for p in stack.pods(NS, "iris") if p["status"].get("podIP")]
    assert 'cache="miss"' in _pull_metric(pod)
    # back to zero, then a new Pod from zero: the node holds the version, nothing is downloaded
    wait_for(lambda: not stack.pods(NS, "iris"), 180, 0.5, "scale to zero")
    again = _infer(stack, "iris")
    assert again.status == 200 and again.json()["outputs"] == first.json()["outputs"]
    assert "is in this node's cache: nothing downloaded" in _init_logs(stack, "iris")
    (pod,) = [p for p in stack.pods(NS, "iris") if p["status"].get("podIP")]
    metric = _pull_metric(pod)
    assert 'cache="hit"' in metric and metric.endswith(" 0.0")


def test_wrong_keys_are_503_and_a_condition_and_the_secret_shows_nowhere(stack: Node, ns, s3) -> None:
    wrong = "wrong-secret-" + "q" * 24
    stack.apply(_secret("s3-wrong", s3.env() | {"AWS_ENDPOINT_URL": s3.endpoint, "AWS_SECRET_ACCESS_KEY": wrong}))
    stack.apply(_psvc("locked", "s3://own-models/iris/v1/", storageSecret="s3-wrong"))
    answer = _infer(stack, "locked")
    assert answer.status == 503, answer.body[:500]
    assert b"cannot pull s3://own-models/iris/v1/: access denied" in answer.body
    cond = wait_for(lambda: next((c for c in stack.psvc(NS, "locked").get("status", {}).get("conditions", [])
                                  if c["type"] == "Ready" and c.get("reason") == "ModelPullFailed"), None),
                    60, 0.5, "the ModelPullFailed condition")
    assert "s3://own-models/iris/v1/" in cond["message"]
    seen = [json.dumps(stack.psvc(NS, "locked")), stack.kubectl("get", "events", "-n", NS, "-o", "json"),
            stack.kubectl("get", "pods", "-n", NS, "-o", "json"), _init_logs(stack, "locked"),
            stack.kubectl("logs", "-n", "elasticserving-system", "-l", "app.kubernetes.io/component=controller",
                          "--tail=-1", check=False)]
    for text in seen:
        assert wrong not in text and s3.secret_key not in text
    assert "ModelPullFailed" in stack.kubectl("get", "paddleservice", "-n", NS, "locked", "-o", "wide")


def test_pvc_serves_a_model_on_a_local_persistent_volume(stack: Node, ns, model_dir) -> None:
    shutil.rmtree(PV_DIR, ignore_errors=True)
    shutil.copytree(model_dir, PV_DIR / "iris" / "v1")
    for p in [PV_DIR, *PV_DIR.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    apply_local_volume(stack, "own-models-pv", str(PV_DIR), NS, "model-store", "local-models")
    # a first request while the claim binds would wait for it; the test asks once it is bound
    wait_for(lambda: stack.get("pvc", "-n", NS, "model-store")["status"].get("phase") == "Bound", 60, 0.2,
             "the claim bound")
    stack.apply(_psvc("from-pvc", "pvc://model-store/iris/v1"))
    answer = _infer(stack, "from-pvc")
    assert answer.status == 200, answer.body[:500]
    assert {o["datatype"] for o in answer.json()["outputs"]} == {"FP32", "INT64"}
    (pod,) = [p for p in stack.pods(NS, "from-pvc") if p["status"].get("podIP")]
    assert "initContainers" not in pod["spec"]


def test_a_uri_that_does_not_exist_names_itself(stack: Node, ns, s3) -> None:
    stack.apply(_secret("s3-creds", s3.env() | {"AWS_ENDPOINT_URL": s3.endpoint}))
    stack.apply(_psvc("absent", "s3://own-models/nothing/here/", storageSecret="s3-creds"))
    answer = _infer(stack, "absent")
    assert answer.status == 503
    assert b"cannot pull s3://own-models/nothing/here/: no objects under" in answer.body, answer.body[:500]



def test_a_tensorflow_saved_model_from_s3_is_served_by_the_tf_image(stack: Node, ns, s3, tmp_path) -> None:
    # the `tf` extra (scripts/setup.sh --test) builds the SavedModel, in a subprocess: TensorFlow must not load
    # in this process (a later in-process import of Paddle would crash it)
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("scripts/setup.sh --test installs tensorflow-cpu")
    subprocess.run([sys.executable, str(ROOT / "tests/runtime/build_tf_model.py"), str(tmp_path)], check=True,
                   capture_output=True, timeout=600)
    bucket = "own-models"
    for f in sorted((tmp_path / "strings").rglob("*")):
        if f.is_file():
            s3.put(bucket, f"strings/v1/{f.relative_to(tmp_path / 'strings')}", f.read_bytes())
    image = import_built_image("runtime-tf")
    stack.apply(_secret("s3-creds", s3.env() | {"AWS_ENDPOINT_URL": s3.endpoint}))
    stack.apply(_psvc("words", "s3://own-models/strings/v1/", image=image.rsplit(":", 1)[0],
                      storageSecret="s3-creds"))
    answer = _infer(stack, "words", inputs=[
        {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["ab", "wörter"]},
        {"name": "scale", "shape": [2], "datatype": "FP64", "data": [0.5, 2.0]}])
    assert answer.status == 200, answer.body[:500]
    outputs = {o["name"]: (o["datatype"], o["shape"], o["data"]) for o in answer.json()["outputs"]}
    assert outputs == {"upper": ("BYTES", [2], ["AB", "WöRTER"]), "length": ("INT32", [2], [2, 6]),
                       "scaled": ("FP64", [2], [1.0, 12.0]), "long": ("BOOL", [2], [False, True])}
    (pod,) = [p for p in stack.pods(NS, "words") if p["status"].get("podIP")]
    assert pod["spec"]["containers"][0]["image"].startswith(image.rsplit(":", 1)[0])
