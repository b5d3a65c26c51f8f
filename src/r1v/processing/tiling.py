"""InternVL dynamic tiling: one image -> N normalised square tiles (+ a thumbnail) for the vision tower.

The algorithm (spec 2.3, the preprocessing of the released R1V checkpoints):
1. Candidate grids are all (cols, rows) with `min_tiles <= cols*rows <= max_tiles`, ordered by tile
   count. The chosen grid has the aspect ratio cols/rows closest to width/height; on an exact tie a
   later (larger) candidate wins only if the image area exceeds half the grid's area
   (`W*H > 0.5 * S*S * cols*rows`).
2. The image is resized (bicubic) to (S*cols, S*rows) and cut into cols*rows tiles, row-major.
3. If `use_thumbnail` and there is more than one tile, the whole image resized to S x S is appended.
4. Pixels are scaled to [0, 1] and normalised with the ImageNet mean/std.

Two implementations live here:
- `tile_image`: the fast path. Enlarging resizes (most figures are smaller than their grid) run
  torch's antialiased uint8 bicubic kernel (PIL's a=-0.5 filter, pixel centres and pass order, in
  fixed point; several times faster than PIL); shrinking resizes use PIL itself (see `_resized`).
  Tiles are cut by a reshape/permute view (no per-tile PIL crops) and normalised in place in one
  preallocated float32 array (per channel: one uint8 -> float multiply, one add).
  The resize is the only torch op (it uses torch's intra-op threads); the rest is numpy.
- `tile_image_reference`: the obvious PIL pipeline (PIL resize, PIL crop per tile, numpy
  normalisation per tile), kept as test oracle and baseline of `benchmarks/bench_tiling.py`.

Tolerance: both give identical grids; pixel values differ only by the fixed-point rounding of the
two bicubic kernels when enlarging: at most `PIXEL_TOLERANCE_LEVELS` (3) uint8 levels, i.e.
`PIXEL_TOLERANCE` = 3 / 255 / min(std) ~= 0.0525 in normalised units (measured on the 400 K12
figures: 2 levels, 0.035). Shrinking resizes give the reference's uint8 pixels exactly.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from r1v.errors import ConfigError
from r1v.processing.images import load_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PIXEL_TOLERANCE_LEVELS = 3
PIXEL_TOLERANCE = PIXEL_TOLERANCE_LEVELS / 255.0 / min(IMAGENET_STD)

Grid = tuple[int, int]


def _check_bounds(tile_size: int, min_tiles: int, max_tiles: int) -> None:
    if tile_size < 1:
        raise ConfigError(f"tile_size must be >= 1, got {tile_size}")
    if min_tiles < 1 or max_tiles < min_tiles:
        raise ConfigError(f"need 1 <= min_tiles <= max_tiles, got min_tiles={min_tiles}, max_tiles={max_tiles}")


@lru_cache(maxsize=64)
def candidate_grids(min_tiles: int = 1, max_tiles: int = 12) -> tuple[Grid, ...]:
    """All (cols, rows) with min_tiles <= cols*rows <= max_tiles, ordered by tile count.

    Within one tile count the order is that of the reference implementation (a Python set of tuples,
    then a stable sort by product); it matters only for exact aspect-ratio ties such as 5:4 between
    (2, 1) and (1, 2), and is reproduced so every grid choice is identical.
    """
    grids = {(c, r) for n in range(min_tiles, max_tiles + 1)
             for c in range(1, n + 1) for r in range(1, n + 1) if min_tiles <= c * r <= max_tiles}
    return tuple(sorted(grids, key=lambda g: g[0] * g[1]))


def choose_grid(width: int, height: int, *, tile_size: int = 448, min_tiles: int = 1,
                max_tiles: int = 12) -> Grid:
    """The (cols, rows) grid InternVL's dynamic tiling picks for a width x height image."""
    _check_bounds(tile_size, min_tiles, max_tiles)
    aspect = width / height
    area = width * height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidate_grids(min_tiles, max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * cols * rows:
            best = (cols, rows)
    return best


# per-channel x_uint8 * SCALE + SHIFT == (x/255 - mean) / std
_SCALE = [np.float32(1.0 / (255.0 * sd)) for sd in IMAGENET_STD]
_SHIFT = [np.float32(-m / sd) for m, sd in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]


def _normalise_into(dst: np.ndarray, src: np.ndarray) -> None:
    """dst[..., c, :, :] = src * scale_c + shift_c: uint8 in, float32 out, no temporaries.

    numpy (single-threaded) rather than torch: as fast as one torch thread here, and immune to
    OpenMP thread contention when the CPU is oversubscribed.
    """
    for c in range(3):
        plane = dst[..., c, :, :]
        np.multiply(src[..., c, :, :], _SCALE[c], out=plane, dtype=np.float32)
        np.add(plane, _SHIFT[c], out=plane)


def _resized(rgb: Image.Image, src: torch.Tensor, width: int, height: int) -> np.ndarray:
    """Bicubic resize of `rgb` (also given as `src`, a [1,3,H,W] uint8 view) -> [3,height,width] uint8.

    Enlarging (the common case: grids are at least as large as most figures) runs torch's uint8
    antialiased bicubic kernel: PIL's filter (a=-0.5), pixel centres and horizontal-then-vertical
    pass order in fixed point, several times faster than PIL. When an axis shrinks, PIL may run the
    vertical pass first, and with intermediate uint8 clipping the pass order changes edge pixels by
    up to ~14 levels, so shrinking resizes use PIL itself and match the reference exactly.
    """
    src_h, src_w = src.shape[-2:]
    if (src_w, src_h) == (width, height):
        return src[0].numpy()
    if width >= src_w and height >= src_h:
        # channels-last input runs the fast kernel; its channels-last output is made planar in
        # uint8 (cheaper than a transposing uint8 -> float conversion later)
        out = F.interpolate(src, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
        return out[0].contiguous().numpy()
    return np.asarray(rgb.resize((width, height), Image.Resampling.BICUBIC)).transpose(2, 0, 1)


def tile_image(image: Any, *, tile_size: int = 448, min_tiles: int = 1, max_tiles: int = 12,
               use_thumbnail: bool = True, alpha: str = "white") -> tuple[torch.Tensor, Grid]:
    """Tile one image (path, bytes or PIL image) -> (pixel_values float32 [N,3,S,S], (cols, rows)).

    N = cols*rows, plus one thumbnail tile when `use_thumbnail` and cols*rows > 1.
    `alpha` is the transparency policy of `load_image` ('white' or 'drop').
    """
    _check_bounds(tile_size, min_tiles, max_tiles)
    rgb = load_image(image, alpha=alpha)  # an RGB PIL image passes through unchanged
    width, height = rgb.size
    cols, rows = choose_grid(width, height, tile_size=tile_size, min_tiles=min_tiles, max_tiles=max_tiles)
    s, n_grid = tile_size, cols * rows
    n_total = n_grid + (1 if use_thumbnail and n_grid > 1 else 0)

    # HWC uint8 viewed as [1,3,H,W] (channels-last memory, which the uint8 resize kernel prefers)
    src = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0)
    out = np.empty((n_total, 3, s, s), dtype=np.float32)

    big = _resized(rgb, src, s * cols, s * rows)  # [3, rows*S, cols*S]
    tiles = big.reshape(3, rows, s, cols, s).transpose(1, 3, 0, 2, 4)  # [rows, cols, 3, S, S], a view
    _normalise_into(out[:n_grid].reshape(rows, cols, 3, s, s), tiles)
    if n_total > n_grid:
        _normalise_into(out[n_grid], _resized(rgb, src, s, s))
    return torch.from_numpy(out), (cols, rows)


def tile_images(images: list[Any], *, tile_size: int = 448, min_tiles: int = 1, max_tiles: int = 12,
                use_thumbnail: bool = True, alpha: str = "white") -> tuple[torch.Tensor, list[int]]:
    """Tile several images -> (pixel_values concatenated [sum N_i,3,S,S], tiles per image)."""
    parts, counts = [], []
    for image in images:
        pv, _ = tile_image(image, tile_size=tile_size, min_tiles=min_tiles, max_tiles=max_tiles,
                           use_thumbnail=use_thumbnail, alpha=alpha)
        parts.append(pv)
        counts.append(pv.shape[0])
    if not parts:
        return torch.empty(0, 3, tile_size, tile_size, dtype=torch.float32), []
    return (parts[0] if len(parts) == 1 else torch.cat(parts)), counts


def tile_image_reference(image: Any, *, tile_size: int = 448, min_tiles: int = 1, max_tiles: int = 12,
                         use_thumbnail: bool = True, alpha: str = "white") -> tuple[torch.Tensor, Grid]:
    """The straightforward PIL pipeline (baseline and test oracle); same contract as `tile_image`."""
    rgb = load_image(image, alpha=alpha)
    cols, rows = choose_grid(*rgb.size, tile_size=tile_size, min_tiles=min_tiles, max_tiles=max_tiles)
    s = tile_size
    resized = rgb.resize((s * cols, s * rows), Image.Resampling.BICUBIC)
    tiles = []
    for index in range(cols * rows):
        x, y = (index % cols) * s, (index // cols) * s
        tiles.append(resized.crop((x, y, x + s, y + s)))
    if use_thumbnail and len(tiles) > 1:
        tiles.append(rgb.resize((s, s), Image.Resampling.BICUBIC))
    mean = np.array(IMAGENET_MEAN, dtype=np.float32)
    std = np.array(IMAGENET_STD, dtype=np.float32)
    arrays = [((np.asarray(t, dtype=np.float32) / 255.0 - mean) / std).transpose(2, 0, 1) for t in tiles]
    return torch.from_numpy(np.stack(arrays)), (cols, rows)
