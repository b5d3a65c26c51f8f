"""Benchmark: InternVL dynamic tiling throughput, `tile_image` vs the straightforward PIL pipeline.

Both sides start from the PNG path (decode + white alpha compositing + grid choice + bicubic resize +
crop + thumbnail + ImageNet normalisation), with the same settings (448 px tiles, 1..12 tiles,
thumbnail). Baseline: `tile_image_reference` (PIL resize, PIL crop per tile, numpy normalisation per
tile). Ours: `tile_image`. Images are timed in alternating order (ours/baseline, then
baseline/ours for the next image) so a busy shared machine affects both sides alike. Headline:
images / total wall seconds per side; images per process-CPU-second are reported too (less
disturbed by other work on a shared machine). `--threads N` sets torch's intra-op threads (only
ours' resize uses them; default: torch's own). The details also give tiles/s, whether every grid
was identical, and the largest pixel difference in normalised units and uint8 levels.

Run: `.venv/bin/python benchmarks/bench_tiling.py [--limit N] [--threads N] [--json out.json]`
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
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads for the resize (default 0: torch's default; 1 = one core "
                             "per side, as in a DataLoader worker; the baseline's PIL and numpy are single-threaded)")
    parser.add_argument("--json", type=Path, default=None, help="write the result object here")
    args = parser.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    paths = sorted(p for p in DATA.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    if args.limit:
        paths = paths[: args.limit]
    settings = dict(tile_size=448, min_tiles=1, max_tiles=args.max_tiles, use_thumbnail=True)
    tile_image(paths[0], **settings)  # warm-up (lazy imports, kernel dispatch) for both sides
    tile_image_reference(paths[0], **settings)

    t_ours = t_base = 0.0  # wall-clock seconds
    c_ours = c_base = 0.0  # process CPU seconds (robust to other load on a shared machine)
    tiles = 0
    grids_identical = True
    max_diff = 0.0
    for i, path in enumerate(paths):
        order = (True, False) if i % 2 == 0 else (False, True)
        results = {}
        for is_ours in order:
            fn = tile_image if is_ours else tile_image_reference
            start, cpu = time.perf_counter(), time.process_time()
            results[is_ours] = fn(path, **settings)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
            if is_ours:
                t_ours, c_ours = t_ours + elapsed, c_ours + cpu
            else:
                t_base, c_base = t_base + elapsed, c_base + cpu
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
            "ours_images_per_cpu_s": round(n / c_ours, 2),
            "baseline_images_per_cpu_s": round(n / c_base, 2),
            "ratio_cpu_time": round(c_base / c_ours, 3),
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
    print(f"per CPU-second: ours {n / c_ours:.1f}, baseline {n / c_base:.1f} images (ratio {c_base / c_ours:.2f}x)")
    print(f"ratio {ours / base:.2f}x over {n} images; grids identical: {grids_identical}; "
          f"max |diff| {max_diff:.4f} (tolerance {PIXEL_TOLERANCE:.4f})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
