"""Image classification through the runtime with a real Paddle model and its ONNX export: the two
backends classify a real photo (scikit-image's astronaut) the same; bad images are 400s; the raw
handler serves v2 tensors."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import ROOT, free_port, http, start_runtime

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def servers(models, photo):
    procs = {}
    for kind, path in (("paddle", models / "paddle"), ("onnx", models / "onnx" / "model.onnx")):
        procs[kind] = start_runtime("--model", str(path), "--name", "flowers", "--handler", "imagenet",
                                    "--labels", str(models / "labels.txt"), "--image-base-dir", str(photo.parent))
    procs["raw"] = start_runtime("--model", str(models / "onnx"), "--name", "tiny", grpc=True)
    yield {**{k: v[1] for k, v in procs.items()}, "raw_grpc": procs["raw"][2]}
    for p, _, _ in procs.values():
        p.terminate()
        p.wait(30)


def predict(port: int, body, path="/flowers/prediction"):
    status, _, data = http("POST", f"http://127.0.0.1:{port}{path}", body)
    return status, json.loads(data)


def test_paddle_and_onnx_agree_on_a_real_photo(servers, photo):
    b64 = base64.b64encode(photo.read_bytes()).decode()
    results = {}
    for kind in ("paddle", "onnx"):
        status, body = predict(servers[kind], {"feed": [{"image": b64}, {"image": str(photo)}], "fetch": ["score"]})
        assert status == 200, body
        results[kind] = body["result"]
        assert results[kind]["label"][0] == results[kind]["label"][1]
        assert results[kind]["label"][0] in {"daisy", "rose", "tulip", "sunflower", "dandelion"}
    assert results["paddle"]["label"] == results["onnx"]["label"]
    assert np.allclose(results["paddle"]["prob"], results["onnx"]["prob"], atol=1e-4)


def test_v2_imagenet_and_metadata(servers, photo):
    port = servers["onnx"]
    status, body = predict(port, {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                              "data": [str(photo)]}]}, "/v2/models/flowers/infer")
    assert status == 200 and body["outputs"][0]["name"] == "label"
    status, _, data = http("GET", f"http://127.0.0.1:{port}/v2/models/flowers")
    meta = json.loads(data)
    assert status == 200 and meta["platform"] == "onnx" and meta["inputs"][0]["name"] == "image"


def test_bad_images_are_400(servers):
    port = servers["paddle"]
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (10, 10)).save(buf, format="PNG")
    cases = [
        {"feed": [{"image": base64.b64encode(b"not an image at all").decode()}]},
        {"feed": [{"image": "%%%not-base64%%%"}]},
        {"feed": [{"image": "/no/such/file.png"}]},
        {"feed": [{"image": "https://example.com/cat.jpg"}]},
        {"feed": [{"img": "x"}]},
        {"feed": []},
    ]
    for body in cases:
        status, out = predict(port, body)
        assert status == 400 and out["error"], (body, out)
    status, out = predict(port, {"feed": [{"image": base64.b64encode(buf.getvalue()).decode()}]})
    assert status == 200  # tiny images are resized, not refused


def test_raw_handler_v2_tensors(servers):
    port = servers["raw"]
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 224, 224], "data": x.ravel().tolist()}]}
    status, out = predict(port, body, "/v2/models/tiny/infer")
    assert status == 200, out
    probs = np.asarray(out["outputs"][0]["data"])
    assert out["outputs"][0]["shape"] == [1, 5] and abs(probs.sum() - 1) < 1e-4
    body["inputs"][0]["datatype"] = "INT64"
    assert predict(port, body, "/v2/models/tiny/infer")[0] == 400
    body["inputs"][0].update(datatype="FP32", shape=[1, 3, 10, 10])
    assert predict(port, body, "/v2/models/tiny/infer")[0] == 400


def test_missing_model_path_exits_with_message():
    out = subprocess.run([sys.executable, "-m", "runtime", "--model", "/no/such/model", "--port", str(free_port())],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "does not exist" in out.stderr


def test_tritonclient_grpc_with_a_tensor_model(servers):
    grpcclient = pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    c = grpcclient.InferenceServerClient(f"127.0.0.1:{servers['raw_grpc']}")
    assert c.is_model_ready("tiny")
    meta = c.get_model_metadata("tiny")
    assert meta.platform == "onnx" and meta.inputs[0].name == "image"
    x = np.random.default_rng(1).random((2, 3, 224, 224), dtype=np.float32)
    inp = grpcclient.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out = c.infer("tiny", [inp]).as_numpy(meta.outputs[0].name)
    assert out.shape == (2, 5) and np.allclose(out.sum(axis=1), 1, atol=1e-4)
    bad = grpcclient.InferInput("image", [1, 3, 8, 8], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 8, 8), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="INVALID_ARGUMENT"):
        c.infer("tiny", [bad])


def test_concurrent_images_are_batched(servers, photo):
    from concurrent.futures import ThreadPoolExecutor

    port = servers["onnx"]
    body = {"feed": [{"image": str(photo)}], "fetch": ["score"]}
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: predict(port, body), range(48)))
    assert all(s == 200 for s, _ in results)
    assert len({r["result"]["label"][0] for _, r in results}) == 1
    text = http("GET", f"http://127.0.0.1:{port}/metrics")[2].decode()
    count = sum(float(ln.split()[-1]) for ln in text.splitlines()
                if ln.startswith("elasticserving_runtime_batch_size_count"))
    total = sum(float(ln.split()[-1]) for ln in text.splitlines()
                if ln.startswith("elasticserving_runtime_batch_size_sum"))
    assert total >= 48 and count < total, (count, total)


def test_tritonclient_http_binary_tensors_with_tensor_models(servers, photo):
    """The binary data extension with numeric tensors (raw handler) and encoded images (imagenet)."""
    httpclient = pytest.importorskip("tritonclient.http")

    c = httpclient.InferenceServerClient(f"127.0.0.1:{servers['raw']}")
    x = np.random.default_rng(2).random((1, 3, 224, 224), dtype=np.float32)
    inp = httpclient.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)  # binary_data=True by default
    name = c.get_model_metadata("tiny")["outputs"][0]["name"]
    binary = c.infer("tiny", [inp], outputs=[httpclient.InferRequestedOutput(name)]).as_numpy(name)
    status, out = predict(servers["raw"], {"inputs": [{"name": "image", "datatype": "FP32", "shape": list(x.shape),
                                                       "data": x.ravel().tolist()}]}, "/v2/models/tiny/infer")
    assert status == 200 and binary.dtype == np.float32 and binary.shape == (1, 5)
    assert np.allclose(binary.ravel(), out["outputs"][0]["data"], atol=1e-6)

    c = httpclient.InferenceServerClient(f"127.0.0.1:{servers['onnx']}")
    img = httpclient.InferInput("image", [1], "BYTES")
    img.set_data_from_numpy(np.array([photo.read_bytes()], dtype=object))  # the JPEG bytes themselves
    label = c.infer("flowers", [img], outputs=[httpclient.InferRequestedOutput("label")]).as_numpy("label")
    status, out = predict(servers["onnx"], {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                                        "data": [str(photo)]}]}, "/v2/models/flowers/infer")
    assert status == 200 and label.tolist() == [out["outputs"][0]["data"][0].encode()]
