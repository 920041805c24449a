"""The torch-free reader of torch's legacy checkpoint format, on small files this test writes in that
format (with stand-in `torch` modules, since torch is not installed), and on broken or hostile ones."""

from __future__ import annotations

import io
import pickle
import struct
import sys
import types
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from runtime.models.torch_legacy import MAGIC_NUMBER, PROTOCOL_VERSION, TorchLegacyError, load_state_dict

DTYPE_STORAGE = {np.dtype("float32"): "FloatStorage", np.dtype("int64"): "LongStorage",
                 np.dtype("float16"): "HalfStorage", np.dtype("uint8"): "ByteStorage"}


@pytest.fixture
def fake_torch(monkeypatch):
    """Modules named like torch's, so pickle writes the same GLOBALs torch would."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    for name in [*DTYPE_STORAGE.values(), "BFloat16Storage"]:
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch, name, cls)

    def _rebuild_tensor_v2(*args):  # never called: only its name goes into the pickle
        raise AssertionError

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


class Storage:
    def __init__(self, key: str, data: np.ndarray, stype: str | None = None) -> None:
        self.key, self.data, self.stype = key, np.ascontiguousarray(data).ravel(), stype


class Tensor:
    def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple) -> None:
        self.args = (storage, offset, size, stride, False, OrderedDict())

    def __reduce__(self):
        return sys.modules["torch._utils"]._rebuild_tensor_v2, self.args


def write_legacy(path, obj, storages: list[Storage], header_count: int | None = None) -> None:
    """Writes `obj` the way torch.save(..., _use_new_zipfile_serialization=False) does."""
    torch = sys.modules["torch"]

    class Pickler(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, Storage):
                stype = getattr(torch, o.stype or DTYPE_STORAGE[o.data.dtype])
                return ("storage", stype, o.key, "cpu", o.data.size, None)
            return None

    buf = io.BytesIO()
    for header in (MAGIC_NUMBER, PROTOCOL_VERSION, {"protocol_version": PROTOCOL_VERSION, "little_endian": True,
                                                    "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(header, buf, protocol=2)
    Pickler(buf, protocol=2).dump(obj)
    pickle.dump([s.key for s in storages], buf, protocol=2)
    for s in storages:
        buf.write(struct.pack("<q", s.data.size if header_count is None else header_count))
        buf.write(s.data.tobytes())
    path.write_bytes(buf.getvalue())


def test_reads_tensors_views_and_dtypes(fake_torch, tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    shared = Storage("1", np.arange(10, dtype=np.float32))
    storages = [Storage("0", w), shared, Storage("2", np.array([7], dtype=np.int64)),
                Storage("3", np.array([0.5, -2], dtype=np.float16)), Storage("4", np.arange(6, dtype=np.uint8))]
    state = OrderedDict([
        ("fc.weight", Tensor(storages[0], 0, (4, 3), (3, 1))),
        ("fc.weight_t", Tensor(storages[0], 0, (3, 4), (1, 3))),  # a transposed view of the same storage
        ("a", Tensor(shared, 2, (2, 2), (2, 1))),  # two tensors at offsets of one storage
        ("b", Tensor(shared, 6, (4,), (1,))),
        ("bn.num_batches_tracked", Tensor(storages[2], 0, (), ())),
        ("half", Tensor(storages[3], 0, (2,), (1,))),
        ("bytes", Tensor(storages[4], 1, (2, 2), (1, 2))),
    ])
    path = tmp_path / "m.pth"
    write_legacy(path, state, storages)
    sd = load_state_dict(path)
    assert list(sd) == list(state)
    np.testing.assert_array_equal(sd["fc.weight"], w)
    np.testing.assert_array_equal(sd["fc.weight_t"], w.T)
    np.testing.assert_array_equal(sd["a"], [[2, 3], [4, 5]])
    np.testing.assert_array_equal(sd["b"], [6, 7, 8, 9])
    assert sd["bn.num_batches_tracked"].shape == () and sd["bn.num_batches_tracked"] == 7
    assert sd["half"].dtype == np.float16 and sd["half"].tolist() == [0.5, -2]
    np.testing.assert_array_equal(sd["bytes"], [[1, 3], [2, 4]])
    sd["a"][0, 0] = 99  # the arrays are copies: writable, independent of each other
    assert sd["b"][0] == 6


def test_bfloat16_is_widened_to_float32(fake_torch, tmp_path):
    values = np.array([1.5, -0.25, 3.0], dtype=np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype(np.uint16)  # exact: these need no more than 8 mantissa bits
    s = Storage("0", bf16, stype="BFloat16Storage")
    write_legacy(tmp_path / "b.pth", {"x": Tensor(s, 0, (3,), (1,))}, [s])
    out = load_state_dict(tmp_path / "b.pth")["x"]
    assert out.dtype == np.float32 and out.tolist() == values.tolist()


class Evil:
    def __reduce__(self):
        return eval, ("1",)


def _good(tmp_path):
    s = Storage("0", np.arange(4, dtype=np.float32))
    return {"x": Tensor(s, 0, (4,), (1,))}, [s]


def _nesting_bomb(path, depth: int = 100_000) -> None:
    """{"x": [[[...]]]} `depth` lists deep, pickled by hand (pickle itself would recurse too deep)."""
    buf = io.BytesIO()
    for header in (MAGIC_NUMBER, PROTOCOL_VERSION, {"little_endian": True}):
        pickle.dump(header, buf, protocol=2)
    buf.write(b"\x80\x02}X\x01\x00\x00\x00x" + b"]" * depth + b"a" * (depth - 1) + b"s.")
    pickle.dump([], buf, protocol=2)
    path.write_bytes(buf.getvalue())


def _zip(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"x")


CORRUPT = [
    ("random bytes", lambda p: p.write_bytes(b"\x00garbage, not a checkpoint" * 10), "not a torch legacy checkpoint"),
    ("empty file", lambda p: p.write_bytes(b""), "not a torch legacy checkpoint"),
    ("a plain pickle", lambda p: p.write_bytes(pickle.dumps({"a": 1})), "not a torch legacy checkpoint"),
    ("torch's zip format", _zip, "zip format"),
    ("truncated data", lambda p: (write_legacy(p, *_good(p.parent)), p.write_bytes(p.read_bytes()[:-5])),
     "truncated"),
    ("truncated header", lambda p: (write_legacy(p, *_good(p.parent)), p.write_bytes(p.read_bytes()[:-20])),
     "truncated"),
    ("lying element count", lambda p: write_legacy(p, *_good(p.parent), header_count=10**12), "truncated or corrupt"),
    ("tensor past its storage", lambda p: write_legacy(
        p, {"x": Tensor(_good(p.parent)[1][0], 2, (4,), (1,))}, _good(p.parent)[1]), "outside its storage"),
    ("not a state dict", lambda p: write_legacy(p, [1, 2], []), "not a state dict"),
    ("nesting bomb", _nesting_bomb, "nests too deeply"),
    ("a global that runs code", lambda p: write_legacy(p, {"x": Evil()}, []), "refusing to unpickle"),
]


@pytest.mark.parametrize("make,message", [c[1:] for c in CORRUPT], ids=[c[0] for c in CORRUPT])
def test_broken_files_are_a_clear_error(fake_torch, tmp_path, make, message):
    path = tmp_path / "bad.pth"
    make(path)
    with pytest.raises(TorchLegacyError, match=message):
        load_state_dict(path)


def test_size_limit(fake_torch, tmp_path):
    write_legacy(tmp_path / "m.pth", *_good(tmp_path))
    assert load_state_dict(tmp_path / "m.pth", max_bytes=10_000)["x"].tolist() == [0, 1, 2, 3]
    with pytest.raises(TorchLegacyError, match="over the 100-byte limit"):
        load_state_dict(tmp_path / "m.pth", max_bytes=100)
