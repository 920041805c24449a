"""What a model handler is to the data plane: declared input/output tensor specs and
`infer(inputs) -> outputs` on numpy arrays. Handlers know no protocol; the Paddle Serving web API's
per-model JSON shape is declared here as data (`WebApi`) and applied by runtime.protocols.paddle_web."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from runtime.batching import Batcher
from runtime.inference_thread import InferenceThread
from runtime.tensors import TensorSpec

OnBatch = Callable[[int], None]


@dataclass(frozen=True)
class WebApi:
    """How `{"feed": [...], "fetch": [...]}` maps onto a handler's tensors.

    feed: feed item keys, each the name of an input tensor (one row per feed item).
    fetch: accepted fetch names -> the output tensors each one returns.
    rows: the result is one object per feed item (LAC) instead of one object of lists (images, raw).
    """

    feed: tuple[str, ...]
    fetch: dict[str, tuple[str, ...]] = field(default_factory=dict)
    rows: bool = False


class Handler:
    """Base of the model handlers. `load` blocks (run on `executor`); `infer` is a coroutine."""

    platform = ""
    inputs: list[TensorSpec]  # several specs may share a name: alternatives (e.g. image bytes or pixels)
    outputs: list[TensorSpec]
    web: WebApi
    batcher: Batcher | None = None  # a batching handler's: started and closed with the handler

    def __init__(self) -> None:
        # One thread owns the backend: Paddle predictors must not hop between threads.
        self.executor = InferenceThread()
        # Set by the server: True while the replica serves no other request (a handler may then run a
        # lone request on the loop, see runtime.batching).
        self.alone: Callable[[], bool] = lambda: False

    def load(self) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        """After load, on the event loop."""
        if self.batcher is not None:
            self.batcher.start()

    async def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.executor.shutdown(wait=False)

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError
