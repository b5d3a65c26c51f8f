"""Benchmark: InternVL dynamic tiling throughput, `tile_image` vs the straightforward PIL pipeline.

Both sides start from the PNG path (decode + white alpha compositing + grid choice + bicubic resize +
crop + thumbnail + ImageNet normalisation), with the same settings (448 px tiles, 1..12 tiles,
thumbnail). Baseline: `tile_image_reference` (PIL resize, PIL crop per tile, numpy normalisation per
tile). Ours: `tile_image`. Images are timed in alternating order (ours/baseline, then
baseline/ours for the next image) so a busy shared machine affects both sides alike; each side's
images/s is images / total seconds. torch runs with one thread by default (`--threads`),
so each side uses one core; on an oversubscribed machine more OpenMP threads only add contention. The details report tiles/s, whether every grid was identical, and
the largest pixel difference in normalised units and in uint8 levels.

Run: `.venv/bin/python benchmarks/bench_tiling.py [--limit N] [--json out.json]`
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from r1v.processing.tiling import IMAGENET_STD, PIXEL_TOLERANCE, tile_image, tile_image_reference

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "k12" / "images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="use only the first N images (0 = all)")
    parser.add_argument("--max-tiles", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: one core per side, as in a DataLoader worker; "
                             "PIL and numpy in the baseline are single-threaded)")
    parser.add_argument("--json", type=Path, default=None, help="write the result object here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    paths = sorted(p for p in DATA.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    if args.limit:
        paths = paths[: args.limit]
    settings = dict(tile_size=448, min_tiles=1, max_tiles=args.max_tiles, use_thumbnail=True)
    tile_image(paths[0], **settings)  # warm-up (lazy imports, kernel dispatch) for both sides
    tile_image_reference(paths[0], **settings)

    t_ours = t_base = 0.0
    tiles = 0
    grids_identical = True
    max_diff = 0.0
    for i, path in enumerate(paths):
        order = (True, False) if i % 2 == 0 else (False, True)
        results = {}
        for is_ours in order:
            fn = tile_image if is_ours else tile_image_reference
            start = time.perf_counter()
            results[is_ours] = fn(path, **settings)
            elapsed = time.perf_counter() - start
            if is_ours:
                t_ours += elapsed
            else:
                t_base += elapsed
        (ours_px, ours_grid), (base_px, base_grid) = results[True], results[False]
        tiles += ours_px.shape[0]
        if ours_grid != base_grid or ours_px.shape != base_px.shape:
            grids_identical = False
        else:
            max_diff = max(max_diff, float((ours_px - base_px).abs().max()))

    n = len(paths)
    ours, base = n / t_ours, n / t_base
    result = {
        "name": "tiling",
        "unit": "images/s",
        "ours": round(ours, 2),
        "baseline": round(base, 2),
        "ratio": round(ours / base, 3),
        "details": {
            "images": n,
            "tiles": tiles,
            "ours_tiles_per_s": round(tiles / t_ours, 1),
            "baseline_tiles_per_s": round(tiles / t_base, 1),
            "grids_identical": grids_identical,
            "max_abs_diff_normalised": round(max_diff, 5),
            "max_abs_diff_uint8_levels": round(max_diff * 255 * min(IMAGENET_STD), 2),
            "tolerance_normalised": round(PIXEL_TOLERANCE, 5),
            "settings": settings,
            "torch_threads": torch.get_num_threads(),
            "baseline_is": "tile_image_reference: PIL resize + PIL crop per tile + numpy normalise per tile",
        },
    }
    print(f"{'':10}{'images/s':>10}{'tiles/s':>10}")
    print(f"{'ours':10}{ours:10.1f}{tiles / t_ours:10.1f}")
    print(f"{'baseline':10}{base:10.1f}{tiles / t_base:10.1f}")
    print(f"ratio {ours / base:.2f}x over {n} images; grids identical: {grids_identical}; "
          f"max |diff| {max_diff:.4f} (tolerance {PIXEL_TOLERANCE:.4f})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
