"""A user's own model served by the raw handler, Paddle and ONNX (the models of build_user_model.py):
v2 metadata with the program's own dtypes and shapes; outputs with their true dtypes on v2 REST (JSON and
binary), gRPC and the Paddle Serving web API; dynamic batching that answers as if alone (merged
requests, requests of other shapes, a bad request in a merged batch, models that must not batch).

Merging is seen in the runtime's batch-size histogram (one observation per backend call, its rows)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime.backends import load_backend
from runtime.handlers.raw import INLINE_BATCH_UNDER, RawTensors
from runtime.storage.names import PULL_REPORT_ENV
from runtime.tensors import DTYPES, datatype_of
from tests.helpers import ROOT, free_port, http, start_runtime, wait_for

pytestmark = pytest.mark.timeout(300)

WINDOW_MS = "300"  # --batch-timeout-ms: a burst sent at once lands in one window even on a busy machine
USER_META = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
             "outputs": [{"name": "fetch_name_0", "datatype": "FP32", "shape": [-1, 3]},
                         {"name": "fetch_name_1", "datatype": "INT64", "shape": [-1]}]}


@pytest.fixture(scope="module")
def user_models(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("user-models")
    subprocess.run([sys.executable, str(ROOT / "tests/runtime/build_user_model.py"), str(out)], check=True,
                   capture_output=True, timeout=240)
    return out


@dataclass
class Runtime:
    proc: subprocess.Popen
    port: int
    grpc_port: int | None
    name: str

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def infer(self, x: np.ndarray) -> tuple[int, Any]:
        status, _, data = http("POST", self.url(f"/v2/models/{self.name}/infer"), v2_body(x))
        return status, json.loads(data)

    def batches(self) -> dict[str, float]:
        """The batch-size histogram: `count` backend calls, `sum` rows, `le=N` calls of at most N rows."""
        text = http("GET", self.url("/metrics"))[2].decode()
        out = {}
        for m in re.finditer(r'^elasticserving_runtime_batch_size_(count|sum|bucket)\{(?:le="([^"]+)",)?'
                             rf'model="{self.name}"\}} (\S+)$', text, re.M):
            out[m.group(1) if m.group(1) != "bucket" else f"le={float(m.group(2)):g}"] = float(m.group(3))
        return out

    def stop(self) -> str:
        """Terminate; its stderr."""
        self.proc.terminate()
        self.proc.wait(30)
        return self.proc.stderr.read()


def start(models: Path, model: str, backend: str, *extra: str, grpc: bool = False) -> Runtime:
    p, port, grpc_port = start_runtime("--model", str(models / model / backend), "--name", model,
                                       "--batch-timeout-ms", WINDOW_MS, *extra, grpc=grpc)
    return Runtime(p, port, grpc_port, model)


@pytest.fixture(scope="module")
def runtimes(user_models):
    """runtimes(model, backend): one runtime per model and backend for the module (gRPC on)."""
    started: dict[tuple[str, str], Runtime] = {}

    def get(model: str, backend: str) -> Runtime:
        if (model, backend) not in started:
            started[model, backend] = start(user_models, model, backend, grpc=True)
        return started[model, backend]

    yield get
    for r in started.values():
        r.stop()


@pytest.fixture(scope="module")
def alone(user_models):
    """alone(model, backend, x): the model's answer to `x` run by itself, in this process (no server)."""
    backends: dict[tuple[str, str], Any] = {}

    def run(model: str, backend: str, x: np.ndarray) -> dict[str, np.ndarray]:
        if (model, backend) not in backends:
            backends[model, backend] = load_backend(user_models / model / backend, backend, 1, None)[1]
        return backends[model, backend].run({"x": x})

    return run


def v2_body(x: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": datatype_of(x), "shape": list(x.shape), "data": x.ravel().tolist()}]}


def arrays(answer: dict[str, Any]) -> dict[str, np.ndarray]:
    return {o["name"]: np.asarray(o["data"], dtype=DTYPES[o["datatype"]]).reshape(o["shape"])
            for o in answer["outputs"]}


def burst(rt: Runtime, xs: list[np.ndarray]) -> list[tuple[int, Any]]:
    """All at once: each sender waits for the others before its request."""
    ready = threading.Barrier(len(xs))

    def one(x: np.ndarray) -> tuple[int, Any]:
        ready.wait(30)
        return rt.infer(x)

    with ThreadPoolExecutor(len(xs)) as pool:
        return list(pool.map(one, xs))


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    assert "count" in after, ("no batch-size histogram for the model: runtime.handlers.build_handler must pass "
                              "--max-batch-size, --batch-timeout-ms and on_batch to RawTensors")
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert got.keys() == want.keys()
    for name, arr in want.items():
        assert got[name].dtype == arr.dtype and got[name].shape == arr.shape, name
        if arr.dtype.kind == "f":  # another batch size may take another kernel path: last bits only
            np.testing.assert_allclose(got[name], arr, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(got[name], arr)


def rows(seed: int, n: int, width: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, width)).astype(np.float32)


# ---- metadata and datatypes ------------------------------------------------------------------------

@pytest.mark.parametrize(("model", "backend", "meta"), [
    ("user", "paddle", USER_META),
    ("user", "onnx", USER_META),
    ("fixed", "paddle", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4]}],
                         "outputs": [{"name": "fetch_name_0", "datatype": "FP32", "shape": [2, 3]},
                                     {"name": "fetch_name_1", "datatype": "INT64", "shape": [2]}]}),
    ("ragged", "paddle", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}],
                          "outputs": [{"name": "fetch_name_0", "datatype": "FP32", "shape": [-1]},
                                      {"name": "fetch_name_1", "datatype": "FP32", "shape": [-1]}]}),
    ("lookup", "onnx", {"inputs": [{"name": "x", "datatype": "INT64", "shape": [-1, 2]}],
                        "outputs": [{"name": "fetch_name_0", "datatype": "FP32", "shape": [-1, 3]}]}),
])
def test_metadata_has_the_models_own_dtypes_and_shapes(runtimes, model, backend, meta):
    import tritonclient.grpc as grpcclient

    rt = runtimes(model, backend)
    status, _, data = http("GET", rt.url(f"/v2/models/{model}"))
    assert status == 200
    assert json.loads(data) == {"name": model, "versions": ["1"], "platform": backend, **meta}
    g = grpcclient.InferenceServerClient(f"127.0.0.1:{rt.grpc_port}").get_model_metadata(model)
    for kind in ("inputs", "outputs"):
        assert [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in getattr(g, kind)] == meta[kind]


@pytest.mark.parametrize("backend", ["paddle", "onnx"])
def test_answers_carry_each_outputs_true_dtype_on_every_protocol(runtimes, alone, backend):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    rt, x = runtimes("user", backend), rows(1, 3)
    want = alone("user", backend, x)
    assert want["fetch_name_1"].dtype == np.int64  # the model's argmax: INT64, not the FP32 once assumed

    status, body = rt.infer(x)  # v2 REST, JSON
    assert status == 200, body
    assert [(o["name"], o["datatype"], o["shape"]) for o in body["outputs"]] == [
        ("fetch_name_0", "FP32", [3, 3]), ("fetch_name_1", "INT64", [3])]
    assert all(isinstance(v, int) for v in body["outputs"][1]["data"])
    assert_same(arrays(body), want)

    for client, port in ((httpclient, rt.port), (grpcclient, rt.grpc_port)):  # v2 REST binary, v2 gRPC
        inp = client.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        res = client.InferenceServerClient(f"127.0.0.1:{port}").infer("user", [inp])
        assert_same({n: res.as_numpy(n) for n in want}, want)
        assert [res.get_output(n)["datatype"] if client is httpclient else res.get_output(n).datatype
                for n in want] == ["FP32", "INT64"]

    status, _, data = http("POST", rt.url("/user/prediction"),  # the Paddle Serving web API
                           {"feed": [{"x": r.tolist()} for r in x], "fetch": ["fetch_name_0", "fetch_name_1"]})
    result = json.loads(data)["result"]
    assert status == 200 and result["fetch_name_1"] == want["fetch_name_1"].tolist()
    assert all(isinstance(v, int) for v in result["fetch_name_1"])
    np.testing.assert_allclose(result["fetch_name_0"], want["fetch_name_0"], rtol=1e-5, atol=1e-6)


# ---- batching through the runtime ------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["paddle", "onnx"])
def test_concurrent_requests_are_merged_and_answered_as_if_alone(runtimes, alone, backend):
    rt = runtimes("user", backend)
    xs = [rows(10 + i, 1 + i % 3) for i in range(12)]
    before = rt.batches()
    answers = burst(rt, xs)
    seen = delta(rt.batches(), before)
    for x, (status, body) in zip(xs, answers, strict=True):
        assert status == 200, body
        assert_same(arrays(body), alone("user", backend, x))
    assert seen["sum"] == sum(len(x) for x in xs)  # every row ran once: no merged call failed
    assert seen["count"] < len(xs)  # fewer backend calls than requests: some were merged


def test_requests_of_another_shape_are_not_merged_with_them(runtimes):
    """`ragged` takes any width: requests merge only with requests of their own width."""
    rt = runtimes("ragged", "paddle")
    xs = [rows(30 + i, 1, width=3 if i % 2 else 5) for i in range(12)]
    before = rt.batches()
    answers = burst(rt, xs)
    seen = delta(rt.batches(), before)
    for x, (status, body) in zip(xs, answers, strict=True):
        assert status == 200, body
        got = arrays(body)
        np.testing.assert_allclose(got["fetch_name_0"], x.sum(axis=1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["fetch_name_1"], x.max(axis=1))
    # Six requests of each width: a call of more than 6 rows would have mixed widths (and failed, and
    # been re-run, adding rows to the sum).
    assert seen["sum"] == 12 and seen["le=8"] == seen["count"]
    assert seen["count"] < 12


@pytest.mark.parametrize("backend", ["paddle", "onnx"])
def test_a_bad_request_in_a_merged_batch_alone_gets_400(runtimes, alone, backend):
    rt = runtimes("lookup", backend)
    xs = [np.array([[i % 10, (i + 3) % 10]], dtype=np.int64) for i in range(7)]
    bad = np.array([[99, 1]], dtype=np.int64)  # the embedding has 10 rows: the model itself refuses id 99
    before = rt.batches()
    answers = burst(rt, [*xs[:3], bad, *xs[3:]])
    seen = delta(rt.batches(), before)
    status, body = answers.pop(3)
    assert status == 400 and "the model rejected the input" in body["error"]
    for x, (status, body) in zip(xs, answers, strict=True):
        assert status == 200, body
        assert_same(arrays(body), alone("lookup", backend, x))
    # More backend calls than requests: a merged call failed and its requests ran again, alone.
    assert seen["count"] > len(xs) + 1


def test_a_model_without_a_dynamic_first_dimension_never_merges(runtimes, alone):
    rt = runtimes("fixed", "paddle")
    xs = [rows(50 + i, 2) for i in range(8)]
    before = rt.batches()
    answers = burst(rt, xs)
    seen = delta(rt.batches(), before)
    for x, (status, body) in zip(xs, answers, strict=True):
        assert status == 200, body
        assert_same(arrays(body), alone("fixed", "paddle", x))
    assert seen["count"] == 8 and seen["sum"] == 16  # one call per request


def test_a_model_whose_outputs_do_not_follow_the_rows_stops_merging(user_models):
    """`doubled` answers 2n rows for n: a merged answer cannot be split, so those requests run alone and
    the model is not batched again (logged once)."""
    rt = start(user_models, "doubled", "paddle")
    try:
        for round_ in range(2):
            xs = [rows(70 + 10 * round_ + i, 1) for i in range(6)]
            before = rt.batches()
            answers = burst(rt, xs)
            seen = delta(rt.batches(), before)
            for x, (status, body) in zip(xs, answers, strict=True):
                assert status == 200, body
                np.testing.assert_allclose(arrays(body)["fetch_name_0"], np.concatenate([x, x]))
            # round 0: one merged call, then each request alone; round 1: alone from the start
            assert seen["count"] == (7 if round_ == 0 else 6)
    finally:
        err = rt.stop()
    assert err.count("requests are no longer batched") == 1, err


# ---- the handler's merge and fallback, in process (no timing involved) ---------------------------------

def loaded(models: Path, model: str, backend: str) -> tuple[RawTensors, list[int]]:
    sizes: list[int] = []
    h = RawTensors(models / model / backend, backend, max_batch_size=32, on_batch=sizes.append)
    h.load()
    return h, sizes


@pytest.mark.parametrize("backend", ["paddle", "onnx"])
def test_a_failed_merged_call_runs_each_request_alone(user_models, alone, backend):
    h, sizes = loaded(user_models, "lookup", backend)
    good, bad = np.array([[1, 2], [3, 4]], dtype=np.int64), np.array([[99, 0]], dtype=np.int64)
    out = h.run_group([{"x": good}, {"x": bad}, {"x": good[:1]}])
    assert_same(out[0], alone("lookup", backend, good))
    assert isinstance(out[1], Exception)
    assert_same(out[2], alone("lookup", backend, good[:1]))
    assert sizes == [4, 2, 1, 1]  # the merged call, then each request by itself
    assert h.merging  # a bad request says nothing about the model: it still batches


def test_outputs_that_do_not_follow_the_rows_stop_merging(user_models):
    h, sizes = loaded(user_models, "doubled", "paddle")
    a, b = {"x": rows(1, 1)}, {"x": rows(2, 2)}
    assert h.merging and h._key(a) == h._key(b)
    out = h.run_group([a, b])
    for req, got in zip((a, b), out, strict=True):
        np.testing.assert_allclose(got["fetch_name_0"], np.concatenate([req["x"], req["x"]]))
    assert sizes == [3, 1, 2] and not h.merging and h._key(a) is None
    # still through the batcher, one call at a time: a merged batch queued before may run on the loop's thread
    assert h.batched


@pytest.mark.parametrize(("backend", "threads", "inline"), [
    ("paddle", 1, True), ("onnx", 1, True),     # the model runs on the calling thread: its CPU time is its cost
    ("paddle", 2, False), ("onnx", 2, False),   # intra-op threads besides: merged batches stay off the loop
])
def test_quick_merged_batches_may_run_on_the_loop_only_for_a_model_on_one_thread(user_models, backend, threads, inline):
    h = RawTensors(user_models / "user" / backend, backend, threads=threads, max_batch_size=32)
    h.load()
    assert h.batched and h.batcher.inline_under == (INLINE_BATCH_UNDER if inline else 0.0)


# ---- started beside its storage sidecar -----------------------------------------------------------------

def test_a_replica_started_beside_its_pull_waits_for_the_report_then_serves(user_models, tmp_path):
    """A Pod's runtime starts while the storage sidecar still pulls (autoscaler/kube/model_volume.py): it
    answers health checks, is not ready, and loads once the sidecar's report says the model is there."""
    report, dest = tmp_path / "run" / "pull.json", tmp_path / "mnt-models"
    report.parent.mkdir()
    port = free_port()
    rt = subprocess.Popen([sys.executable, "-m", "runtime", "--host", "127.0.0.1", "--port", str(port),
                           "--model", str(dest), "--name", "user"], cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, env={**os.environ, PULL_REPORT_ENV: str(report)})
    sidecar = None
    try:
        def health(path: str) -> int:
            assert rt.poll() is None, rt.stderr.read()
            try:
                return http("GET", f"http://127.0.0.1:{port}{path}", timeout=2)[0]
            except OSError:
                return 0

        wait_for(lambda: health("/healthz") == 200, 90, 0.05, "the runtime answering")
        assert health("/ready") == 503  # waiting for the model, not failing on the empty directory
        sidecar = subprocess.Popen([sys.executable, "-m", "runtime.storage", str(user_models / "user" / "onnx"),
                                    "--cache", str(tmp_path / "cache"), "--dest", str(dest), "--report",
                                    str(report), "--termination-log", str(tmp_path / "term"), "--stay"],
                                   cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: health("/ready") == 200, 90, 0.05, "the runtime ready after the pull")
        x = rows(2, 5)  # seed 2, five rows
        status, _, data = http("POST", f"http://127.0.0.1:{port}/v2/models/user/infer", v2_body(x))
        assert status == 200 and arrays(json.loads(data))["fetch_name_0"].shape == (5, 3)
        metrics = http("GET", f"http://127.0.0.1:{port}/metrics")[2].decode()
        assert re.search(r'^elasticserving_runtime_model_pull_downloaded_bytes\{[^}]*\} 0\.0$', metrics, re.M)
        assert sidecar.poll() is None  # idles beside it
    finally:
        for proc in (rt, sidecar):
            if proc is not None:
                proc.terminate()
                proc.wait(30)


# ---- Paddle's program formats ----------------------------------------------------------------------

def test_a_programdesc_signature_is_read_and_its_output_dtypes_settled_by_an_answer():
    """LAC's `__model__` (a Paddle 2 ProgramDesc) records its tag output as FP32; the predictor answers
    INT64: what the record says is shown until the first answer settles it."""
    from runtime.backends import answered_specs, program_signature
    from runtime.lac import lac_dir
    from runtime.tensors import TensorSpec

    inputs, outputs = program_signature(lac_dir() / "seg_model" / "model" / "__model__")
    assert inputs == {"words": TensorSpec("words", "INT64", (-1, 1))}
    tags = TensorSpec("save_infer_model/scale_0", "FP32", (-1, 1))
    assert outputs == {tags.name: tags}
    other = TensorSpec("scores", "FP32", (-1,))
    answer = {tags.name: np.zeros((3, 1), dtype=np.int64), other.name: np.zeros(3, dtype=np.complex64)}
    # complex64 has no v2 datatype: the declared one stays
    assert answered_specs([tags, other], answer) == [TensorSpec(tags.name, "INT64", (-1, 1)), other]
