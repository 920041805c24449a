"""The replica's HTTP server: Paddle Serving web API, KServe v2 REST, health, readiness, metrics.

Requests arrive from the activator (or directly); they are validated here, then handed to the loaded
model (runtime.model), whose answers are shaped back into each protocol's JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from typing import Any

from aiohttp import web

from runtime import v2_binary
from runtime.metrics import RuntimeMetrics
from runtime.model import LacModel, ModelLoadError

log = logging.getLogger("elasticserving.runtime")


class BadRequest(Exception):
    pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m runtime", description="ElasticServing inference server")
    p.add_argument("--model", default="lac", help="`lac` (the model shipped by the lac package) or a model dir")
    p.add_argument("--name", default=None, help="model name in URLs (default: the model's name)")
    p.add_argument("--handler", default=None, choices=["lac", "imagenet", "raw"],
                   help="pre/post-processing (default: lac for --model lac, else raw)")
    p.add_argument("--backend", default="auto", choices=["auto", "paddle", "onnx", "tensorflow"],
                   help="inference backend (auto: from the model files)")
    p.add_argument("--labels", default=None, help="imagenet: a file with one class label per line")
    p.add_argument("--allow-urls", action="store_true", help="imagenet: accept image URLs (needs network)")
    p.add_argument("--host", default=os.environ.get("ELASTICSERVING_BIND_HOST", "0.0.0.0"))
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "9292")))
    p.add_argument("--grpc-port", type=int, default=int(os.environ.get("GRPC_PORT", "0") or 0),
                   help="KServe v2 gRPC port (default: env GRPC_PORT; 0: no gRPC)")
    p.add_argument("--seg-separator", default="|", help="LAC: separator between words")
    p.add_argument("--threads", type=int, default=1, help="intra-op CPU threads")
    p.add_argument("--gpu-ids", default="", help="comma separated GPU ids (empty: CPU)")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-timeout-ms", type=float, default=0.0,
                   help="how long a batch waits for more requests (0: merge only what is already queued)")
    p.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024)
    p.add_argument("--drain-seconds", type=float, default=30.0, help="grace for in-flight requests on SIGTERM")
    args = p.parse_args(argv)
    if args.handler is None:
        args.handler = "lac" if args.model == "lac" else "raw"
    if args.name is None:
        args.name = "lac" if args.model == "lac" else os.path.basename(os.path.normpath(args.model))
    return args


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status, dumps=_dumps)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


async def _json(request: web.Request) -> Any:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("request body is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None


def _words_from_feed(body: Any) -> list[str]:
    if not isinstance(body, dict):
        raise BadRequest("expected a JSON object {\"feed\": [...], \"fetch\": [...]}")
    feed = body.get("feed")
    if not isinstance(feed, list) or not feed:
        raise BadRequest("`feed` must be a non-empty list of objects like {\"words\": \"...\"}")
    words = []
    for i, item in enumerate(feed):
        if not isinstance(item, dict) or "words" not in item:
            raise BadRequest(f"feed[{i}] has no `words`")
        if not isinstance(item["words"], str):
            raise BadRequest(f"feed[{i}].words must be a string")
        words.append(item["words"])
    fetch = body.get("fetch", ["word_seg"])
    if not isinstance(fetch, list) or any(f != "word_seg" for f in fetch):
        raise BadRequest(f"unknown fetch {fetch!r}: this model outputs [\"word_seg\"]")
    return words


def _words_from_v2(body: Any) -> tuple[list[str], str | None]:
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise BadRequest("expected {\"inputs\": [{\"name\": \"words\", \"datatype\": \"BYTES\", ...}]}")
    inp = body["inputs"][0]
    if not isinstance(inp, dict) or inp.get("name") != "words":
        raise BadRequest(f"unknown input {inp.get('name') if isinstance(inp, dict) else inp!r}: expected `words`")
    if inp.get("datatype") != "BYTES":
        raise BadRequest(f"input `words` must have datatype BYTES, not {inp.get('datatype')!r}")
    data, shape = inp.get("data"), inp.get("shape")
    if isinstance(data, list) and any(isinstance(x, bytes) for x in data):  # binary tensor data
        try:
            data = [x.decode("utf-8") if isinstance(x, bytes) else x for x in data]
        except UnicodeDecodeError:
            raise BadRequest("input `words` holds bytes that are not UTF-8 text") from None
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise BadRequest("input `words` data must be a list of strings")
    if not isinstance(shape, list) or len(shape) != 1 or shape[0] != len(data):
        raise BadRequest(f"input `words` shape {shape!r} does not match its {len(data)} element(s)")
    for out in body.get("outputs") or []:
        if not isinstance(out, dict) or out.get("name") != "word_seg":
            raise BadRequest(f"unknown output {out!r}: this model outputs `word_seg`")
    return data, body.get("id")


class Server:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.metrics = RuntimeMetrics()
        gpu_ids = [int(x) for x in args.gpu_ids.split(",") if x.strip()]
        if args.handler != "lac":
            from runtime.tensor_handlers import TensorModel

            args.on_batch = lambda n: self.metrics.batch(args.name, n)
            self.model = TensorModel(args)
            self.tensor = True
        else:
            self.tensor = False
            self.model = LacModel(args.model, args.seg_separator, args.threads, gpu_ids, args.max_batch_size,
                              args.batch_timeout_ms, on_batch=lambda n: self.metrics.batch(args.name, n))
        self.draining = False
        self.load_error: str | None = None
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # ---- instrumentation -------------------------------------------------------------------
    async def _observe(self, protocol: str, handler, request: web.Request) -> web.StreamResponse:
        self.inflight += 1
        self._idle.clear()
        gauge = self.metrics.inflight.labels(self.args.name, protocol)
        gauge.inc()
        t0 = time.perf_counter()
        code = 500
        try:
            resp = await handler(request)
            code = resp.status
            return resp
        except (BadRequest, ValueError) as exc:  # tensor handlers raise BadInput (a ValueError)
            code = 400
            return _error(400, str(exc))
        except web.HTTPRequestEntityTooLarge:
            code = 413
            return _error(413, f"request body larger than {self.args.max_body_bytes} bytes")
        finally:
            gauge.dec()
            self.metrics.observe(self.args.name, protocol, code, time.perf_counter() - t0)
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()

    def _not_ready(self) -> web.Response | None:
        if self.model.ready and not self.draining:
            return None
        reason = self.load_error or ("draining" if self.draining else "model is loading")
        return _error(503, f"model {self.args.name} is not ready: {reason}")

    # ---- handlers --------------------------------------------------------------------------
    async def prediction(self, request: web.Request) -> web.Response:
        if request.match_info["name"] != self.args.name:
            return _error(404, f"unknown model {request.match_info['name']!r}; this server serves "
                               f"{self.args.name!r}")
        if (r := self._not_ready()) is not None:
            return r
        if self.tensor:
            return web.json_response(await self.model.prediction(await _json(request)), dumps=_dumps)
        words = _words_from_feed(await _json(request))
        segs = await self.model.segment(words)
        return web.json_response({"result": [{"word_seg": s} for s in segs]}, dumps=_dumps)

    async def v2_infer(self, request: web.Request) -> web.Response:
        if request.match_info["name"] != self.args.name:
            return _error(404, f"unknown model {request.match_info['name']!r}")
        if (r := self._not_ready()) is not None:
            return r
        if v2_binary.HEADER in request.headers:  # tritonclient.http's default: JSON + raw tensor bytes
            body = v2_binary.decode_request(await request.read(), request.headers[v2_binary.HEADER])
        else:
            body = await _json(request)
        if self.tensor:
            out = await self.model.v2_infer(body)
        else:
            words, req_id = _words_from_v2(body)
            segs = await self.model.segment(words)
            out = {"model_name": self.args.name, "outputs": [
                {"name": "word_seg", "datatype": "BYTES", "shape": [len(segs)], "data": segs}]}
            if req_id is not None:
                out["id"] = req_id
        packed = v2_binary.encode_response(body, out)
        if packed is None:
            return web.json_response(out, dumps=_dumps)
        data, json_length = packed
        return web.Response(body=data, content_type="application/octet-stream",
                            headers={v2_binary.HEADER: str(json_length)})

    async def v2_metadata(self, request: web.Request) -> web.Response:
        if request.match_info["name"] != self.args.name:
            return _error(404, f"unknown model {request.match_info['name']!r}")
        if self.tensor:
            if (r := self._not_ready()) is not None:
                return r
            return web.json_response(self.model.metadata())
        return web.json_response({
            "name": self.args.name, "versions": ["1"], "platform": "paddle",
            "inputs": [{"name": "words", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "word_seg", "datatype": "BYTES", "shape": [-1]}]})

    async def v2_model_ready(self, request: web.Request) -> web.Response:
        if request.match_info["name"] != self.args.name:
            return _error(404, f"unknown model {request.match_info['name']!r}")
        return (self._not_ready() or web.json_response({"name": self.args.name, "ready": True}))

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def ready(self, _: web.Request) -> web.Response:
        return self._not_ready() or web.json_response({"status": "ready", "model": self.args.name})

    async def v2_server(self, _: web.Request) -> web.Response:
        return web.json_response({"name": "elasticserving-runtime", "version": "0.1.0",
                                  "extensions": ["binary_tensor_data"]})

    async def metrics_handler(self, _: web.Request) -> web.Response:
        body, ctype = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": ctype})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.args.max_body_bytes)

        def wrap(protocol: str, handler):
            async def h(request: web.Request) -> web.StreamResponse:
                return await self._observe(protocol, handler, request)
            return h

        app.add_routes([
            web.get("/healthz", self.healthz),
            web.get("/ready", self.ready),
            web.get("/metrics", self.metrics_handler),
            web.get("/v2", self.v2_server),
            web.get("/v2/health/live", self.healthz),
            web.get("/v2/health/ready", self.ready),
            web.get("/v2/models/{name}", self.v2_metadata),
            web.get("/v2/models/{name}/ready", self.v2_model_ready),
            web.post("/v2/models/{name}/infer", wrap("v2-rest", self.v2_infer)),
            web.post("/{name}/prediction", wrap("paddle-serving", self.prediction)),
        ])
        return app

    # ---- lifecycle -------------------------------------------------------------------------
    async def run(self) -> int:
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, self.args.host, self.args.port).start()
        grpc_server = None
        if self.args.grpc_port:
            from runtime.grpc_server import start_grpc  # grpc starts threads: only when asked for

            grpc_server = await start_grpc(self, self.args.host, self.args.grpc_port)
        log.info("listening on %s:%d%s, loading model %s", self.args.host, self.args.port,
                 f" (gRPC :{self.args.grpc_port})" if grpc_server else "", self.args.model)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            seconds = await loop.run_in_executor(self.model.executor, self.model.load)
        except (ModelLoadError, FileNotFoundError, OSError) as exc:
            self.load_error = str(exc)
            print(f"error: {exc}", file=sys.stderr, flush=True)
            if grpc_server is not None:
                await grpc_server.stop(0)
            await runner.cleanup()
            return 3
        self.metrics.model_load(self.args.name, seconds)
        for sig in (signal.SIGTERM, signal.SIGINT):  # paddle installs its own handlers on import
            loop.remove_signal_handler(sig)
            loop.add_signal_handler(sig, stop.set)
        await self.model.start()
        log.info("model %s ready in %.2fs", self.args.name, seconds)
        await stop.wait()
        # Graceful: stop readiness, let in-flight requests finish, then exit.
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), self.args.drain_seconds)
        except TimeoutError:
            log.warning("%d request(s) still in flight after %.0fs", self.inflight, self.args.drain_seconds)
        if grpc_server is not None:
            await grpc_server.stop(self.args.drain_seconds)
        await self.model.close()
        await runner.cleanup()
        return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("ELASTICSERVING_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    return asyncio.run(Server(args).run())
