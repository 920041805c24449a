"""Batching any model, without servers or models: which models may batch (their tensor specs), which
requests may merge (rows_key), how merged outputs are split back (split_rows), and the batcher's
grouping by key and its row budget."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from runtime.batching import (
    Batcher,
    NotRowAligned,
    merge_rows,
    row_batching_refusal,
    rows_key,
    rows_of,
    split_rows,
)
from runtime.inference_thread import InferenceThread
from runtime.tensors import TensorSpec, object_array


def fp32(name: str, shape: tuple[int, ...] | None) -> TensorSpec:
    return TensorSpec(name, "FP32", shape)


@pytest.mark.parametrize(("inputs", "outputs", "refusal"), [
    pytest.param([fp32("x", (-1, 4))], [fp32("s", (-1, 3)), TensorSpec("a", "INT64", (-1,))], None,
                 id="dynamic-first-dims"),
    pytest.param([fp32("x", (-1, -1)), fp32("m", (-1,))], [fp32("s", (-1,))], None, id="two-dynamic-inputs"),
    pytest.param([fp32("x", (-1, 4))], [fp32("s", None)], None, id="output-shape-unknown-checked-per-run"),
    pytest.param([fp32("x", (2, 4))], [fp32("s", (2, 3))], "input `x` has a fixed first dimension (2)",
                 id="fixed-input"),
    pytest.param([fp32("x", (-1, 4)), fp32("m", (1, 4))], [fp32("s", (-1,))],
                 "input `m` has a fixed first dimension (1)", id="one-fixed-input-of-two"),
    pytest.param([fp32("x", None)], [fp32("s", (-1,))], "input `x` has no declared shape", id="input-unknown"),
    pytest.param([fp32("x", ())], [fp32("s", (-1,))], "input `x` is a scalar", id="scalar-input"),
    pytest.param([fp32("x", (-1, 4))], [fp32("total", (4,))], "output `total` has a fixed first dimension (4)",
                 id="output-reduced-over-rows"),
    pytest.param([fp32("x", (-1, 4))], [fp32("loss", ())], "output `loss` is a scalar", id="scalar-output"),
    pytest.param([], [fp32("s", (-1,))], "the model has no inputs", id="no-inputs"),
])
def test_which_models_batch(inputs, outputs, refusal):
    assert row_batching_refusal(inputs, outputs) == refusal


def x(*shape: int, dtype: str = "float32") -> np.ndarray:
    return np.zeros(shape, dtype=dtype)


@pytest.mark.parametrize(("a", "b", "merge"), [
    pytest.param({"x": x(1, 4)}, {"x": x(3, 4)}, True, id="row-counts-differ"),
    pytest.param({"x": x(1, 4), "m": x(1)}, {"m": x(2), "x": x(2, 4)}, True, id="input-order-ignored"),
    pytest.param({"x": x(1, 3)}, {"x": x(1, 5)}, False, id="second-dim-differs"),
    pytest.param({"x": x(1, 2, 3)}, {"x": x(1, 3, 2)}, False, id="later-dims-differ"),
    pytest.param({"x": x(1, 4)}, {"x": x(1, 4, dtype="float64")}, False, id="dtype-differs"),
    pytest.param({"x": x(1, 4)}, {"y": x(1, 4)}, False, id="names-differ"),
    pytest.param({"x": object_array([b"a"])}, {"x": object_array([b"bc", b"d"])}, True, id="bytes"),
])
def test_which_requests_merge(a, b, merge):
    ka, kb = rows_key(a), rows_key(b)
    assert ka is not None and kb is not None
    assert (ka == kb) is merge


@pytest.mark.parametrize("request_", [
    pytest.param({"x": np.float32(1.0) * np.ones(())}, id="scalar"),
    pytest.param({"x": x(2, 4), "m": x(3)}, id="inputs-disagree-on-rows"),
    pytest.param({}, id="no-inputs"),
])
def test_requests_that_run_alone(request_):
    assert rows_key(request_) is None


def test_merged_rows_split_back_in_order():
    a, b = {"x": np.arange(4.0).reshape(1, 4)}, {"x": np.arange(4.0, 12.0).reshape(2, 4)}
    merged = merge_rows([a, b])
    assert merged["x"].shape == (3, 4)
    outputs = {"s": merged["x"].sum(axis=1), "x2": merged["x"] * 2}
    back = split_rows(outputs, [rows_of(a), rows_of(b)])
    assert [r["s"].tolist() for r in back] == [[6.0], [22.0, 38.0]]
    np.testing.assert_array_equal(back[1]["x2"], b["x"] * 2)


@pytest.mark.parametrize(("outputs", "message"), [
    pytest.param({"twice": np.zeros((6, 4))}, "output `twice` has 6 rows for 3 merged input rows", id="more-rows"),
    pytest.param({"ok": np.zeros(3), "total": np.zeros(4)}, "output `total` has 4 rows", id="one-of-two"),
    pytest.param({"loss": np.float32(0) * np.ones(())}, "output `loss` has a scalar", id="scalar"),
])
def test_outputs_without_one_row_per_input_row_are_not_split(outputs, message):
    with pytest.raises(NotRowAligned, match=message):
        split_rows(outputs, [1, 2])


# ---- the batcher with a key and a row budget ---------------------------------------------------------

class Blocking:
    """`run` records each batch and answers each item with itself; the first call blocks until
    `release`, so what is submitted meanwhile queues."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.batches: list[list[tuple[str, int]]] = []

    def run(self, items: list[tuple[str, int]]) -> list[tuple[str, int]]:
        self.batches.append(list(items))
        self.entered.set()
        assert self.release.wait(60)
        return list(items)


@pytest.fixture
def pool():
    ex = InferenceThread()
    yield ex
    ex.shutdown(wait=True)


async def _queued_behind_a_running_batch(b: Batcher, model: Blocking,
                                         submissions: list[list[tuple[str, int]]]) -> list[asyncio.Task]:
    first = asyncio.create_task(b.submit([("first", 1)]))
    await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 60)
    tasks = [asyncio.create_task(b.submit(s)) for s in submissions]
    for _ in submissions:  # each submit queues within one loop iteration
        await asyncio.sleep(0)
    model.release.set()
    return [first, *tasks]


# Items are (key, rows); None as a key: that submission runs alone.
@pytest.mark.parametrize(("max_batch", "submissions", "batches"), [
    pytest.param(8, [[("a", 1)], [("b", 1)], [("a", 2)], [("b", 3)]],
                 [[("a", 1), ("a", 2)], [("b", 1), ("b", 3)]], id="keys-group-in-arrival-order"),
    pytest.param(4, [[("a", 3)], [("a", 2)], [("a", 1)], [("a", 2)]],
                 [[("a", 3)], [("a", 2), ("a", 1)], [("a", 2)]], id="rows-never-exceed-the-budget-fifo"),
    pytest.param(8, [[(None, 1)], [(None, 1)], [("a", 1)]],
                 [[(None, 1)], [(None, 1)], [("a", 1)]], id="keyless-run-alone"),
    pytest.param(8, [[("a", 1), ("b", 1)], [("a", 1)]],
                 [[("a", 1), ("b", 1)], [("a", 1)]], id="mixed-keys-in-one-submission-run-alone"),
])
async def test_the_batcher_merges_only_equal_keys_within_the_row_budget(pool, max_batch, submissions, batches):
    model, sizes = Blocking(), []
    b = Batcher(model.run, pool, max_batch_size=max_batch, on_batch=sizes.append,
                key=lambda item: item[0], size=lambda item: item[1])
    b.start()
    try:
        tasks = await _queued_behind_a_running_batch(b, model, submissions)
        answers = [await t for t in tasks]
    finally:
        b.close()
    assert answers[1:] == submissions  # every caller gets its own items back
    assert model.batches[1:] == batches
    assert sizes[1:] == [sum(rows for _, rows in batch) for batch in batches]


async def test_without_a_key_everything_queued_merges_as_before(pool):
    model = Blocking()
    b = Batcher(model.run, pool, max_batch_size=8)
    b.start()
    try:
        tasks = await _queued_behind_a_running_batch(b, model, [[("a", 1)], [("b", 1), ("c", 1)]])
        await asyncio.gather(*tasks)
    finally:
        b.close()
    assert model.batches[1:] == [[("a", 1), ("b", 1), ("c", 1)]]
