"""A user's own model from a storageUri on the local stack, as a user runs it: a `paddle.jit.save`
model packed as a .tar.gz on a real HTTP origin, served from zero with no `arg`, pulled once and then
served from the cache; a URI that cannot be pulled gives 503 and a condition naming it, and another
service in the same stack is untouched."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import urllib.request

import numpy as np
import pytest

from tests.helpers import ROOT, start_stack, wait_for, write_yaml
from tests.storage.http_origin import Blob, Origin

pytestmark = pytest.mark.timeout(300)
NS = "models"


def own_model(name: str, uri: str, **side) -> dict:
    return {"apiVersion": "elasticserving.paddlepaddle.org/v1", "kind": "PaddleService",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"default": {"containerImage": "elasticserving/runtime", "tag": "latest", "port": 9292,
                                 "storageUri": uri, **side},
                     "service": {"minScale": 0, "window": "6s"}}}


@pytest.fixture(scope="module")
def model_tgz(tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("user-model")
    subprocess.run([sys.executable, str(ROOT / "tests/runtime/build_user_model.py"), str(out), "user"],
                   check=True, capture_output=True, timeout=300)
    arc = out / "user.tar.gz"
    with tarfile.open(arc, "w:gz") as tar:
        for f in sorted((out / "user" / "paddle").iterdir()):
            tar.add(f, arcname=f.name)
    return arc.read_bytes()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, model_tgz):
    tmp = tmp_path_factory.mktemp("storage-stack")
    with Origin() as origin:
        origin.blobs["/models/user.tar.gz"] = Blob(model_tgz, etag='"v1"')
        origin.blobs["/models/notes.txt"] = Blob(b"not a model", etag='"n"')
        f = write_yaml(tmp / "own.yaml",
                       own_model("iris", origin.url("/models/user.tar.gz")),
                       own_model("not-a-model", origin.url("/models/notes.txt")),
                       own_model("missing", origin.url("/models/absent.tar.gz?X-Amz-Signature=s3cr3t")))
        s = start_stack(tmp, [f], config={"scale-to-zero-grace-period": "1s"},
                        extra=["--model-cache", str(tmp / "cache"), "--request-timeout", "30"])
        s.origin = origin
        yield s
        code = s.stop()
        assert code == 0, "\n".join(s.output[-30:])
        assert "s3cr3t" not in "\n".join(s.output)
        for log in (tmp / "logs").glob("*.log"):
            assert "s3cr3t" not in log.read_text(errors="replace")


def infer(stack, name: str, rows: list[list[float]]):
    body = {"inputs": [{"name": "x", "shape": [len(rows), 4], "datatype": "FP32", "data": sum(rows, [])}]}
    status, _, data = stack.request(f"{name}.{NS}.example.com", f"/v2/models/{name}/infer", body, timeout=60)
    return status, json.loads(data)


def secret(name: str, data: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS}, "stringData": data}


def replica_metrics(stack, key: str) -> str:
    def targets() -> list[str]:
        status, _, data = stack.control_http("GET", "/v1/prometheus/targets")
        assert status == 200
        return [t for group in json.loads(data) for t in group["targets"] if group["labels"].get("service") == key]

    # a replica started from zero joins the scrape targets a moment after it answered (seen on a busy machine)
    wait_for(lambda: targets(), 30, 0.1, f"a scrape target of {key}")
    with urllib.request.urlopen(f"http://{targets()[0]}/metrics", timeout=10) as resp:
        return resp.read().decode()


def test_an_own_model_from_http_is_served_from_zero_and_pulled_once(stack):
    status, answer = infer(stack, "iris", [[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 2.0]])
    assert status == 200, answer
    # paddle.jit.save names the outputs itself: told apart by their datatypes
    out = {o["datatype"]: o for o in answer["outputs"]}
    scores = np.array(out["FP32"]["data"], dtype=np.float32).reshape(out["FP32"]["shape"])
    assert scores.shape == (2, 3) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-5)
    assert out["INT64"]["data"] == scores.argmax(axis=1).tolist()
    assert stack.origin.bodies_sent["/models/user.tar.gz"] == 1
    metrics = replica_metrics(stack, f"{NS}/iris")
    assert 'cache="miss"' in metrics and "elasticserving_runtime_model_pull_downloaded_bytes" in metrics

    # back to zero, then from zero again: the version is in the cache, nothing is downloaded
    wait_for(lambda: stack.service(f"{NS}/iris")["status"]["replicas"] == 0, 60, 0.2, "scale to zero")
    status, again = infer(stack, "iris", [[0.1, 0.2, 0.3, 0.4]])
    assert status == 200, again  # a failed answer says why (one CI run got an error body here, unseen)
    first = next(o for o in again["outputs"] if o["datatype"] == "FP32")
    assert first["data"] == out["FP32"]["data"][:3]
    assert stack.origin.bodies_sent["/models/user.tar.gz"] == 1
    metrics = replica_metrics(stack, f"{NS}/iris")
    assert 'elasticserving_runtime_model_pull_downloaded_bytes{cache="hit"' in metrics
    # the stack's output is read by a thread of its own: the line may reach it a moment after the answer
    wait_for(lambda: any("from the model cache, nothing downloaded" in line for line in stack.output), 10, 0.05,
             "the cache-hit log line")


def test_a_uri_that_cannot_be_pulled_is_503_with_the_uri_and_a_condition(stack):
    status, answer = infer(stack, "missing", [[0.0, 0.0, 0.0, 0.0]])
    assert status == 503, answer
    shown = stack.origin.url("/models/absent.tar.gz") + "?…"
    assert shown in answer["error"] and "not found (HTTP 404)" in answer["error"]
    item = stack.service(f"{NS}/missing")
    ready = next(c for c in item["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "ModelPullFailed"
    assert shown in ready["message"] and "s3cr3t" not in json.dumps(item["status"])
    wide = stack.cli("get", "missing", "-o", "wide")
    assert wide.returncode == 0 and "not found (HTTP 404)" in wide.stdout
    # the other service of the stack is untouched
    status, _ = infer(stack, "iris", [[0.1, 0.2, 0.3, 0.4]])
    assert status == 200


def test_files_that_are_no_model_say_so_with_the_uri(stack):
    status, answer = infer(stack, "not-a-model", [[0.0, 0.0, 0.0, 0.0]])
    assert status == 503, answer
    assert "no model found" in answer["error"], answer
    assert f"the model pulled from {stack.origin.url('/models/notes.txt')}" in answer["error"], answer


def test_a_storage_uri_replica_is_forked_pre_warmed(tmp_path, model_tgz):
    with Origin() as origin:
        origin.blobs["/user.tar.gz"] = Blob(model_tgz, etag='"v1"')
        f = write_yaml(tmp_path / "own.yaml", own_model("warm", origin.url("/user.tar.gz")))
        s = start_stack(tmp_path, [f], extra=["--model-cache", str(tmp_path / "cache"), "--prewarm"])
        try:
            # the zygote imports paddle first (about 1 s, longer on a busy machine): forks come after
            wait_for(lambda: any("zygote paddle ready" in line for line in s.output), 60, 0.1, "the zygote")
            status, answer = infer(s, "warm", [[0.1, 0.2, 0.3, 0.4]])
            assert status == 200, answer
            wait_for(lambda: any("started replica" in line and "pre-warmed" in line for line in s.output), 10,
                     0.05, "the pre-warmed start's log line")
        finally:
            assert s.stop() == 0


def test_an_own_model_from_s3_with_a_secret_and_wrong_keys_refused(tmp_path, model_tgz, s3_server):
    """The same YAML as on Kubernetes: a Secret with AWS_* keys and the endpoint, named by storageSecret.
    Wrong keys: 503 and a condition saying access was denied; the secret shows nowhere."""
    bucket = s3_server.make_bucket("own-models")
    with tarfile.open(fileobj=io.BytesIO(model_tgz)) as tar:
        for m in tar.getmembers():
            s3_server.put(bucket, f"iris/v1/{m.name}", tar.extractfile(m).read())
    good = {**s3_server.env()}
    wrong_secret = "not-the-secret-" + "x" * 20
    bad = {**good, "AWS_SECRET_ACCESS_KEY": wrong_secret}
    f = write_yaml(tmp_path / "s3.yaml", secret("s3-creds", good), secret("s3-wrong", bad),
                   own_model("from-s3", f"s3://{bucket}/iris/v1/", storageSecret="s3-creds"),
                   own_model("wrong-keys", f"s3://{bucket}/iris/v1/", storageSecret="s3-wrong"))
    s = start_stack(tmp_path, [f], extra=["--model-cache", str(tmp_path / "cache"), "--request-timeout", "30"])
    try:
        status, answer = infer(s, "from-s3", [[0.1, 0.2, 0.3, 0.4]])
        assert status == 200, answer
        assert {o["datatype"] for o in answer["outputs"]} == {"FP32", "INT64"}
        status, answer = infer(s, "wrong-keys", [[0.1, 0.2, 0.3, 0.4]])
        assert status == 503, answer
        assert f"cannot pull s3://{bucket}/iris/v1/: access denied" in answer["error"], answer
        item = s.service(f"{NS}/wrong-keys")
        ready = next(c for c in item["status"]["conditions"] if c["type"] == "Ready")
        assert ready["reason"] == "ModelPullFailed" and "access denied" in ready["message"]
    finally:
        assert s.stop() == 0
    seen = "\n".join(s.output) + "".join(p.read_text(errors="replace") for p in (tmp_path / "logs").glob("*"))
    for value in (good["AWS_SECRET_ACCESS_KEY"], wrong_secret):
        assert value not in seen and value not in json.dumps(item["status"])


def test_a_tensorflow_saved_model_from_a_storage_uri(tmp_path):
    """A SavedModel (exported by TensorFlow in a subprocess: TF must not load in this process) as a
    .tar.gz, served by our runtime with the backend found from the files, exact dtypes in the answer."""
    subprocess.run([sys.executable, str(ROOT / "tests/runtime/build_tf_model.py"), str(tmp_path / "tf")],
                   check=True, capture_output=True, timeout=300)
    arc = tmp_path / "classifier.tar.gz"
    with tarfile.open(arc, "w:gz") as tar:
        for f in sorted((tmp_path / "tf" / "classifier").iterdir()):
            tar.add(f, arcname=f.name)
    with Origin() as origin:
        origin.blobs["/tf/classifier.tar.gz"] = Blob(arc.read_bytes(), etag='"tf1"')
        f = write_yaml(tmp_path / "tf.yaml", own_model("tf-model", origin.url("/tf/classifier.tar.gz")))
        s = start_stack(tmp_path, [f], extra=["--model-cache", str(tmp_path / "cache")])
        try:
            status, answer = infer(s, "tf-model", [[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 2.0]])
            assert status == 200, answer
            out = {o["name"]: o for o in answer["outputs"]}
            assert (out["scores"]["datatype"], out["scores"]["shape"]) == ("FP32", [2, 3])
            assert (out["label"]["datatype"], out["label"]["shape"]) == ("INT64", [2])
            scores = np.array(out["scores"]["data"]).reshape(2, 3)
            assert out["label"]["data"] == scores.argmax(axis=1).tolist()
            status, _, data = s.request(f"tf-model.{NS}.example.com", "/v2/models/tf-model", timeout=60)
            meta = json.loads(data)
            assert status == 200 and meta["platform"].startswith("tensorflow"), meta
            assert {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]} == {
                "scores": ("FP32", [-1, 3]), "label": ("INT64", [-1])}
        finally:
            assert s.stop() == 0
