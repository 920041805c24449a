"""The image preprocessing a built model wants, as written to `DIR/preprocess.json` by build.py and read
by the runtime's image handler: decoded RGB image -> float32 CHW array, the model's input row.

Fields of preprocess.json (all required unless marked):
  resize         int    the short side is resized to this (bilinear, the long side keeps the aspect
                        ratio, rounded; neither side below `crop`)
  crop           int    then the centre `crop` x `crop` square is cut out (left/top = (size - crop) // 2)
  scale          float  each RGB value 0..255 is multiplied by this ...
  mean, std      [3]    ... then x = (value * scale - mean[c]) / std[c] per channel c (R, G, B)
  interpolation  str    (informative) always "bilinear"
  layout         str    (informative) always "NCHW": the batch the model takes is float32 [N, 3, crop, crop]
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

MAX_FILE_BYTES = 4096


@dataclass(frozen=True)
class Preprocess:
    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float = 1.0
    interpolation: str = "bilinear"
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        if not (0 < self.crop <= self.resize <= 4096):
            raise ValueError(f"preprocess: need 0 < crop <= resize <= 4096, got crop {self.crop}, resize {self.resize}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ValueError("preprocess: mean and std need 3 values each, std > 0")
        if self.scale <= 0 or self.interpolation != "bilinear" or self.layout != "NCHW":
            raise ValueError("preprocess: scale > 0, interpolation bilinear and layout NCHW are supported")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        try:
            return cls(resize=int(d["resize"]), crop=int(d["crop"]), mean=tuple(float(v) for v in d["mean"]),
                       std=tuple(float(v) for v in d["std"]), scale=float(d["scale"]),
                       interpolation=d.get("interpolation", "bilinear"), layout=d.get("layout", "NCHW"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"preprocess: bad or missing field: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> Preprocess:
        text = Path(path).read_text()[:MAX_FILE_BYTES + 1]
        if len(text) > MAX_FILE_BYTES:
            raise ValueError(f"{path}: over {MAX_FILE_BYTES} bytes, not a preprocess.json")
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_file(cls, path: Path | None) -> Preprocess:
        """The runtime's reading: no file is IMAGENET; fields the file leaves out are IMAGENET's;
        anything invalid is a ValueError naming the file."""
        if path is None or not Path(path).is_file():
            return IMAGENET
        try:
            text = Path(path).read_text()[:MAX_FILE_BYTES + 1]
            if len(text) > MAX_FILE_BYTES:
                raise ValueError(f"over {MAX_FILE_BYTES} bytes")
            cfg = json.loads(text)
            if not isinstance(cfg, dict):
                raise ValueError("not a JSON object")
            return cls.from_dict({**asdict(IMAGENET), **cfg})
        except ValueError as exc:  # json.JSONDecodeError is one
            raise ValueError(f"{path}: not a valid preprocess.json: {exc}") from None

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "mean": list(self.mean), "std": list(self.std)}, indent=2) + "\n"

    def apply(self, image) -> np.ndarray:
        """A PIL image (any mode) -> float32 [3, crop, crop]."""
        from PIL import Image

        img = image if image.mode == "RGB" else image.convert("RGB")
        w, h = img.size
        k = self.resize / min(w, h)
        img = img.resize((max(self.crop, round(w * k)), max(self.crop, round(h * k))), Image.BILINEAR)
        w, h = img.size
        left, top = (w - self.crop) // 2, (h - self.crop) // 2
        img = img.crop((left, top, left + self.crop, top + self.crop))
        arr = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) * np.float32(self.scale)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(3, 1, 1)
        return (arr - mean) / std


# ImageNet's usual preprocessing: the runtime's default for models that ship no preprocess.json.
IMAGENET = Preprocess(resize=256, crop=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), scale=1 / 255)
