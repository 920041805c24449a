"""Which files a model argument names and which backend loads them, without importing any backend:
`lac`, a name known to runtime.models (a built directory with paddle/ and onnx/), or a path; labels.txt
and preprocess.json next to the model are picked up. Light enough for the launcher to import."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


class ModelLoadError(RuntimeError):
    pass


def is_name(model: str) -> bool:
    """A bare name (no path separator, nothing on disk) is looked up in runtime.models."""
    return "/" not in model and os.sep not in model and not Path(model).exists()


def detect_backend(path: Path) -> str:
    if path.is_file():
        if path.suffix == ".onnx":
            return "onnx"
        raise ModelLoadError(f"cannot tell the backend of {path}: give --backend")
    names = {p.name for p in path.iterdir()} if path.is_dir() else set()
    if any(n.endswith(".onnx") for n in names):
        return "onnx"
    if "saved_model.pb" in names:
        return "tensorflow"
    if "__model__" in names or any(n.endswith((".pdmodel", ".json")) for n in names):
        return "paddle"
    raise ModelLoadError(f"no model found in {path} (expected a Paddle, ONNX or TensorFlow SavedModel)")


@dataclass(frozen=True)
class ModelFiles:
    path: Path
    backend: str  # auto | paddle | onnx | tensorflow
    labels: Path | None
    preprocess: Path | None


def resolve_model(model: str, backend: str = "auto", labels: str | None = None,
                  preprocess: str | None = None) -> ModelFiles:
    """The files a tensor model (not `lac`) is loaded from; labels.txt and preprocess.json next to the
    model are picked up unless given explicitly."""
    if is_name(model):
        from runtime.models import model_dir

        try:
            root = Path(model_dir(model))
        except FileNotFoundError as exc:
            raise ModelLoadError(str(exc)) from None
        except (KeyError, ValueError) as exc:
            raise ModelLoadError(f"unknown model {model!r}: {exc}") from None
        if backend == "auto":
            backend = "paddle" if (root / "paddle").is_dir() else "onnx"
        if backend not in ("paddle", "onnx"):
            raise ModelLoadError(f"{model} is built for the paddle and onnx backends, not {backend}")
        path, near = root / backend, [root]
    else:
        path = Path(model)
        if not path.exists():
            raise ModelLoadError(f"model path {model} does not exist")
        here = path if path.is_dir() else path.parent
        near = [here, here.parent]

    def nearby(explicit: str | None, filename: str) -> Path | None:
        if explicit:
            return Path(explicit)
        return next((d / filename for d in near if (d / filename).is_file()), None)

    return ModelFiles(path, backend, nearby(labels, "labels.txt"), nearby(preprocess, "preprocess.json"))
