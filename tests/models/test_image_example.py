"""examples/image.yaml (the manual's image-classification sample with a 50% canary) loads as a
PaddleService: both sides serve efficientnet-lite0, the Paddle export by default, the ONNX one as canary."""

from __future__ import annotations

import shlex

from autoscaler.spec import load_paddleservices
from tests.helpers import ROOT


def _flags(arg: str) -> dict[str, str | bool]:
    words = shlex.split(arg)
    out: dict[str, str | bool] = {}
    for i, w in enumerate(words):
        if w.startswith("--"):
            nxt = words[i + 1] if i + 1 < len(words) else "--"
            out[w[2:]] = True if nxt.startswith("--") else nxt
    return out


def test_image_example_is_a_half_canary_of_both_exports():
    (svc,) = load_paddleservices((ROOT / "examples/image.yaml").read_text())
    assert svc.key == "paddleservice-system/paddleservice-image"
    assert svc.spec.runtimeVersion == "paddleserving"
    assert svc.sides == ["default", "canary"] and svc.canary_percent == 50
    cfg = svc.autoscaling()
    assert cfg.min_scale == 0 and cfg.stable_window == 10.0
    default, canary = _flags(svc.spec.default.arg), _flags(svc.spec.canary.arg)
    for side in (default, canary):
        assert side["model"] == "efficientnet-lite0" and side["handler"] == "imagenet" and side["name"] == "image"
        assert side["port"] == "$PORT"
    assert (default["backend"], canary["backend"]) == ("paddle", "onnx")
    assert canary.get("is-canary") is True and "is-canary" not in default
    assert svc.spec.default.port == svc.spec.canary.port == 9292
