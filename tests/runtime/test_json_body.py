"""runtime.protocols.json_body: orjson's answers where it can, Python's json's where it refuses, so a body
is accepted or refused, and an answer written, as before."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest

from runtime.errors import BadInput
from runtime.protocols import json_body
from runtime.protocols.json_body import all_finite, dumps, has_long_number, loads


@pytest.mark.parametrize("raw", [
    b'{"inputs": [{"name": "x", "data": [0.25, -1.5]}]}',
    b'{"feed": [{"words": "\xe7\x99\xbe\xe5\xba\xa6"}]}',  # UTF-8 text
    b'{"x": NaN, "y": Infinity, "z": -Infinity}',  # orjson refuses these; Python's json takes them
    b'{"big": 123456789012345678901234567890}',  # beyond 64 bits: orjson would read a float
    b'{"s": "\\ud800"}',  # a lone surrogate: the tensor codec refuses it later, with its own reason
    b'{"a": 1, "a": 2}',  # the last one wins, in both
    b'{"big": [18446744073709551615, 18446744073709551616, 0.123456789012345678901]}',
])
def test_loads_accepts_what_pythons_json_accepts(raw: bytes) -> None:
    got = loads(raw)
    want = json.loads(raw.decode())
    assert json.dumps(got) == json.dumps(want)  # NaN != NaN: compared as text (and 1 != 1.0 so)


@pytest.mark.parametrize("chunk", [1 << 20, 7, 19, 20, 33])  # small chunks: runs straddle their boundaries
def test_has_long_number_finds_a_run_of_20_digits_wherever_it_lies(monkeypatch: pytest.MonkeyPatch,
                                                                   chunk: int) -> None:
    monkeypatch.setattr(json_body, "_SCAN_CHUNK", chunk)
    rng = random.Random(chunk)
    for _ in range(2000):
        raw = bytes(rng.choice(b"0123456789 .,-e[") for _ in range(rng.randrange(0, 80)))
        want = re.search(rb"[0-9]{20}", raw) is not None
        assert has_long_number(raw) is want, raw
        assert has_long_number(memoryview(raw)) is want, raw
    assert has_long_number(b"x" * 45 + b"1" * 20) and not has_long_number(b"x" * 45 + b"1" * 19 + b"x")


@pytest.mark.parametrize(("raw", "reason"), [
    (b'{"inputs": [', "malformed JSON in the request body"),
    (b"", "malformed JSON in the request body"),
    (b'{"x": "\xff"}', "request body is not valid UTF-8"),
    (b"[" * 200_000, "nested too deeply"),
])
def test_loads_refuses_with_pythons_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(BadInput, match=reason):
        loads(raw)


def test_loads_reads_a_memoryview_and_names_the_part() -> None:
    assert loads(memoryview(b'{"a": 1}xyz')[:8]) == {"a": 1}
    with pytest.raises(BadInput, match="JSON part of the request"):
        loads(memoryview(b'{"a": '), "JSON part of the request")


@pytest.mark.parametrize("obj", [
    {"model_name": "m", "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 3],
                                     "data": np.float32([0.1, -2.5, 3e-8]).tolist()}]},
    {"result": [{"word_seg": "百度|是|一家|高科技|公司"}]},
    {"n": [0, -1, 2**63 - 1, 2**64 - 1], "b": [True, False, None]},
])
def test_dumps_writes_what_pythons_json_writes(obj: dict) -> None:
    assert json.loads(dumps(obj)) == obj
    # byte for byte, but for one spelling: Python pads a negative exponent to two digits (e-08), orjson not
    want = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).replace("e-0", "e-")
    assert dumps(obj) == want.encode()


def test_dumps_keeps_non_finite_floats_and_lone_surrogates_as_before() -> None:
    arr = np.float32([1.0, np.nan, np.inf])
    assert not all_finite([np.int64([1]), arr])
    assert all_finite([np.int64([1]), np.float32([1.0]), np.array([b"x"], dtype=object)])
    assert dumps({"y": arr.tolist()}, [arr]) == b'{"y":[1.0,NaN,Infinity]}'
    assert dumps({"y": None, "z": [1.5]}, [np.float32([1.5])]) == b'{"y":null,"z":[1.5]}'
    assert dumps({"id": "\ud800"}) == b'{"id":"\\ud800"}'  # escaped, as JSON allows
    assert dumps({"big": 2**70}) == b'{"big":1180591620717411303424}'
