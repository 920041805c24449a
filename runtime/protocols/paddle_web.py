"""The Paddle Serving web API (`POST /{name}/prediction`) <-> the data plane's request, without I/O.

`{"feed": [{KEY: value}, ...], "fetch": [NAME, ...]}`: one feed item per row; the handler's `WebApi`
says which keys and fetch names it takes and whether the result is one object per row (LAC:
`{"result": [{"word_seg": ..}]}`) or one object of lists (images: `{"result": {"label": [..], "prob": [..]}}`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime.dataplane import InferRequest
from runtime.errors import BadInput
from runtime.handlers.base import WebApi
from runtime.tensors import DTYPES, TensorSpec, object_array, to_list, utf8


def decode(body: Any, model: str, web: WebApi, specs: list[TensorSpec]) -> tuple[InferRequest, list[str]]:
    """The request, and the fetch names asked for (their outputs are the request's outputs). Plain loops, no
    generators: LAC's one-sentence request is decoded in ~1.9 us instead of 2.8."""
    if not isinstance(body, dict):
        raise BadInput('expected a JSON object {"feed": [...], "fetch": [...]}')
    feed = body.get("feed")
    if not isinstance(feed, list) or not feed:
        raise BadInput(f"`feed` must be a non-empty list of objects like {_example(web)}")
    for i, item in enumerate(feed):
        if not isinstance(item, dict):
            raise BadInput(f"feed[{i}] must be an object like {_example(web)}")
        for key in web.feed:
            if key not in item:
                raise BadInput(f"feed[{i}] has no `{key}`")
    inputs = {key: _column(key, [item[key] for item in feed], specs) for key in web.feed}
    fetch = body.get("fetch")
    if fetch is None or fetch == []:
        fetch = list(web.fetch)
    outputs: list[str] = []
    if isinstance(fetch, list):
        for f in fetch:
            if not isinstance(f, str) or f not in web.fetch:
                break
            for o in web.fetch[f]:
                if o not in outputs:
                    outputs.append(o)
        else:
            return InferRequest(model, inputs, outputs), fetch
    raise BadInput(f"unknown fetch {fetch!r}: this model's fetch names are {list(web.fetch)}")


def _example(web: WebApi) -> str:
    return "{" + ", ".join(f'"{k}": ...' for k in web.feed) + "}"


def _column(key: str, values: list[Any], specs: list[TensorSpec]) -> np.ndarray:
    """One input tensor from the feed items' values: text for BYTES inputs, else numbers (stacked)."""
    datatype = None  # the first spec's of this name, unless one of them is BYTES (text)
    for spec in specs:
        if spec.name == key and (datatype is None or spec.datatype == "BYTES"):
            datatype = spec.datatype
    if datatype == "BYTES":
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise BadInput(f"feed[{i}].{key} must be a string")
        what = f"feed[].{key}"
        return object_array([utf8(what, v) for v in values])
    dtype = DTYPES.get(datatype or "FP32", DTYPES["FP32"])
    try:
        return np.asarray(values, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadInput(f"feed `{key}`: {exc}") from None


def encode(outputs: dict[str, np.ndarray], web: WebApi, is_canary: bool = False) -> dict[str, Any]:
    if web.rows:
        texts = {name: to_list(arr) for name, arr in outputs.items()}
        n = len(next(iter(texts.values()))) if texts else 0
        result: Any = [{name: col[i] for name, col in texts.items()} for i in range(n)]
        return {"isCanary": ["true"], "result": result} if is_canary else {"result": result}
    columns: dict[str, Any] = {"isCanary": ["true"]} if is_canary else {}
    for name, arr in outputs.items():
        columns[name] = to_list(arr) if arr.dtype == object or arr.ndim <= 1 else arr.tolist()
    return {"result": columns}
