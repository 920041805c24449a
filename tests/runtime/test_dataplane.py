"""The data plane without a server: spec checks, per-request and queue limits, readiness while
draining, request IDs and the one structured log line per request."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import threading
import time

import numpy as np
import pytest

from runtime.dataplane import DataPlane, InferRequest, QueueLimits, index_specs
from runtime.errors import GRPC_STATUS, HTTP_STATUS, BadInput, NotFound, Overloaded, TooLarge, Unavailable
from runtime.handlers.base import Handler, WebApi
from runtime.metrics import RuntimeMetrics
from runtime.request_log import REQUESTS_LOGGER, TEXT_FORMAT, AccessLog, JsonFormatter, request_id
from runtime.tensors import TensorSpec, check_shape, object_array

IMAGE_SPECS = [TensorSpec("image", "BYTES", (-1,)), TensorSpec("image", "FP32", (-1, 3, 4, 4))]


class Gate(Handler):
    """Echoes `x` back as `y` once `release` is set; counts calls."""

    platform = "test"
    inputs = [TensorSpec("x", "FP32", (-1, 2))]
    outputs = [TensorSpec("y", "FP32", (-1, 2)), TensorSpec("z", "FP32", (-1,))]
    web = WebApi(feed=("x",))

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.entered = asyncio.Event()

    async def infer(self, inputs):
        self.entered.set()
        await self.release.wait()
        return {"y": inputs["x"], "z": inputs["x"][:, 0]}


def plane(handler: Handler | None = None, **limits) -> DataPlane:
    p = DataPlane("m", RuntimeMetrics(), QueueLimits(**limits), drain_quiet=0.05)
    p.handler = handler
    return p


def x(n: int) -> dict[str, np.ndarray]:
    return {"x": np.zeros((n, 2), dtype=np.float32)}


@pytest.mark.parametrize(("specs", "inputs", "reason"), [
    (Gate.inputs, {"x": np.zeros((1, 2), np.float64)}, "must have datatype FP32, not 'FP64'"),
    (Gate.inputs, {"x": np.zeros((1, 3), np.float32)}, r"has shape \[1, 3\], the model takes \[-1,2\]"),
    (Gate.inputs, {"x": np.zeros((2,), np.float32)}, "has shape"),
    (Gate.inputs, {"x": np.zeros((0, 2), np.float32)}, "no elements"),
    (Gate.inputs, {"w": np.zeros((1, 2), np.float32)}, "unknown input 'w'"),
    (Gate.inputs, {}, "missing input"),
    (IMAGE_SPECS, {"image": np.zeros((1, 3, 5, 5), np.float32)}, r"the model takes \[-1,3,4,4\]"),
    (IMAGE_SPECS, {"image": np.zeros((1,), np.int64)}, "BYTES or FP32, not 'INT64'"),
    ([TensorSpec("words", "BYTES", (-1,))], {"words": np.zeros((1,), np.float32)}, "datatype BYTES"),
])
def test_inputs_are_checked_against_the_specs(specs, inputs, reason):
    with pytest.raises(BadInput, match=reason):
        DataPlane.check_inputs(index_specs(specs), inputs)


def test_spec_alternatives_and_items():
    assert DataPlane.check_inputs(index_specs(IMAGE_SPECS), {"image": object_array([b"a", b"b"])}) == 2
    assert DataPlane.check_inputs(index_specs(IMAGE_SPECS), {"image": np.zeros((3, 3, 4, 4), np.float32)}) == 3


async def test_model_name_loading_and_outputs():
    p = plane(None)
    with pytest.raises(NotFound, match="unknown model 'other'"):
        await p.infer(InferRequest("other", x(1)))
    with pytest.raises(Unavailable, match="model is loading"):
        await p.infer(InferRequest("m", x(1)))
    gate = Gate()
    gate.release.set()
    p.handler = gate
    assert set(await p.infer(InferRequest("m", x(1)))) == {"y", "z"}
    assert list(await p.infer(InferRequest("m", x(1), ["z"]))) == ["z"]
    with pytest.raises(BadInput, match="unknown output 'q'"):
        await p.infer(InferRequest("m", x(1), ["q"]))


async def test_items_per_request_are_capped():
    gate = Gate()
    gate.release.set()
    p = plane(gate, max_batch_size=4)
    await p.infer(InferRequest("m", x(4)))
    with pytest.raises(TooLarge, match="5 items in one request; the limit is 4"):
        await p.infer(InferRequest("m", x(5)))


async def test_a_remembered_valid_signature_lets_no_other_one_through():
    gate = Gate()
    gate.release.set()
    p = plane(gate, max_batch_size=4)
    for _ in range(2):  # the second time from the remembered signature
        assert (await p.infer(InferRequest("m", x(2))))["y"].shape == (2, 2)
    for bad, reason in (({"x": np.zeros((2, 3), np.float32)}, "has shape"),
                        ({"x": np.zeros((2, 2), np.float64)}, "datatype FP32"),
                        (x(5), "5 items in one request")):
        with pytest.raises((BadInput, TooLarge), match=reason):
            await p.infer(InferRequest("m", bad))

    class Wider(Gate):
        inputs = [TensorSpec("x", "FP32", (-1, 3))]

    wider = Wider()
    wider.release.set()
    p.handler = wider  # another model: what the first one accepted is forgotten
    with pytest.raises(BadInput, match=r"the model takes \[-1,3\]"):
        await p.infer(InferRequest("m", x(2)))


@pytest.mark.parametrize(("shape", "ok"), [
    ([1, 4], (1, 4)), ([], ()), ([3], (3,)),
    ([True, 4], None), ([0, 4], (0, 4)), ([1.0, 4], None), ([-1, 4], None), (["1", 4], None),
    ([1] * 9, None), ([2**20, 2**20, 2**20], None),
])
def test_check_shape_fast_path_agrees_with_the_general_one(shape, ok):
    if ok is None:
        with pytest.raises(BadInput):
            check_shape("x", shape)
    else:
        assert check_shape("x", shape) == ok


async def test_a_full_queue_is_refused_then_frees():
    gate = Gate()
    p = plane(gate, max_batch_size=8, max_queue=8)
    first = asyncio.create_task(p.infer(InferRequest("m", x(6))))
    await gate.entered.wait()
    with pytest.raises(Overloaded, match="queue full"):
        await p.infer(InferRequest("m", x(3)))
    assert HTTP_STATUS[Overloaded.code] == 503 and GRPC_STATUS[Overloaded.code] == "RESOURCE_EXHAUSTED"
    second = asyncio.create_task(p.infer(InferRequest("m", x(2))))  # 6 + 2 fits
    gate.release.set()
    await asyncio.gather(first, second)
    assert p.admitted == 0
    await p.infer(InferRequest("m", x(8)))


async def test_draining_fails_readiness_but_keeps_serving():
    gate = Gate()
    p = plane(gate)
    assert p.ready
    with p.track("v2-rest", "r1", HTTP_STATUS):
        task = asyncio.create_task(p.infer(InferRequest("m", x(1))))
        await gate.entered.wait()
        drained = asyncio.create_task(p.drain(30))
        await asyncio.sleep(0)
        assert not p.ready and p.not_ready_reason() == "draining"
        assert not drained.done()
        gate.release.set()
        await p.infer(InferRequest("m", x(1)))  # still served while draining
        await task
    assert await drained is True


async def test_drain_gives_up_after_its_time():
    p = plane(Gate())
    with p.track("v2-rest", "r1", HTTP_STATUS):
        assert await p.drain(0.05) is False


def test_the_inflight_gauge_counts_each_protocols_requests_while_they_run():
    p = plane(Gate())

    def gauge(protocol: str) -> float | None:
        return p.metrics.registry.get_sample_value("elasticserving_runtime_inflight_requests",
                                                    {"model": "m", "protocol": protocol})

    assert gauge("v2-rest") is None
    with p.track("v2-rest", "r1", HTTP_STATUS), p.track("v2-rest", "r2", HTTP_STATUS):
        with p.track("v2-grpc", "r3", GRPC_STATUS):
            assert (gauge("v2-rest"), gauge("v2-grpc")) == (2, 1)
        assert (gauge("v2-rest"), gauge("v2-grpc")) == (2, 0)
    with pytest.raises(TooLarge), p.track("v2-rest", "r4", HTTP_STATUS):
        raise TooLarge("too big")
    assert (gauge("v2-rest"), gauge("v2-grpc")) == (0, 0)


@pytest.mark.parametrize(("incoming", "kept"), [
    ("abc-123", True), ("0af7651916cd43dd8448eb211c80319c", True), (None, False), ("", False),
    ("has space", False), ("line\nbreak", False), ("x" * 129, False), ("é", False),
])
def test_request_ids_are_kept_when_sane(incoming, kept):
    rid = request_id(incoming)
    assert (rid == incoming) is kept and 1 <= len(rid) <= 128


def test_new_request_ids_differ_within_a_process_and_in_a_forked_child():
    """New ids are a per-process prefix and a counter: a replica forked by the zygote makes its own prefix."""
    ids = {request_id(None) for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first new id, then out at once
        os.write(write, request_id(None).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    parent = request_id(None)
    assert len(child) == 32 and child[:16] != parent[:16]


def test_each_request_is_one_log_line_with_its_status(caplog):
    p = plane(Gate())
    caplog.set_level(logging.INFO, "elasticserving.runtime.requests")
    with p.track("paddle-serving", "req-1", HTTP_STATUS) as rec:
        rec.status = 200
    with pytest.raises(TooLarge), p.track("v2-grpc", "req-2", GRPC_STATUS):
        raise TooLarge("too big")
    first, second = caplog.records
    assert first.fields["request_id"] == "req-1" and first.fields["status"] == 200
    assert first.fields["model"] == "m" and first.fields["protocol"] == "paddle-serving"
    assert second.fields["status"] == "INVALID_ARGUMENT" and second.fields["duration_ms"] >= 0
    line = json.loads(JsonFormatter().format(second))
    assert line["request_id"] == "req-2" and line["protocol"] == "v2-grpc" and line["level"] == "INFO"
    assert "request_id=req-1" in first.getMessage()
    assert p.inflight == 0


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize(("rid", "model", "status"), [
    ("req-1", "lac", 200), ('we"ird\\id', "my model", "INVALID_ARGUMENT"), ("r", "模型", 503),
])
def test_the_access_log_line_is_what_the_logging_formatter_writes(fmt, rid, model, status):
    """The hand-formatted request line (runtime.request_log.AccessLog) equals the logging module's."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    fields = {"request_id": rid, "model": model, "protocol": "v2-rest", "status": status, "duration_ms": 1.235}
    record = logging.LogRecord(REQUESTS_LOGGER, logging.INFO, __file__, 1, "request %s",
                               (" ".join(f"{k}={v}" for k, v in fields.items()),), None)
    record.fields = fields
    want = handler.format(record)
    got = AccessLog(handler, fmt).line(time.time(), rid, model, "v2-rest", status, 0.0012351).rstrip("\n")
    if fmt == "json":
        want_d, got_d = json.loads(want), json.loads(got)
        assert abs(_seconds(got_d.pop("time")) - _seconds(want_d.pop("time"))) < 2
        assert got_d == want_d and list(got_d) == list(want_d)
    else:
        assert got.split(" ", 2)[2] == want.split(" ", 2)[2]  # all but the time
        assert abs(_seconds(" ".join(got.split(" ", 2)[:2])) - _seconds(" ".join(want.split(" ", 2)[:2]))) < 2


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_access_log_lines_formatted_in_bulk_are_each_what_the_logging_formatter_writes(fmt):
    """The writer formats a hand-off column by column (AccessLog.lines): every line, time included, is the
    logging module's line for the same record, across seconds, statuses, names that need escaping and
    durations from microseconds to minutes."""
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    start = time.time()
    entries = [(start + i * 0.0371, (f"req-{i}", 'we"ird\\id', "r")[i % 3], ("lac", "my model", "模型")[i % 3 - 1],
                ("v2-rest", "paddle-serving", "v2-grpc")[i % 2], (200, "INVALID_ARGUMENT", 503, 404)[i % 4],
                (0.002, 0.0012351, 0.000003, 75.25, 0.0000005)[i % 5] + i * 1e-7) for i in range(100)]
    got = AccessLog(handler, fmt).lines(entries).splitlines()
    assert len(got) == len(entries) and int(entries[-1][0]) > int(start)  # several seconds' stamps
    for line, (now, rid, model, protocol, status, seconds) in zip(got, entries, strict=True):
        fields = {"request_id": rid, "model": model, "protocol": protocol, "status": status,
                  "duration_ms": round(seconds * 1e6) / 1000}
        record = logging.LogRecord(REQUESTS_LOGGER, logging.INFO, __file__, 1, "request %s",
                                   (" ".join(f"{k}={v}" for k, v in fields.items()),), None)
        record.fields, record.created, record.msecs = fields, now, (now - int(now)) * 1000
        assert line == handler.format(record)


def _seconds(asctime: str) -> float:
    import datetime

    stamp, ms = asctime.split(",")
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").timestamp() + int(ms) / 1000


async def test_access_log_lines_are_written_in_order_in_one_hand_off_off_the_request_path():
    stream = io.StringIO()
    log = AccessLog(logging.StreamHandler(stream), "json", flush_interval=0.02)
    for i in range(3):
        log.write(f"r{i}", "m", "v2-rest", 200, 0.001)
        await asyncio.sleep(0)  # requests in loop steps of their own
    assert stream.getvalue() == "" and log.handoffs == 0  # not on the requests' own path
    deadline = asyncio.get_running_loop().time() + 10
    while stream.getvalue().count("\n") < 3:  # the timer hands them on, with no flush from here
        assert asyncio.get_running_loop().time() < deadline, "request lines never written"
        await asyncio.sleep(0.005)
    assert log.handoffs == 1  # three requests, one wake-up of the writer thread
    assert [json.loads(ln)["request_id"] for ln in stream.getvalue().splitlines()] == ["r0", "r1", "r2"]
    log.write("r3", "m", "v2-rest", 200, 0.001)
    assert log.wait_written(5)  # as at shutdown: nothing pending is lost
    assert stream.getvalue().count("\n") == 4 and log.dropped == 0


async def test_a_stalled_log_reader_never_blocks_serving_and_drops_are_counted():
    """stderr is a pipe nobody reads (a frozen `elasticserving up`): writing request lines must not
    block the event loop; lines beyond the queue bound are dropped and counted, the rest arrive in
    order once the reader comes back."""
    from runtime import request_log

    r, w = os.pipe()
    stream = os.fdopen(w, "w", buffering=1)
    log = AccessLog(logging.StreamHandler(stream), "text", flush_interval=0)  # a hand-off per loop step
    n = request_log.MAX_QUEUED_LINES * 2  # far more than the pipe (64 KiB) and the queue hold
    for i in range(n):
        log.write(f"r{i}", "m", "v2-rest", 200, 0.001)
        if i % 500 == 0:
            await asyncio.sleep(0)  # loop steps go on: nothing here waits for the pipe
    await asyncio.sleep(0)
    assert log.dropped > 0  # the reader never read: the bound was reached and counted
    received = []
    with os.fdopen(r, "rb") as reader:
        def read_all() -> None:
            received.extend(reader.read().decode().splitlines())

        t = threading.Thread(target=read_all)
        t.start()  # the reader comes back
        assert log.wait_written(10)
        stream.close()
        t.join(10)
    ids = [int(line.split("request_id=r")[1].split()[0]) for line in received]
    assert ids == sorted(ids) and ids[0] == 0  # in order, from the first line on
    assert len(ids) + log.dropped == n  # every line written or counted as dropped


def test_access_log_without_an_event_loop_writes_at_once():
    stream = io.StringIO()
    AccessLog(logging.StreamHandler(stream), "text").write("r9", "m", "paddle-serving", 200, 0.002)
    assert "request_id=r9 model=m protocol=paddle-serving status=200 duration_ms=2.0" in stream.getvalue()


def test_one_access_log_serves_each_event_loop_in_turn_and_other_threads():
    """The log keeps the loop it hands lines over on (asyncio.get_running_loop() is a system call on 3.11):
    a later loop on the same thread (asyncio.run again), and a thread with no loop, still get every line."""
    stream = io.StringIO()
    log = AccessLog(logging.StreamHandler(stream), "text", flush_interval=0.01)

    async def requests(first: int) -> None:
        for i in range(first, first + 2):
            log.write(f"r{i}", "m", "v2-rest", 200, 0.001)
        deadline = asyncio.get_running_loop().time() + 10
        while stream.getvalue().count("\n") < first + 2:  # this loop's own timer hands them on
            assert asyncio.get_running_loop().time() < deadline, "request lines never written"
            await asyncio.sleep(0.005)

    asyncio.run(requests(0))
    asyncio.run(requests(2))  # a new loop: the closed one is not used
    t = threading.Thread(target=log.write, args=("r4", "m", "v2-rest", 200, 0.001))
    t.start()
    t.join(10)
    assert log.wait_written(5)
    lines = stream.getvalue().splitlines()
    assert [ln.split("request_id=")[1].split()[0] for ln in lines] == ["r0", "r1", "r2", "r3", "r4"]


A, B = object(), object()  # two client connections


@pytest.mark.parametrize(("begins", "at", "alone"), [
    ([(0.0, A)], 0.011, True),              # one connection, quiet for the window: alone
    ([(0.0, A)], 0.005, False),             # the window has not passed since the first request
    ([(0.0, A), (0.012, A)], 0.013, True),  # the same connection again: still alone
    ([(0.0, A), (0.012, B)], 0.013, False),  # a second connection: not alone for the window
    ([(0.0, A), (0.012, B)], 0.023, True),  # ... until the window passes
    ([(0.0, A), (0.012, None)], 0.02, False),  # a request of unknown connection (gRPC) counts as shared
])
def test_alone_means_one_connection_for_a_while(begins, at, alone):
    now = [0.0]
    p = DataPlane("m", RuntimeMetrics(), clock=lambda: now[0])
    recs = []
    for t, conn in begins:
        now[0] = t
        recs.append(p.track("paddle-serving", "rid", HTTP_STATUS, conn))
        if t != begins[-1][0]:
            p.end(recs.pop())  # earlier requests are done
    now[0] = at
    assert p.alone() is alone


def test_not_alone_while_another_request_is_in_flight():
    now = [1.0]
    p = DataPlane("m", RuntimeMetrics(), clock=lambda: now[0])
    p.track("paddle-serving", "r1", HTTP_STATUS, A)
    now[0] = 2.0
    assert p.alone()
    p.track("paddle-serving", "r2", HTTP_STATUS, A)  # pipelined on the same connection: two in flight
    assert not p.alone()
