"""Builds a small model of your own, as `paddle.jit.save` writes one, for the README's "Serve your own
model": four FP32 features in (`x`, shape [-1, 4]: any batch size), three class scores and the class id
out. Fixed seed, untrained: the point is the serving path, not the accuracy.

    .venv/bin/python examples/own_model.py /tmp/own-model          # Paddle: inference.json + .pdiparams
    .venv/bin/python examples/own_model.py /tmp/own-onnx --onnx    # the same model as model.onnx

(paddle.jit.to_static reads the layer's source, so this must be a file, not `python -c`.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import paddle


class Classifier(paddle.nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = paddle.nn.Linear(4, 16)
        self.out = paddle.nn.Linear(16, 3)

    def forward(self, x):
        scores = paddle.nn.functional.softmax(self.out(paddle.tanh(self.hidden(x))), axis=-1)
        return scores, paddle.argmax(scores, axis=-1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--onnx", action="store_true", help="export model.onnx (paddle2onnx) instead")
    args = p.parse_args()
    paddle.seed(7)
    model = Classifier()
    model.eval()
    spec = [paddle.static.InputSpec([None, 4], "float32", "x")]
    paddle_dir = args.out if not args.onnx else args.out / ".paddle"
    paddle.jit.save(model, str(paddle_dir / "inference"), input_spec=spec)
    if args.onnx:
        import shutil

        import paddle2onnx

        program = next(f for f in paddle_dir.iterdir() if f.suffix in (".json", ".pdmodel"))
        paddle2onnx.export(str(program), str(paddle_dir / "inference.pdiparams"), str(args.out / "model.onnx"))
        shutil.rmtree(paddle_dir)
    print("\n".join(sorted(str(f) for f in args.out.iterdir())))


if __name__ == "__main__":
    main()
