"""Turn an `image_url` of a chat request into a checked RGB PIL image, or an `ApiError`.

Accepted: `data:image/...;base64,...` URLs, bare base64 strings, and `file://` paths inside the one folder
the operator allowed (`--allow-file-dir`). Remote URLs (http, https, ftp, ...) are never fetched (400).
Images with more than `max_pixels` pixels answer 413; the pixel count is read from the header before
decoding, so a decompression bomb costs nothing.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image

from r1v.errors import ImageError
from r1v.processing.images import load_image
from r1v.serve.schema import ApiError

_B64 = re.compile(r"^[A-Za-z0-9+/=\s_-]+$")


def _b64decode(data: str) -> bytes:
    data = "".join(data.split())
    try:
        if "-" in data or "_" in data:
            return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
        return base64.b64decode(data + "=" * (-len(data) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "image_url: invalid base64 image data", param="image_url") from None


def image_bytes(url: str, allow_file_dir: Path | None) -> tuple[bytes | Path, str]:
    """The raw image (bytes, or a checked path) behind `url`, and a short name for messages."""
    if url.startswith("data:"):
        head, sep, data = url.partition(",")
        if not sep or ";base64" not in head:
            raise ApiError(400, "image_url: only base64 data URLs are supported "
                                "(data:image/png;base64,...)", param="image_url")
        return _b64decode(data), "data URL"
    scheme = urlparse(url).scheme.lower() if "://" in url else ""
    if scheme == "file":
        if allow_file_dir is None:
            raise ApiError(400, "image_url: file:// URLs are disabled (start the server with --allow-file-dir)",
                           param="image_url")
        path = Path(unquote(urlparse(url).path)).resolve()
        root = allow_file_dir.resolve()
        if not path.is_relative_to(root):
            raise ApiError(400, "image_url: file is outside the allowed folder", param="image_url")
        if not path.is_file():
            raise ApiError(400, f"image_url: no such file {path.name!r} in the allowed folder", param="image_url")
        return path, path.name
    if scheme:
        raise ApiError(400, f"image_url: {scheme}:// URLs are not fetched; send the image inline as a base64 "
                            "data URL", param="image_url")
    if _B64.match(url):
        return _b64decode(url), "base64 image"
    raise ApiError(400, "image_url: expected a base64 data URL", param="image_url")


def decode_image(url: str, *, allow_file_dir: Path | None, max_pixels: int) -> Image.Image:
    """Decode one `image_url` into an RGB image; 400 for bad data, 413 for too many pixels."""
    raw, name = image_bytes(url, allow_file_dir)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            head = Image.open(raw if isinstance(raw, Path) else io.BytesIO(raw))
            width, height = head.size
    except Image.DecompressionBombError:
        raise ApiError(413, f"image_url ({name}): image too large", param="image_url",
                       code="image_too_large") from None
    except Exception:  # PIL raises many types for junk bytes
        raise ApiError(400, f"image_url ({name}): not a recognised image", param="image_url") from None
    if width * height > max_pixels:
        raise ApiError(413, f"image_url ({name}): {width}x{height} pixels is over the limit of {max_pixels}",
                       param="image_url", code="image_too_large")
    try:
        return load_image(raw, max_pixels=max_pixels)
    except ImageError as exc:
        raise ApiError(400, f"image_url ({name}): {exc}", param="image_url") from None
    except Exception:
        raise ApiError(400, f"image_url ({name}): cannot decode the image", param="image_url") from None
