"""`ProcessingSpec`: everything the processor needs to know about a model's inputs.

It travels with a model (saved as `r1v.json` beside the weights) so training, rollouts, eval and the
server prepare images and prompts identically. Defaults follow the released R1V checkpoints
(448 px tiles, 1..12 tiles + thumbnail, pixel shuffle 0.5 -> 256 tokens per tile).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

IMG_START = "<img>"
IMG_END = "</img>"
IMG_CONTEXT = "<IMG_CONTEXT>"

Template = Literal["r1v", "r1v2", "r1v3", "chatml"]
Alpha = Literal["white", "drop"]


@dataclass(frozen=True)
class ProcessingSpec:
    """Image and prompt settings of one model.

    - template: chat template name: `r1v` (DeepSeek-R1-distill style), `r1v2` (QwQ ChatML),
      `r1v3` (ChatML with `<think>\\n` prefill), `chatml` (plain ChatML, e.g. SmolLM2).
    - tile_size: pixels per square tile (the vision tower's image size).
    - patch_size: the vision tower's patch size; with downsample_ratio gives tokens per tile.
    - min_tiles / max_tiles: dynamic tiling bounds; use_thumbnail adds a whole-image tile when tiles > 1.
    - ps_version: pixel-shuffle variant of the checkpoint ('v1' old InternVL, 'v2' InternVL2.5/3).
    - alpha: 'white' composites transparent images onto white; 'drop' is the plain RGB convert of
      InternVL's loader (bit-compatible with the released preprocessing).
    """

    template: Template = "r1v"
    tile_size: int = 448
    patch_size: int = 14
    downsample_ratio: float = 0.5
    min_tiles: int = 1
    max_tiles: int = 12
    use_thumbnail: bool = True
    ps_version: Literal["v1", "v2"] = "v2"
    alpha: Alpha = "white"

    @property
    def tokens_per_tile(self) -> int:
        """Image tokens per tile: (tile/patch)^2 * ratio^2 (256 for 448/14/0.5)."""
        side = self.tile_size // self.patch_size
        return int(side * side * self.downsample_ratio * self.downsample_ratio)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ProcessingSpec:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)
