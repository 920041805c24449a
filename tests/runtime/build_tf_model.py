"""Builds small real TensorFlow SavedModels (tf.Module, fixed seed) for the TensorFlow backend's tests.
Usage: python tests/runtime/build_tf_model.py OUT_DIR  (writes OUT_DIR/NAME, one SavedModel per name)

  classifier  x FP32 [-1,4] -> scores FP32 [-1,3] (softmax), label INT64 [-1] (argmax)
  strings     text BYTES [-1] (tf.string), scale FP64 [-1] -> upper BYTES [-1], length INT32 [-1],
              scaled FP64 [-1] (length * scale), long BOOL [-1] (length > 3)
  unsigned    the classifier saved with its function under the signature key `predict` only: no
              `serving_default`, which the runtime must refuse clearly
"""

from __future__ import annotations

import sys
from pathlib import Path

import tensorflow as tf


class Classifier(tf.Module):
    def __init__(self) -> None:
        super().__init__()
        init = tf.random.stateless_normal
        self.w1 = tf.Variable(init([4, 16], seed=[7, 1]))
        self.b1 = tf.Variable(init([16], seed=[7, 2]))
        self.w2 = tf.Variable(init([16, 3], seed=[7, 3]))

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def predict(self, x):
        scores = tf.nn.softmax(tf.tanh(x @ self.w1 + self.b1) @ self.w2, axis=-1)
        return {"scores": scores, "label": tf.argmax(scores, axis=-1, output_type=tf.int64)}


class Strings(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text"),
                                  tf.TensorSpec([None], tf.float64, name="scale")])
    def measure(self, text, scale):
        length = tf.strings.length(text, unit="UTF8_CHAR")
        return {"upper": tf.strings.upper(text), "length": length,
                "scaled": tf.cast(length, tf.float64) * scale, "long": length > 3}


def main(out: Path) -> None:
    classifier = Classifier()
    tf.saved_model.save(classifier, str(out / "classifier"), signatures={"serving_default": classifier.predict})
    tf.saved_model.save(classifier, str(out / "unsigned"), signatures={"predict": classifier.predict})
    strings = Strings()
    tf.saved_model.save(strings, str(out / "strings"), signatures={"serving_default": strings.measure})


if __name__ == "__main__":
    main(Path(sys.argv[1]))
