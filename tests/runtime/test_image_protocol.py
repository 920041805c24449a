"""The manual's image classification protocol through a real runtime (the small CNN of
build_image_model.py): Paddle Serving web API field for field with `isCanary`, KServe v2 REST and gRPC
with tritonclient (encoded images and preprocessed FP32 tensors), hostile images, image URLs with
their limits, request IDs, and draining that keeps serving while readiness fails."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import signal
import struct
import threading
import zlib

import numpy as np
import pytest

from tests.helpers import free_port, http, start_runtime, wait_for

pytestmark = pytest.mark.timeout(300)
LABELS = {"daisy", "rose", "tulip", "sunflower", "dandelion"}


def png(w: int = 8, h: int = 8) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    if (w, h) != (8, 8):  # a decompression bomb's header: huge dimensions, a few bytes of data
        struct.pack_into(">II", data, 16, w, h)
        struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def server(models):
    # labels.txt is picked up next to the model (models/paddle -> models/labels.txt)
    p, port, grpc_port = start_runtime("--model", str(models / "paddle"), "--name", "image", "--handler", "imagenet",
                                       "--is-canary", "--max-batch-size", "4", "--max-image-pixels", "4000000",
                                       grpc=True)
    yield {"http": port, "grpc": grpc_port}
    p.terminate()
    p.wait(30)


def predict(port: int, body, path="/image/prediction", headers=None):
    status, hdrs, data = http("POST", f"http://127.0.0.1:{port}{path}", body, headers=headers)
    return status, json.loads(data), hdrs


def test_manual_protocol_field_for_field(server, photo):
    status, out, hdrs = predict(server["http"], {"feed": [{"image": b64(photo.read_bytes())}], "fetch": ["score"]})
    assert status == 200, out
    assert list(out) == ["result"] and list(out["result"]) == ["isCanary", "label", "prob"]
    assert out["result"]["isCanary"] == ["true"] and out["result"]["label"][0] in LABELS
    assert len(out["result"]["prob"]) == 1 and 0 < out["result"]["prob"][0] <= 1
    assert hdrs["X-Request-Id"]
    status, out, _ = predict(server["http"], {"feed": [{"image": b64(photo.read_bytes())}, {"image": b64(png())}],
                                              "fetch": ["score"]})
    assert status == 200 and len(out["result"]["label"]) == 2 and len(out["result"]["prob"]) == 2


@pytest.mark.parametrize(("image", "status", "reason"), [
    (b64(b"not an image at all"), 400, "undecodable image"),
    ("%%%not-base64%%%", 400, "undecodable image"),
    (b64(png(3000, 3000)), 400, "over the limit"),  # decompression bombs: refused from the header
    (b64(png(50_000, 50_000)), 400, "over the limit"),
    ("/etc/passwd", 400, "file paths are disabled"),
    ("https://example.com/cat.jpg", 400, "URLs are disabled"),
    ("", 400, "empty"),
])
def test_hostile_images_are_refused_with_a_reason(server, image, status, reason):
    got, out, _ = predict(server["http"], {"feed": [{"image": image}], "fetch": ["score"]})
    assert got == status and reason in out["error"], out


def test_small_base64_jpeg_is_not_taken_for_a_path(server):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 10)).save(buf, format="JPEG")
    assert b64(buf.getvalue()).startswith("/9j/")
    status, out, _ = predict(server["http"], {"feed": [{"image": b64(buf.getvalue())}]})
    assert status == 200 and out["result"]["label"][0] in LABELS, out


def test_truncated_image_is_400(server, photo):
    from PIL import Image

    buf = io.BytesIO()
    Image.open(photo).convert("RGB").save(buf, format="JPEG")
    half = buf.getvalue()[: len(buf.getvalue()) // 2]
    status, out, _ = predict(server["http"], {"feed": [{"image": b64(half)}]})
    assert status == 400 and "undecodable image" in out["error"] and "truncated" in out["error"]


def test_too_many_images_in_one_request_is_413(server):
    status, out, _ = predict(server["http"], {"feed": [{"image": b64(png())}] * 5})
    assert status == 413 and "limit is 4" in out["error"]


def test_request_id_is_kept_or_made(server):
    body = {"feed": [{"image": b64(png())}]}
    assert predict(server["http"], body, headers={"X-Request-Id": "trace-42"})[2]["X-Request-Id"] == "trace-42"
    made = {predict(server["http"], body, headers={"X-Request-Id": "bad id\t"})[2]["X-Request-Id"] for _ in range(2)}
    assert len(made) == 2 and all(len(r) == 32 for r in made)


def test_tritonclient_http_encoded_images_and_tensors(server, photo):
    httpclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    c = httpclient.InferenceServerClient(f"127.0.0.1:{server['http']}")
    meta = c.get_model_metadata("image")
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    img = httpclient.InferInput("image", [2], "BYTES")
    img.set_data_from_numpy(np.array([photo.read_bytes(), png()], dtype=object))
    r = c.infer("image", [img])
    labels = [x.decode() for x in r.as_numpy("label")]
    assert set(labels) <= LABELS and r.as_numpy("prob").shape == (2,)
    x = np.random.default_rng(3).random((2, 3, 224, 224), dtype=np.float32)
    t = httpclient.InferInput("image", list(x.shape), "FP32")
    t.set_data_from_numpy(x)
    r = c.infer("image", [t], outputs=[httpclient.InferRequestedOutput("prob")])
    assert r.as_numpy("prob").dtype == np.float32 and r.as_numpy("prob").shape == (2,) and r.as_numpy("label") is None
    bad = httpclient.InferInput("image", [1, 3, 10, 10], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 10, 10), dtype=np.float32))
    with pytest.raises(InferenceServerException, match=r"the model takes \[-1,3,224,224\]"):
        c.infer("image", [bad])


def test_v2_binary_shape_and_bytes_must_agree(server):
    head = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 224, 224],
                                   "parameters": {"binary_data_size": 400}}]}).encode()
    status, _, data = http("POST", f"http://127.0.0.1:{server['http']}/v2/models/image/infer", raw=head + b"\0" * 400,
                           headers={"Inference-Header-Content-Length": str(len(head))})
    assert status == 400 and "is 602112 bytes, the data has 400" in json.loads(data)["error"]


def test_tritonclient_grpc_encoded_images_and_tensors(server, photo):
    grpcclient = pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    c = grpcclient.InferenceServerClient(f"127.0.0.1:{server['grpc']}")
    assert c.is_model_ready("image") and c.get_model_metadata("image").inputs[0].datatype == "BYTES"
    img = grpcclient.InferInput("image", [1], "BYTES")
    img.set_data_from_numpy(np.array([photo.read_bytes()], dtype=object))
    assert c.infer("image", [img]).as_numpy("label")[0].decode() in LABELS
    x = np.random.default_rng(4).random((3, 3, 224, 224), dtype=np.float32)
    t = grpcclient.InferInput("image", list(x.shape), "FP32")
    t.set_data_from_numpy(x)
    assert c.infer("image", [t]).as_numpy("prob").shape == (3,)
    bomb = grpcclient.InferInput("image", [1], "BYTES")
    bomb.set_data_from_numpy(np.array([png(50_000, 50_000)], dtype=object))
    with pytest.raises(InferenceServerException, match="INVALID_ARGUMENT.*over the limit"):
        c.infer("image", [bomb])


def test_grpc_request_id_in_trailing_metadata(server):
    import grpc
    from tritonclient.grpc import service_pb2 as pb  # ours and theirs cannot share a process
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    from runtime.tensors import pack_bytes

    with grpc.insecure_channel(f"127.0.0.1:{server['grpc']}") as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        req = pb.ModelInferRequest(model_name="image", inputs=[
            pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])])
        req.raw_input_contents.append(pack_bytes([png()]))
        _, call = stub.ModelInfer.with_call(req, metadata=[("x-request-id", "grpc-7")], timeout=30)
        assert ("x-request-id", "grpc-7") in call.trailing_metadata()


# ---- image URLs, and draining ---------------------------------------------------------------------
class UrlServer:
    """A loopback aiohttp server: /photo (a real photo), /big (over the size limit), /slow (never
    answers), /gate/NAME (answers the photo once gate(NAME).release is set; gate(NAME).entered tells a
    fetch is waiting)."""

    def __init__(self, photo: bytes) -> None:
        self.photo = photo
        self.port = free_port()
        self.gates: dict[str, Gate] = {}
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self.started.wait(10)

    def _run(self) -> None:
        from aiohttp import web

        async def photo(_):
            return web.Response(body=self.photo, content_type="image/png")

        async def big(_):
            return web.Response(body=b"\0" * 1_600_000)

        async def slow(_):
            await asyncio.sleep(3600)

        async def gate(request):
            g = self.gate(request.match_info["name"])
            g.entered.set()
            await self.loop.run_in_executor(None, g.release.wait, 60)
            return web.Response(body=self.photo, content_type="image/png")

        async def main():
            app = web.Application()
            app.add_routes([web.get("/photo", photo), web.get("/big", big), web.get("/slow", slow),
                            web.get("/gate/{name}", gate)])
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self.started.set()
            await asyncio.Event().wait()

        self.loop.run_until_complete(main())

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def gate(self, name: str) -> Gate:
        return self.gates.setdefault(name, Gate())


class Gate:
    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()


@pytest.fixture(scope="module")
def urls(photo):
    return UrlServer(photo.read_bytes())


def test_image_urls_with_size_and_time_limits(models, urls, photo):
    p, port, _ = start_runtime("--model", str(models / "onnx"), "--name", "image", "--handler", "imagenet",
                               "--allow-urls", "--max-image-bytes", "1500000", "--url-timeout", "2",
                               "--image-base-dir", str(photo.parent))
    try:
        status, out, _ = predict(port, {"feed": [{"image": urls.url("/photo")}, {"image": str(photo)}]})
        assert status == 200 and out["result"]["label"][0] == out["result"]["label"][1], out
        assert "isCanary" not in out["result"]
        status, out, _ = predict(port, {"feed": [{"image": urls.url("/big")}]})
        assert status == 413 and "larger than 1500000 bytes" in out["error"]
        status, out, _ = predict(port, {"feed": [{"image": urls.url("/slow")}]})
        assert status == 400 and "cannot fetch the image URL" in out["error"]
        status, out, _ = predict(port, {"feed": [{"image": str(photo.parent / ".." / "x.png")}]})
        assert status == 400 and "outside --image-base-dir" in out["error"]
    finally:
        p.terminate()
        p.wait(30)


def test_draining_replica_serves_but_is_not_ready(models, urls, photo):
    p, port, _ = start_runtime("--model", str(models / "onnx"), "--name", "image", "--handler", "imagenet",
                               "--allow-urls", "--drain-seconds", "60")
    base = f"http://127.0.0.1:{port}"
    held: list[int] = []
    gate = urls.gate("drain")
    t = threading.Thread(target=lambda: held.append(predict(port, {"feed": [{"image": urls.url("/gate/drain")}]})[0]))
    t.start()
    assert gate.entered.wait(30)  # the request is in flight, waiting on its image
    p.send_signal(signal.SIGTERM)
    wait_for(lambda: http("GET", base + "/ready")[0] == 503, 30, 0.05, "readiness to fail")
    assert http("GET", base + "/healthz")[0] == 200
    status, out, _ = predict(port, {"feed": [{"image": b64(photo.read_bytes())}]})
    assert status == 200, out  # still routed here: still served
    gate.release.set()
    t.join(30)
    assert held == [200]
    assert p.wait(30) == 0


def test_a_full_queue_is_503_over_http_and_resource_exhausted_over_grpc(models, urls, photo):
    grpcclient = pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    p, port, grpc_port = start_runtime("--model", str(models / "onnx"), "--name", "image", "--handler", "imagenet",
                                       "--allow-urls", "--max-queue", "2", "--max-batch-size", "2", grpc=True)
    gate = urls.gate("queue")
    held: list[int] = []
    body = {"feed": [{"image": urls.url("/gate/queue")}] * 2}  # two items: the whole queue
    t = threading.Thread(target=lambda: held.append(predict(port, body)[0]))
    try:
        t.start()
        assert gate.entered.wait(30)
        status, out, _ = predict(port, {"feed": [{"image": b64(png())}]})
        assert status == 503 and "queue full" in out["error"]
        c = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        img = grpcclient.InferInput("image", [1], "BYTES")
        img.set_data_from_numpy(np.array([png()], dtype=object))
        with pytest.raises(InferenceServerException, match="RESOURCE_EXHAUSTED.*queue full"):
            c.infer("image", [img])
        assert http("GET", f"http://127.0.0.1:{port}/ready")[0] == 200  # busy, not unready
        gate.release.set()
        t.join(30)
        assert held == [200]
        assert predict(port, {"feed": [{"image": b64(png())}]})[0] == 200  # room again
    finally:
        gate.release.set()
        p.terminate()
        p.wait(30)
