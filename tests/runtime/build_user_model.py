"""Builds small real "user" models for the raw handler's tests and benchmark: fixed-seed Paddle programs
saved with paddle.jit.save (PIR .json + .pdiparams), each also exported to ONNX with paddle2onnx.
Usage: python tests/runtime/build_user_model.py OUT_DIR [NAME ...]  (writes OUT_DIR/NAME/{paddle,onnx};
default: every model below)

  user     x FP32 [-1,4] -> scores FP32 [-1,3] (softmax), label INT64 [-1] (argmax): batches
  mlp      as `user` through two hidden layers of 256 (67k parameters): a small model whose call costs
           about as much as the runtime's own work per request (benchmarks.user_model_bench)
  ragged   x FP32 [-1,-1] -> total FP32 [-1] (row sums), peak FP32 [-1] (row maxima): batches only
           requests of the same width
  fixed    x FP32 [2,4] -> as `user`: the first dimension is not dynamic, it never batches
  doubled  x FP32 [-1,4] -> twice FP32 [-1,4] (x stacked on itself: 2n rows for n): its outputs do
           not follow the batch, batching must stop
  lookup   x INT64 [-1,2] -> FP32 [-1,3] (sum of two rows of a 10-row embedding): an id outside 0..9
           is an error of the model itself, for that request only
(paddle.jit.to_static needs the layers' source in a file, hence a script and not `python -c`.)"""

from __future__ import annotations

import sys
from pathlib import Path

import paddle


class Classifier(paddle.nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = paddle.nn.Linear(4, 16)
        self.fc2 = paddle.nn.Linear(16, 3)

    def forward(self, x):
        scores = paddle.nn.functional.softmax(self.fc2(paddle.tanh(self.fc1(x))), axis=-1)
        return scores, paddle.argmax(scores, axis=-1)


class MLP(paddle.nn.Layer):
    def __init__(self, width: int = 256) -> None:
        super().__init__()
        self.fc1 = paddle.nn.Linear(4, width)
        self.fc2 = paddle.nn.Linear(width, width)
        self.fc3 = paddle.nn.Linear(width, 3)

    def forward(self, x):
        hidden = paddle.tanh(self.fc2(paddle.tanh(self.fc1(x))))
        scores = paddle.nn.functional.softmax(self.fc3(hidden), axis=-1)
        return scores, paddle.argmax(scores, axis=-1)


class Scaled(paddle.nn.Layer):
    """A layer with one parameter (a scale of 1): the runtime refuses a Paddle program without its
    .pdiparams, and Paddle would run one with uninitialized parameters rather than fail."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = self.create_parameter([1], default_initializer=paddle.nn.initializer.Constant(1.0))


class RowStats(Scaled):
    def forward(self, x):
        x = x * self.scale
        return paddle.sum(x, axis=1), paddle.max(x, axis=1)


class Doubled(Scaled):
    def forward(self, x):
        x = x * self.scale
        return paddle.concat([x, x], axis=0)


class Lookup(paddle.nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.emb = paddle.nn.Embedding(10, 3)

    def forward(self, ids):
        return paddle.sum(self.emb(ids), axis=1)


MODELS = {  # name: (layer, input shape, input dtype)
    "user": (Classifier, [None, 4], "float32"),
    "mlp": (MLP, [None, 4], "float32"),
    "ragged": (RowStats, [None, None], "float32"),
    "fixed": (Classifier, [2, 4], "float32"),
    "doubled": (Doubled, [None, 4], "float32"),
    "lookup": (Lookup, [None, 2], "int64"),
}


def build(out: Path, name: str) -> None:
    import paddle2onnx

    layer_cls, shape, dtype = MODELS[name]
    paddle.seed(11)
    layer = layer_cls()
    layer.eval()
    pd_dir = out / name / "paddle"
    paddle.jit.save(layer, str(pd_dir / "inference"),
                    input_spec=[paddle.static.InputSpec(shape, dtype, "x")])
    prog = next(p for p in pd_dir.iterdir() if p.suffix in (".json", ".pdmodel"))
    (out / name / "onnx").mkdir(parents=True, exist_ok=True)
    paddle2onnx.export(str(prog), str(pd_dir / "inference.pdiparams"), str(out / name / "onnx" / "model.onnx"))


def main(out: Path, names: list[str]) -> None:
    for name in names or MODELS:
        build(out, name)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
