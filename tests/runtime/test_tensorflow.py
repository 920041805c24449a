"""The TensorFlow backend with real SavedModels (tests/runtime/build_tf_model.py) served by real runtime
processes on loopback: exact v2 metadata, answers equal to TensorFlow's own over v2 REST (JSON and binary),
v2 gRPC and the Paddle Serving web API, bad inputs as 400s, and clear refusals (no `serving_default`,
no TensorFlow, a corrupt SavedModel).

TensorFlow runs only in subprocesses, never in the pytest process: Paddle imported after TensorFlow in one
process crashes (SIGSEGV in libpaddle's protobuf registration), and other tests import Paddle lazily."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT, free_port, http, start_runtime

pytestmark = pytest.mark.timeout(300)

TEXTS = ["héllo wörld", "ab", "", "北京"]


@pytest.fixture(scope="module", autouse=True)
def tensorflow_stays_out_of_this_process():
    before = "tensorflow" in sys.modules
    yield
    assert before or "tensorflow" not in sys.modules, "a test imported tensorflow into the pytest process"


@pytest.fixture(scope="module")
def tf_models(tmp_path_factory) -> Path:
    if importlib.util.find_spec("tensorflow") is None:  # found, not imported: see the module docstring
        pytest.skip("tensorflow is not installed (scripts/setup.sh --test installs it)")
    out = tmp_path_factory.mktemp("tf-models")
    subprocess.run([sys.executable, str(ROOT / "tests/runtime/build_tf_model.py"), str(out)], check=True,
                   capture_output=True, timeout=240)
    return out


@pytest.fixture(scope="module")
def servers(tf_models):
    procs = {name: start_runtime("--model", str(tf_models / name), "--name", name, grpc=True)
             for name in ("classifier", "strings")}
    yield {name: (port, grpc_port) for name, (_, port, grpc_port) in procs.items()}
    for p, _, _ in procs.values():
        p.terminate()
        p.wait(30)
        p.stderr.close()


REFERENCE = """
import sys
import numpy as np
import tensorflow as tf
model, inputs, answers = sys.argv[1:]
fn = tf.saved_model.load(model).signatures["serving_default"]
with np.load(inputs, allow_pickle=True) as feeds:
    out = fn(**{k: tf.constant(feeds[k]) for k in feeds.files})
np.savez(answers, **{k: v.numpy() for k, v in out.items()})
"""


@pytest.fixture(scope="module")
def reference(tf_models, tmp_path_factory):
    """TensorFlow's own answers: the SavedModels' serving_default signatures called directly (in a
    subprocess, see the module docstring)."""
    def call(name: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        d = tmp_path_factory.mktemp(f"reference-{name}")
        np.savez(d / "inputs.npz", **inputs)
        subprocess.run([sys.executable, "-c", REFERENCE, str(tf_models / name), str(d / "inputs.npz"),
                        str(d / "answers.npz")], check=True, capture_output=True, timeout=120)
        with np.load(d / "answers.npz", allow_pickle=True) as answers:
            return {k: answers[k] for k in answers.files}

    x = np.random.default_rng(3).normal(size=(5, 4)).astype(np.float32)
    text = np.array([t.encode() for t in TEXTS], dtype=object)
    scale = np.array([0.5, 2.0, 3.0, -1.25])
    return {"x": x, "classifier": call("classifier", x=x),
            "text": text, "scale": scale, "strings": call("strings", text=text, scale=scale)}


def post(port: int, path: str, body) -> tuple[int, dict]:
    status, _, data = http("POST", f"http://127.0.0.1:{port}{path}", body)
    return status, json.loads(data)


@pytest.mark.parametrize("name, inputs, outputs", [
    ("classifier", [("x", "FP32", [-1, 4])], [("label", "INT64", [-1]), ("scores", "FP32", [-1, 3])]),
    ("strings", [("scale", "FP64", [-1]), ("text", "BYTES", [-1])],
     [("length", "INT32", [-1]), ("long", "BOOL", [-1]), ("scaled", "FP64", [-1]), ("upper", "BYTES", [-1])]),
])
def test_v2_metadata_has_the_signature_dtypes_and_shapes(servers, name, inputs, outputs):
    status, _, data = http("GET", f"http://127.0.0.1:{servers[name][0]}/v2/models/{name}")
    meta = json.loads(data)
    assert status == 200 and meta["platform"] == "tensorflow"
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == inputs
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]] == outputs


def test_v2_rest_json_answers_equal_tensorflow(servers, reference):
    x, want = reference["x"], reference["classifier"]
    status, body = post(servers["classifier"][0], "/v2/models/classifier/infer",
                        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [5, 4], "data": x.tolist()}]})
    assert status == 200, body
    out = {o["name"]: o for o in body["outputs"]}
    assert (out["scores"]["datatype"], out["scores"]["shape"]) == ("FP32", [5, 3])
    assert np.allclose(np.reshape(out["scores"]["data"], (5, 3)), want["scores"], atol=1e-6)
    assert (out["label"]["datatype"], out["label"]["shape"], out["label"]["data"]) == ("INT64", [5], want["label"].tolist())

    want = reference["strings"]
    status, body = post(servers["strings"][0], "/v2/models/strings/infer", {"inputs": [
        {"name": "text", "datatype": "BYTES", "shape": [4], "data": TEXTS},
        {"name": "scale", "datatype": "FP64", "shape": [4], "data": reference["scale"].tolist()}]})
    assert status == 200, body
    out = {o["name"]: (o["datatype"], o["shape"], o["data"]) for o in body["outputs"]}
    assert out == {"upper": ("BYTES", [4], [v.decode() for v in want["upper"]]),
                   "length": ("INT32", [4], want["length"].tolist()),
                   "scaled": ("FP64", [4], want["scaled"].tolist()),
                   "long": ("BOOL", [4], want["long"].tolist())}


def test_v2_rest_binary_tensors_equal_tensorflow(servers, reference):
    httpclient = pytest.importorskip("tritonclient.http")

    c = httpclient.InferenceServerClient(f"127.0.0.1:{servers['strings'][0]}")
    text = httpclient.InferInput("text", [4], "BYTES")
    text.set_data_from_numpy(reference["text"])
    scale = httpclient.InferInput("scale", [4], "FP64")
    scale.set_data_from_numpy(reference["scale"])
    names = ["upper", "length", "scaled", "long"]
    r = c.infer("strings", [text, scale], outputs=[httpclient.InferRequestedOutput(n) for n in names])
    for n in names:
        got, want = r.as_numpy(n), reference["strings"][n]
        assert got.dtype == want.dtype and got.tolist() == want.tolist(), n


def test_v2_grpc_answers_equal_tensorflow(servers, reference):
    grpcclient = pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    c = grpcclient.InferenceServerClient(f"127.0.0.1:{servers['classifier'][1]}")
    meta = c.get_model_metadata("classifier")
    assert meta.platform == "tensorflow"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("label", "INT64", [-1]),
                                                                           ("scores", "FP32", [-1, 3])]
    x = grpcclient.InferInput("x", [5, 4], "FP32")
    x.set_data_from_numpy(reference["x"])
    r = c.infer("classifier", [x])
    assert np.allclose(r.as_numpy("scores"), reference["classifier"]["scores"], atol=1e-6)
    assert r.as_numpy("label").dtype == np.int64
    assert r.as_numpy("label").tolist() == reference["classifier"]["label"].tolist()
    bad = grpcclient.InferInput("x", [1, 5], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 5), np.float32))
    with pytest.raises(InferenceServerException, match="INVALID_ARGUMENT"):
        c.infer("classifier", [bad])

    c = grpcclient.InferenceServerClient(f"127.0.0.1:{servers['strings'][1]}")
    text = grpcclient.InferInput("text", [4], "BYTES")
    text.set_data_from_numpy(reference["text"])
    scale = grpcclient.InferInput("scale", [4], "FP64")
    scale.set_data_from_numpy(reference["scale"])
    r = c.infer("strings", [text, scale])
    for n, want in reference["strings"].items():
        assert r.as_numpy(n).tolist() == want.tolist(), n


def test_paddle_serving_web_api(servers, reference):
    x, want = reference["x"], reference["classifier"]
    status, body = post(servers["classifier"][0], "/classifier/prediction",
                        {"feed": [{"x": row} for row in x.tolist()], "fetch": ["scores", "label"]})
    assert status == 200, body
    assert np.allclose(body["result"]["scores"], want["scores"], atol=1e-6)
    assert body["result"]["label"] == want["label"].tolist()

    want = reference["strings"]
    status, body = post(servers["strings"][0], "/strings/prediction",
                        {"feed": [{"text": t, "scale": s} for t, s in zip(TEXTS, reference["scale"].tolist(),
                                                                          strict=True)],
                         "fetch": ["upper", "scaled"]})
    assert status == 200, body
    assert body["result"] == {"upper": [v.decode() for v in want["upper"]], "scaled": want["scaled"].tolist()}


@pytest.mark.parametrize("path, body, reason", [
    ("/v2/models/classifier/infer",
     {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 5], "data": [0.0] * 10}]}, "shape [2, 5]"),
    ("/v2/models/classifier/infer",
     {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": [0.0] * 4}]}, "datatype FP32"),
    ("/v2/models/classifier/infer",
     {"inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "data": [0.0] * 4}]}, "shape [4]"),
    ("/classifier/prediction", {"feed": [{"x": [1.0, 2.0, 3.0]}], "fetch": ["label"]}, "shape [1, 3]"),
    ("/classifier/prediction", {"feed": [{"x": [1.0, 2.0, 3.0, 4.0]}], "fetch": ["logits"]}, "unknown fetch"),
])
def test_bad_inputs_are_400_with_a_reason(servers, path, body, reason):
    port = servers["classifier"][0]
    status, out = post(port, path, body)
    assert status == 400 and reason in out["error"], out
    status, out = post(port, "/classifier/prediction", {"feed": [{"x": [1.0, 2.0, 3.0, 4.0]}]})
    assert status == 200, out  # still serving


@pytest.mark.parametrize("model, reason", [
    ("unsigned", "no `serving_default` signature (it has predict)"),
    ("corrupt", "cannot load TensorFlow SavedModel from"),
])
def test_unservable_savedmodels_are_refused_with_the_reason(tf_models, model, reason):
    if model == "corrupt":
        (tf_models / model).mkdir(exist_ok=True)
        (tf_models / model / "saved_model.pb").write_bytes(b"\x08\x01not a protobuf message")
    out = subprocess.run([sys.executable, "-m", "runtime", "--model", str(tf_models / model),
                          "--port", str(free_port()), "--host", "127.0.0.1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 3 and reason in out.stderr, out.stderr


def test_tensorflow_backend_without_tensorflow_is_a_clear_error(tmp_path):
    """TensorFlow made unimportable in the runtime process only (`sitecustomize` runs at start-up), so this
    runs whether or not it is installed; saved_model.pb is all the backend detection looks at."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "saved_model.pb").write_bytes(b"")
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent("""
        import sys
        sys.modules["tensorflow"] = None  # `import tensorflow` raises ImportError
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-m", "runtime", "--model", str(tmp_path / "model"),
                          "--port", str(free_port()), "--host", "127.0.0.1"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 3, out.stderr
    assert "the tensorflow backend needs TensorFlow: pip install 'elasticserving[tf]'" in out.stderr


def test_thread_pools_are_sized_before_the_first_op_and_later_kept(tf_models):
    """In a fresh process the pools take --threads; once TensorFlow runs, a second backend keeps them (TF
    refuses to resize) and says so instead of failing. TF_CPP_MIN_LOG_LEVEL is set before TF's import."""
    script = textwrap.dedent(f"""
        import logging, os, sys
        from pathlib import Path
        import numpy as np
        from runtime.tf_backend import TensorFlowBackend
        logging.basicConfig(stream=sys.stdout, format="%(message)s")
        b = TensorFlowBackend(Path({str(tf_models / "classifier")!r}), 1, None)
        b.run({{"x": np.zeros((1, 4), np.float32)}})
        TensorFlowBackend(Path({str(tf_models / "strings")!r}), 2, None)
        threading = b.tf.config.threading
        print(threading.get_intra_op_parallelism_threads(), threading.get_inter_op_parallelism_threads(),
              os.environ["TF_CPP_MIN_LOG_LEVEL"])
    """)
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "its thread pools stay (intra, inter) = (1, 1)" in lines[0] and lines[-1] == "1 1 1", out.stdout
    assert "cpu_feature_guard" not in out.stderr  # an INFO line TF logs at its first op
