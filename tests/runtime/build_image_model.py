"""Builds a small real image classifier for the runtime tests: a fixed-seed CNN saved with
paddle.jit.save (PIR .json + .pdiparams) and exported to ONNX with paddle2onnx.
Usage: python tests/runtime/build_image_model.py OUT_DIR"""

from __future__ import annotations

import sys
from pathlib import Path

import paddle


class TinyNet(paddle.nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = paddle.nn.Conv2D(3, 8, 3, stride=2, padding=1)
        self.c2 = paddle.nn.Conv2D(8, 16, 3, stride=2, padding=1)
        self.pool = paddle.nn.AdaptiveAvgPool2D(1)
        self.fc = paddle.nn.Linear(16, 5)

    def forward(self, x):
        x = paddle.nn.functional.relu(self.c1(x))
        x = paddle.nn.functional.relu(self.c2(x))
        return paddle.nn.functional.softmax(self.fc(paddle.flatten(self.pool(x), 1)))


def main(out: Path) -> None:
    paddle.seed(7)
    net = TinyNet()
    net.eval()
    pd_dir = out / "paddle"
    paddle.jit.save(net, str(pd_dir / "inference"),
                    input_spec=[paddle.static.InputSpec([None, 3, 224, 224], "float32", "image")])
    prog = next(p for p in pd_dir.iterdir() if p.suffix in (".json", ".pdmodel"))
    import paddle2onnx

    (out / "onnx").mkdir(exist_ok=True)
    paddle2onnx.export(str(prog), str(pd_dir / "inference.pdiparams"), str(out / "onnx" / "model.onnx"))
    (out / "labels.txt").write_text("\n".join(["daisy", "rose", "tulip", "sunflower", "dandelion"]) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
