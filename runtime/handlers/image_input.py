"""Where the image and OCR handlers' images come from and how they become pixels, bounded for hostile input.

Sources: encoded bytes (binary tensors), base64 text, a URL (only with --allow-urls: aiohttp, size and
time limits) or an absolute file path (only with --image-base-dir, and only inside it). Decoding checks
the pixel count from the header before decompressing (PIL's `open` is lazy: `open_image`), then the
image classifier preprocesses per the model's preprocess.json (`decode_image`).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from runtime.errors import BadInput, TooLarge
from runtime.models.preprocess import Preprocess

if TYPE_CHECKING:
    from PIL import Image

_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")
MAX_REASON_CHARS = 200


def plain_reason(exc: BaseException) -> str:
    """A library's error text fit for a client: no Python object reprs, bounded (pure)."""
    return _REPR.sub("the data", str(exc)).strip()[:MAX_REASON_CHARS]


def open_image(data: bytes, max_pixels: int, mode: str = "RGB") -> Image.Image:
    """Encoded image -> a decoded PIL image in `mode`, its pixel count checked from the header before
    anything is decompressed. Blocking (run off the event loop)."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size  # from the header: nothing is decompressed yet
        if w * h > max_pixels:
            raise BadInput(f"image of {w}x{h} pixels is over the limit of {max_pixels} (--max-image-pixels)")
        return img.convert(mode)
    except Image.DecompressionBombError as exc:  # PIL's own guard, at open, for far larger images
        raise BadInput(f"image is over the limit of {max_pixels} pixels (--max-image-pixels): "
                       f"{plain_reason(exc)}") from None
    except BadInput:
        raise
    except UnidentifiedImageError:  # its text is PIL's repr of our BytesIO
        raise BadInput("undecodable image: not an image in a format the runtime reads (JPEG, PNG, WebP, GIF, "
                       "BMP, TIFF...), or the image's first bytes are damaged") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadInput(f"undecodable image: {plain_reason(exc) or 'damaged image data'}") from None


def decode_image(data: bytes, prep: Preprocess, max_pixels: int) -> np.ndarray:
    """Encoded image -> float32 CHW. Blocking (run off the event loop)."""
    return prep.apply(open_image(data, max_pixels))


class ImageSource:
    """Turns one element of the `image` input into encoded image bytes."""

    def __init__(self, base_dir: str | None = None, allow_urls: bool = False, max_bytes: int = 16 << 20,
                 url_timeout: float = 10.0) -> None:
        self.base_dir = Path(base_dir).resolve() if base_dir else None
        self.allow_urls = allow_urls
        self.max_bytes = max_bytes
        self.url_timeout = url_timeout
        self._session = None

    async def load(self, value: bytes) -> bytes:
        if not value:
            raise BadInput("`image` is empty")
        if value[:8].lower().startswith((b"http://", b"https://")):
            return await self._fetch(value.decode("utf-8", "replace"))
        try:  # before paths: base64 JPEG starts with "/9j/"; a path with a "." is never base64
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            pass
        if value[:1] == b"/" and len(value) < 4096 and b"\0" not in value:
            return self._read_file(value.decode("utf-8", "replace"))
        return value  # the encoded image itself (binary tensor data)

    def _read_file(self, name: str) -> bytes:
        if self.base_dir is None:
            raise BadInput("image file paths are disabled (start the runtime with --image-base-dir DIR)")
        path = Path(name).resolve()
        if not path.is_relative_to(self.base_dir):
            raise BadInput(f"image file {name} is outside --image-base-dir")
        if not path.is_file():
            raise BadInput(f"image file {name} does not exist")
        if os.path.getsize(path) > self.max_bytes:
            raise TooLarge(f"image file {name} is larger than {self.max_bytes} bytes")
        return path.read_bytes()

    async def _fetch(self, url: str) -> bytes:
        if not self.allow_urls:
            raise BadInput("image URLs are disabled (start the runtime with --allow-urls)")
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.url_timeout))
        try:
            async with self._session.get(url, allow_redirects=True, max_redirects=3) as r:
                if r.status != 200:
                    raise BadInput(f"image URL answered HTTP {r.status}")
                if (r.content_length or 0) > self.max_bytes:
                    raise TooLarge(f"image at the URL is larger than {self.max_bytes} bytes")
                data = bytearray()
                async for chunk in r.content.iter_chunked(65536):
                    data += chunk
                    if len(data) > self.max_bytes:
                        raise TooLarge(f"image at the URL is larger than {self.max_bytes} bytes")
                return bytes(data)
        except TimeoutError:
            raise BadInput(f"cannot fetch the image URL: no answer within {self.url_timeout:g} s") from None
        except (aiohttp.ClientError, ValueError) as exc:
            raise BadInput(f"cannot fetch the image URL: {plain_reason(exc) or 'the connection failed'}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
