"""One vocabulary of codes (runtime.errors, each error with a stable `code`), one status table per wire,
shared with the activator (HTTP_STATUS for the web API and v2 REST, GRPC_STATUS for v2 gRPC): every error
maps to its documented status, the HTTP adapter answers with it, the gRPC servicer aborts with it, the data plane records it."""

from __future__ import annotations

import inspect
import json
import logging
import os
import subprocess
import sys
from typing import get_args

import grpc
import pytest

from runtime import errors
from runtime.dataplane import DataPlane
from runtime.errors import GRPC_STATUS, HTTP_STATUS, InferError, status_of
from runtime.metrics import RuntimeMetrics
from runtime.protocols.http_api import HttpApi
from runtime.protocols.http_server import HttpRequest, HttpResponse
from tests.helpers import ROOT

# The documented mapping: error, its code, HTTP status (web API, v2 REST), gRPC status code (v2 gRPC).
DOCUMENTED = [
    (errors.BadInput, "bad_input", 400, "INVALID_ARGUMENT"),
    (errors.TooLarge, "too_large", 413, "INVALID_ARGUMENT"),
    (errors.NotFound, "not_found", 404, "NOT_FOUND"),
    (errors.Unavailable, "unavailable", 503, "UNAVAILABLE"),
    (errors.Overloaded, "overloaded", 503, "RESOURCE_EXHAUSTED"),
    (InferError, "internal", 500, "INTERNAL"),
    (RuntimeError, "internal", 500, "INTERNAL"),  # not one of ours: a bug
]
IDS = [error.__name__ for error, *_ in DOCUMENTED]


@pytest.mark.parametrize(("error", "code", "http", "grpc_code"), DOCUMENTED, ids=IDS)
def test_each_error_maps_to_its_documented_status(error, code, http, grpc_code):
    exc = error("why")
    assert getattr(exc, "code", "internal") == code
    assert status_of(exc, HTTP_STATUS) == http
    assert status_of(exc, GRPC_STATUS) == grpc_code
    assert isinstance(getattr(grpc.StatusCode, grpc_code), grpc.StatusCode)


def test_the_tables_cover_exactly_the_vocabulary():
    ours = {c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, InferError)}
    assert ours == {error for error, *_ in DOCUMENTED if issubclass(error, InferError)}
    assert len({c.code for c in ours}) == len(ours)  # one code per error
    assert {c.code for c in ours} | {"ok"} < set(get_args(errors.Code))  # the rest: the activator's (test_pure.py)
    assert set(HTTP_STATUS) == set(GRPC_STATUS) == set(get_args(errors.Code))  # every code has both statuses
    assert all(100 <= s < 600 for s in HTTP_STATUS.values())
    assert all(isinstance(getattr(grpc.StatusCode, s), grpc.StatusCode) for s in GRPC_STATUS.values())
    assert (HTTP_STATUS["ok"], GRPC_STATUS["ok"]) == (200, "OK")


def _records(caplog) -> list[int | str]:
    return [r.fields["status"] for r in caplog.records if r.name == "elasticserving.runtime.requests"]


@pytest.mark.parametrize(("error", "code", "http", "grpc_code"), DOCUMENTED, ids=IDS)
async def test_the_http_adapter_answers_and_records_the_status(caplog, error, code, http, grpc_code):
    caplog.set_level(logging.INFO, "elasticserving.runtime.requests")
    api = HttpApi(DataPlane("m", RuntimeMetrics()), RuntimeMetrics())

    async def work(_: HttpRequest, name: str) -> HttpResponse:
        raise error("the reason")

    resp = await api._serve("v2-rest", HttpRequest("POST", "/v2/models/m/infer", "", {}, b"{}"), "rid-1", "m", work)
    ours = issubclass(error, InferError)
    assert resp.status == http
    assert json.loads(resp.body) == {"error": "the reason" if ours else "internal error: RuntimeError"}
    assert _records(caplog) == [http]


async def test_the_data_plane_records_the_protocols_status(caplog):
    caplog.set_level(logging.INFO, "elasticserving.runtime.requests")
    plane = DataPlane("m", RuntimeMetrics())
    for error, *_ in DOCUMENTED:
        with pytest.raises(error), plane.track("v2-grpc", "r", GRPC_STATUS):
            raise error("why")
    with plane.track("v2-grpc", "r", GRPC_STATUS):
        pass
    assert _records(caplog) == [grpc_code for *_, grpc_code in DOCUMENTED] + ["OK"]


# runtime.proto and tritonclient's generated modules cannot share a process: the servicer runs in its own.
SERVICER = """
import asyncio, json
from runtime.dataplane import DataPlane
from runtime.errors import BadInput, NotFound, Overloaded, TooLarge, Unavailable
from runtime.metrics import RuntimeMetrics
from runtime.proto import inference_pb2 as pb
from runtime.protocols.v2_grpc import InferenceServicer

class Aborted(Exception):
    pass

class Context:
    def invocation_metadata(self):
        return ()
    async def abort(self, code, details, trailing_metadata=None):
        raise Aborted(code.name, details)

async def main():
    servicer, out = InferenceServicer(DataPlane("m", RuntimeMetrics())), {}
    for error in (BadInput, TooLarge, NotFound, Unavailable, Overloaded):
        try:
            await servicer._abort(Context(), error("why"), "rid")
        except Aborted as exc:
            out[error.__name__] = exc.args[0]
    for name, model in (("unknown model", "other"), ("not loaded", "m")):
        try:
            await servicer.ModelInfer(pb.ModelInferRequest(model_name=model), Context())
        except Aborted as exc:
            out[name] = list(exc.args)
    print(json.dumps(out))

asyncio.run(main())
"""


def test_the_grpc_servicer_aborts_with_the_status():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", SERVICER], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    got = json.loads(out)
    assert {k: v for k, v in got.items() if " " not in k} == {
        error.__name__: grpc_code for error, _, _, grpc_code in DOCUMENTED[:5]}
    assert got["unknown model"] == ["NOT_FOUND", "unknown model 'other'; this server serves 'm'"]
    assert got["not loaded"] == ["UNAVAILABLE", "model m is not ready: model is loading"]
