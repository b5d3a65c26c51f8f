"""Image loading: any reference (path, bytes, PIL image) -> an RGB PIL image, or an `ImageError`.

Two alpha policies:
- `alpha="white"` (default): transparent pixels (RGBA, LA, PA, P or L/RGB with a `transparency`
  key, i.e. a PNG tRNS chunk) are composited onto a white background. Figures such as the K12 PNGs
  draw black line art on a transparent background; a plain RGB convert turns that background black
  and hides the drawing.
- `alpha="drop"`: the plain `.convert("RGB")` of InternVL's loader, which simply discards alpha
  (the colour under transparent pixels is kept, often black). Use it for bit-compatibility with the
  preprocessing the released checkpoints were trained with.

Both policies also fix what a plain convert gets wrong: EXIF orientation is applied
(`ImageOps.exif_transpose`) and 16-bit / 32-bit integer greyscale (`I;16*`, `I`) and float (`F`)
images are scaled to 8 bits instead of being clipped. CMYK, palette, 1-bit and greyscale images are
converted to RGB.

Bad inputs (missing file, directory, empty or corrupt data, truncated file, zero size, more pixels
than `max_pixels` - a decompression bomb) raise `ImageError` naming the source.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from r1v.errors import ImageError

# Largest image accepted (width * height). 100 megapixels is far beyond any figure or photo a
# 12-tile prompt can use (12 tiles of 448 px are 2.4 megapixels) and small enough that a decoded RGB
# image stays under 300 MB.
MAX_PIXELS = 100_000_000

_ORIENTATION = 0x0112  # EXIF tag
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def source_name(src: Any) -> str:
    """A readable name for an image reference, used in error messages."""
    if isinstance(src, (str, Path)):
        return str(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes of image data>"
    if isinstance(src, Image.Image):
        return f"<PIL image {src.mode} {src.size[0]}x{src.size[1]}>"
    return f"<{type(src).__name__}>"


def _open(src: Any, name: str) -> Image.Image:
    """Open lazily (header only) from a path or bytes; PIL images pass through."""
    if isinstance(src, Image.Image):
        return src
    if isinstance(src, (str, Path)):
        path = Path(src)
        if not path.exists():
            raise ImageError("file not found", source=name)
        if path.is_dir():
            raise ImageError("is a directory, not an image file", source=name)
        if path.stat().st_size == 0:
            raise ImageError("file is empty", source=name)
        fp: Any = path
    elif isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise ImageError("no image data (0 bytes)", source=name)
        fp = io.BytesIO(bytes(src))
    else:
        raise ImageError(f"unsupported image reference of type {type(src).__name__} "
                         "(expected a path, bytes or a PIL image)", source=name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large (decompression bomb guard): {exc}", source=name) from None
    except UnidentifiedImageError:
        raise ImageError("not a recognised image format (corrupt or not an image)", source=name) from None
    except OSError as exc:
        raise ImageError(f"cannot read image (corrupt or truncated): {exc}", source=name) from None


def _to_8bit(im: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer and float greyscale to 8-bit 'L' (a plain convert would clip at 255)."""
    arr = np.asarray(im)
    if im.mode == "F":
        arr = arr.astype(np.float64)
        top = 1.0 if np.nanmax(arr, initial=0.0) <= 1.0 else 255.0
        out = np.clip(np.nan_to_num(arr) / top * 255.0, 0, 255)
    else:
        arr = arr.astype(np.int64)
        # 'I;16*' are 16-bit by definition; 'I' (how PIL opens 16-bit PNGs) is treated as 16-bit
        # unless every value already fits in 8 bits.
        wide = im.mode.startswith("I;16") or int(arr.max(initial=0)) > 255
        out = np.clip(arr / 257.0 if wide else arr, 0, 255)
    return Image.fromarray(np.rint(out).astype(np.uint8), mode="L")


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in _ALPHA_MODES or (im.mode in ("P", "L", "RGB", "1") and "transparency" in im.info)


def _to_rgb(im: Image.Image, alpha: str) -> Image.Image:
    if im.mode.startswith("I") or im.mode == "F":
        im = _to_8bit(im)
    if alpha == "white" and _has_alpha(im):
        rgba = im if im.mode == "RGBA" else im.convert("RGBA")
        mask = rgba.getchannel("A")
        if mask.getextrema()[0] == 255:  # fully opaque: nothing to composite
            return rgba.convert("RGB")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=mask)
        return out
    if im.mode == "RGB":
        return im
    return im.convert("RGB")


def load_image(src: Any, alpha: str = "white", *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Load `src` (path, bytes or PIL image) as a fully decoded RGB PIL image.

    alpha: 'white' composites transparency onto white; 'drop' is InternVL's plain `.convert("RGB")`.
    max_pixels: images with more pixels (width * height) raise `ImageError` before decoding.
    Raises `ImageError` (naming the source) for anything that cannot be turned into an image.
    """
    if alpha not in ("white", "drop"):
        raise ImageError(f"unknown alpha policy {alpha!r} (expected 'white' or 'drop')", source=source_name(src))
    name = source_name(src)
    im = _open(src, name)
    width, height = im.size
    if width <= 0 or height <= 0:
        raise ImageError(f"image has zero size ({width}x{height})", source=name)
    if width * height > max_pixels:
        raise ImageError(f"image too large: {width}x{height} = {width * height} pixels "
                         f"(limit {max_pixels}; possible decompression bomb)", source=name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()
            if im.getexif().get(_ORIENTATION, 1) not in (1, None):
                im = ImageOps.exif_transpose(im)
            return _to_rgb(im, alpha)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # truncated or damaged data surfaces here, when pixels are decoded
        raise ImageError(f"cannot decode image (corrupt or truncated): {exc}", source=name) from None
