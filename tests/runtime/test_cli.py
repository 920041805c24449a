"""The runtime's command line without a server: which files a model name or path resolves to
(labels.txt and preprocess.json picked up), and `backend_kind`, which the pre-warmed launcher asks."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from runtime.cli import backend_kind, mkldnn_for, parse_args
from runtime.model_files import ModelLoadError, resolve_model
from runtime.models.preprocess import IMAGENET, Preprocess


@pytest.fixture
def built(tmp_path, monkeypatch) -> Path:
    """A fake `runtime.models` knowing one built model and one unbuilt one."""
    root = tmp_path / "effnet"
    (root / "paddle").mkdir(parents=True)
    (root / "paddle" / "inference.json").write_text("{}")
    (root / "onnx").mkdir()
    (root / "onnx" / "model.onnx").write_bytes(b"")
    (root / "labels.txt").write_text("a\nb\n")
    (root / "preprocess.json").write_text(json.dumps({"resize": 160, "crop": 128, "mean": [0.5] * 3,
                                                      "std": [0.25] * 3, "scale": 0.00392}))

    def model_dir(name: str) -> Path:
        if name == "effnet":
            return root
        if name == "unbuilt":
            raise FileNotFoundError("model unbuilt is not built: run `python -m runtime.models build unbuilt`")
        raise KeyError(f"unknown model {name!r}")

    monkeypatch.setitem(sys.modules, "runtime.models", types.SimpleNamespace(model_dir=model_dir))
    return root


def test_a_named_model_resolves_by_backend(built):
    files = resolve_model("effnet")
    assert files.path == built / "paddle" and files.backend == "paddle"
    assert files.labels == built / "labels.txt" and files.preprocess == built / "preprocess.json"
    assert resolve_model("effnet", "onnx").path == built / "onnx"
    assert resolve_model("effnet", "onnx", labels="/my/labels").labels == Path("/my/labels")  # explicit wins
    prep = Preprocess.from_file(files.preprocess)
    assert (prep.resize, prep.crop, prep.mean, prep.scale) == (160, 128, (0.5, 0.5, 0.5), 0.00392)
    args = parse_args(["--model", "effnet"])
    assert args.handler == "imagenet" and args.name == "effnet"


@pytest.mark.parametrize(("model", "reason"), [
    ("unbuilt", "python -m runtime.models build unbuilt"),
    ("nosuch", "unknown model 'nosuch'"),
    ("/no/such/model", "does not exist"),
])
def test_unresolvable_models_say_why(built, model, reason):
    with pytest.raises(ModelLoadError, match=reason):
        resolve_model(model)


def test_files_next_to_a_model_path_are_picked_up(tmp_path):
    (tmp_path / "paddle").mkdir()
    (tmp_path / "labels.txt").write_text("x\n")
    files = resolve_model(str(tmp_path / "paddle"))
    assert files.labels == tmp_path / "labels.txt" and files.preprocess is None
    assert Preprocess.from_file(None) == IMAGENET


@pytest.mark.parametrize("text", ['{"resize": 100, "crop": 200}', '{"std": [0, 1, 1]}', "[1]", "{"])
def test_bad_preprocess_json_is_refused(tmp_path, text):
    (tmp_path / "preprocess.json").write_text(text)
    with pytest.raises(ValueError, match="preprocess.json"):
        Preprocess.from_file(tmp_path / "preprocess.json")


@pytest.mark.parametrize(("argv", "kind"), [
    ([], "paddle"),
    (["--model", "lac", "--port", "9"], "paddle"),
    (["--model", "effnet"], "paddle"),
    (["--model", "effnet", "--backend", "onnx"], "onnx"),
    (["--model=effnet", "--backend=onnx"], "onnx"),
    (["--model", "ONNXDIR"], "onnx"),
    (["--model", "ONNXDIR/model.onnx"], "onnx"),
    (["--model", "TFDIR"], None),
    (["--model", "x", "--backend", "tensorflow"], None),
    (["--model", "/no/such/model"], "paddle"),  # the replica refuses it with its own message
    (["--no-such-flag"], None),
])
def test_backend_kind(built, argv, kind, capsys):
    tf = built.parent / "tf"
    tf.mkdir(exist_ok=True)
    (tf / "saved_model.pb").write_bytes(b"")
    argv = [a.replace("ONNXDIR", str(built / "onnx")).replace("TFDIR", str(tf)) for a in argv]
    assert backend_kind(argv) == kind
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("argv", "reason"), [
    (["--max-queue", "0"], "--max-queue must be positive"),
    (["--max-text-chars", "-1"], "--max-text-chars must be positive"),
    (["--max-batch-size", "64", "--max-queue", "32"], "at least --max-batch-size"),
])
def test_limits_must_make_sense(argv, reason, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert reason in capsys.readouterr().err


@pytest.mark.parametrize(("handler", "choice", "on"), [
    ("imagenet", "auto", True), ("imagenet", "off", False), ("imagenet", "on", True),
    ("raw", "auto", False), ("raw", "on", True), ("lac", "auto", False), ("lac", "off", False),
    ("ocr", "auto", True), ("ocr", "off", False),
])
def test_onednn_is_on_by_default_only_for_image_models(handler, choice, on):
    assert mkldnn_for(handler, choice) is on


def test_lac_refuses_onednn(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--model", "lac", "--mkldnn", "on"])
    assert "fused GRU" in capsys.readouterr().err
