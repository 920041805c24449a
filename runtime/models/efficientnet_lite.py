"""EfficientNet-Lite0 as a `paddle.nn.Layer` that takes the pretrained ImageNet weights of the
EfficientNet-PyTorch naming (`_conv_stem`, `_blocks.N._depthwise_conv`, `_fc`, ...); build.py exports it.

Lite differs from EfficientNet-B0 in ways the weights alone do not tell, so they are written here:
ReLU6 instead of swish, no squeeze-and-excitation, BatchNorm epsilon 1e-3, and TensorFlow's "SAME"
padding (the weights come from TensorFlow, where a stride-2 conv pads only bottom/right on even sizes).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import paddle
from paddle import nn

BN_EPSILON = 1e-3
NUM_CLASSES = 1000

# (repeats, kernel, first stride, expand ratio, in channels, out channels) per stage, from
# EfficientNet-B0's block strings; Lite0 has width and depth multipliers 1.0, so they are used as is.
# Stride 2 falls on blocks 1, 3, 5 and 11 (plus the stem): 224 -> 7.
STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2D:
    return nn.Conv2D(cin, cout, k, stride=stride, padding="SAME", groups=groups, bias_attr=False)


def _bn(c: int) -> nn.BatchNorm2D:
    return nn.BatchNorm2D(c, epsilon=BN_EPSILON)


class MBConv(nn.Layer):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project; identity skip when shapes allow."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = _conv(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _conv(mid, mid, k, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = _conv(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        y = x
        if self.has_expand:
            y = nn.functional.relu6(self._bn0(self._expand_conv(y)))
        y = nn.functional.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite0(nn.Layer):
    """NCHW float32 image batch (normalized as preprocess.json says) -> softmax over the 1000 classes."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = _conv(3, STEM_CHANNELS, 3, 2)
        self._bn0 = _bn(STEM_CHANNELS)
        self._blocks = nn.LayerList([
            MBConv(cin if i == 0 else cout, cout, k, stride if i == 0 else 1, expand)
            for repeats, k, stride, expand, cin, cout in STAGES for i in range(repeats)])
        self._conv_head = _conv(STAGES[-1][-1], HEAD_CHANNELS, 1)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, NUM_CLASSES)

    def forward(self, x):
        x = nn.functional.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = nn.functional.relu6(self._bn1(self._conv_head(x)))
        x = paddle.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return nn.functional.softmax(self._fc(x), axis=-1)


def load_torch_weights(net: EfficientNetLite0, weights: Mapping[str, np.ndarray]) -> None:
    """Sets every parameter of `net` from `weights` (a torch state dict as numpy); a missing, extra or
    wrongly shaped tensor is a ValueError, so a different checkpoint cannot load half-way."""
    own = net.state_dict()
    converted: dict[str, np.ndarray] = {}
    for tname, value in weights.items():
        if tname.endswith(".num_batches_tracked"):  # a torch-only counter
            continue
        pname = tname.replace(".running_mean", "._mean").replace(".running_var", "._variance")
        if pname not in own:
            raise ValueError(f"checkpoint tensor {tname} has no place in EfficientNet-Lite0")
        if pname == "_fc.weight":
            value = value.T  # torch Linear is (out, in); Paddle's is (in, out)
        if tuple(value.shape) != tuple(own[pname].shape):
            raise ValueError(f"{tname}: shape {tuple(value.shape)}, EfficientNet-Lite0 wants {tuple(own[pname].shape)}")
        converted[pname] = np.ascontiguousarray(value, dtype=np.float32)
    if missing := sorted(set(own) - set(converted)):
        raise ValueError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")
    net.set_state_dict(converted)
