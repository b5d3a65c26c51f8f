"""Processing: InternVL dynamic tiling, image loading, chat templates and `<image>` expansion."""

from r1v.processing.tiling import tile_image

__all__ = ["tile_image"]
