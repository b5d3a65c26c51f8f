"""Image loading: every bad or unusual input is either handled correctly or an ImageError naming it."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from r1v.errors import ImageError
from r1v.processing.images import load_image


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def test_rgb_png_roundtrip(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    p = _save(Image.fromarray(arr), tmp_path / "a.png")
    out = load_image(p)
    assert out.mode == "RGB" and out.size == (9, 7)
    assert np.array_equal(np.asarray(out), arr)
    assert np.array_equal(np.asarray(load_image(p.read_bytes())), arr)
    assert np.array_equal(np.asarray(load_image(str(p))), arr)


def test_rgba_white_vs_drop(tmp_path):
    arr = np.zeros((4, 4, 4), dtype=np.uint8)  # fully transparent black ...
    arr[1, 1] = (0, 0, 0, 255)  # ... except one opaque black pixel
    arr[2, 2] = (255, 0, 0, 128)  # and one half-transparent red one
    p = _save(Image.fromarray(arr, "RGBA"), tmp_path / "t.png")
    white = np.asarray(load_image(p))
    assert (white[0, 0] == 255).all()
    assert (white[1, 1] == 0).all()
    assert white[2, 2, 0] == 255 and 120 <= white[2, 2, 1] <= 135
    drop = np.asarray(load_image(p, alpha="drop"))
    assert np.array_equal(drop, np.asarray(Image.open(p).convert("RGB")))
    assert (drop[0, 0] == 0).all()


def test_la_and_palette_transparency(tmp_path):
    la = Image.fromarray(np.stack([np.zeros((3, 3), np.uint8), np.zeros((3, 3), np.uint8)], -1), "LA")
    assert (np.asarray(load_image(_save(la, tmp_path / "la.png"))) == 255).all()
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.putpixel((1, 1), 1)
    p = _save(pal, tmp_path / "p.png", transparency=0)
    out = np.asarray(load_image(p))
    assert (out[0, 0] == 255).all() and tuple(out[1, 1]) == (10, 20, 30)
    # RGB with a tRNS colour key
    rgb = Image.new("RGB", (2, 1), (1, 2, 3))
    rgb.putpixel((1, 0), (9, 9, 9))
    out = np.asarray(load_image(_save(rgb, tmp_path / "trns.png", transparency=(1, 2, 3))))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 1]) == (9, 9, 9)
    # palette without transparency and 1-bit images just convert
    assert load_image(Image.new("P", (2, 2))).mode == "RGB"
    assert load_image(Image.new("1", (2, 2), 1)).getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_jpeg_and_16bit(tmp_path):
    p = _save(Image.new("CMYK", (5, 5), (0, 255, 255, 0)), tmp_path / "c.jpg")
    r, g, b = load_image(p).getpixel((2, 2))
    assert r > 200 and g < 60 and b < 60
    arr16 = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    p16 = _save(Image.fromarray(arr16), tmp_path / "g16.png")
    out = np.asarray(load_image(p16))[0, :, 0]
    assert list(out) == [0, 100, 255]  # scaled, not clipped to 255 everywhere
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert list(np.asarray(load_image(f))[0, :, 0]) == [0, 128, 255]


def test_exif_rotation(tmp_path):
    img = Image.new("RGB", (6, 2), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif)
    assert load_image(p).size == (2, 6)


def test_missing_corrupt_truncated_empty(tmp_path):
    with pytest.raises(ImageError, match="nope.png.*not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty.png.*empty"):
        load_image(tmp_path / "empty.png")
    (tmp_path / "junk.png").write_bytes(b"this is not an image at all")
    with pytest.raises(ImageError, match="junk.png.*not a recognised"):
        load_image(tmp_path / "junk.png")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="cut.png.*(truncated|corrupt)"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(ImageError, match="0 bytes"):
        load_image(b"")
    with pytest.raises(ImageError, match="unsupported image reference"):
        load_image(12345)
    with pytest.raises(ImageError, match="unknown alpha"):
        load_image(Image.new("RGB", (1, 1)), alpha="black")


def test_zero_size_and_bombs(tmp_path):
    with pytest.raises(ImageError, match="zero size"):
        load_image(Image.new("RGB", (0, 5)))
    small = _save(Image.new("RGB", (100, 100)), tmp_path / "s.png")
    with pytest.raises(ImageError, match="s.png.*too large"):
        load_image(small, max_pixels=5000)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # a PNG header claiming 100000 x 100000 pixels (10 gigapixels) with almost no data
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")
    (tmp_path / "bomb.png").write_bytes(bomb)
    with pytest.raises(ImageError, match="bomb.png.*too large"):
        load_image(tmp_path / "bomb.png")


def test_k12_alpha_figures_keep_line_art(shared_data):
    """Real K12 figures: black line art on a transparent background is all-dark under the plain RGB
    convert ('drop') and stays visible (dark strokes on white) after white compositing."""
    paths = sorted((shared_data / "k12" / "images").glob("*.png"))
    hidden = 0
    for p in paths:
        with Image.open(p) as im:
            if im.mode != "RGBA" or (np.asarray(im.getchannel("A")) < 128).mean() < 0.5:
                continue
        drop = np.asarray(load_image(p, alpha="drop")).astype(int).sum(-1)
        if (drop < 150).mean() < 0.9:
            continue  # transparent pixels that happen to hold a light colour
        hidden += 1
        white = np.asarray(load_image(p)).astype(int).sum(-1)
        dark = (white < 150).mean()
        assert np.median(white) == 765, p.name  # background became white
        assert 0.001 < dark < 0.2, p.name  # the strokes are still there, and dark
    assert hidden >= 10  # 14 of the K12 figures are black-on-black with the plain convert
