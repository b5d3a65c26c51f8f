"""Presets: the released R1V shapes (buildable on the `meta` device) and two small models.

- `r1v-38b`: InternViT-6B-448px-V2_5 + connector + DeepSeek-R1-Distill-Qwen-32B shapes (template r1v).
- `r1v2-38b`: same ViT + QwQ-32B shapes (template r1v2).
- `r1v3-38b`: InternVL3-38B shapes: same ViT + Qwen2.5-32B shapes (template r1v3).
- `tiny`: random 2-layer ViT on 56 px tiles (4 tokens per tile) + random 2-layer Qwen2 (hidden 64) with
  the byte-level tiny tokenizer; for tests.
- `tiny64`: `tiny` with a head size of 64 in its LLM (hidden 128, 2 heads): the smallest shape vLLM's CPU
  attention accepts (it refuses head size 16), for the tests of the vLLM engine.
- `smol`: the real SmolLM2-135M-Instruct + the project's small vision tower (from `r1v.assets`).

The 38B presets have no tokenizer (none can be downloaded); a real checkpoint folder supplies one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from r1v.processing.spec import ProcessingSpec

# InternViT-6B-448px-V2_5 (45 of the 48 layers, as used by InternVL2.5/3-38B and R1V).
INTERNVIT_6B = dict(
    hidden_size=3200, num_hidden_layers=45, num_attention_heads=25, intermediate_size=12800,
    image_size=448, patch_size=14, use_qk_norm=True, norm_type="rms_norm", attention_bias=False,
    layer_norm_eps=1e-6, hidden_act="gelu", use_mean_pooling=True,
)

# Qwen2-32B family LLM shapes (R1-Distill-Qwen-32B, QwQ-32B, Qwen2.5-32B share them).
QWEN2_32B = dict(
    model_type="qwen2", hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
    num_attention_heads=40, num_key_value_heads=8, vocab_size=152064, rope_theta=1_000_000.0,
    max_position_embeddings=131072, rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=False,
)

TINY_VISION = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=56,
    patch_size=14, use_qk_norm=True, norm_type="rms_norm", attention_bias=False, layer_norm_eps=1e-6,
)

TINY_TEXT = dict(
    model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, rope_theta=10000.0, max_position_embeddings=2048, rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)

TINY64_TEXT = {**TINY_TEXT, "hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 2,
               "num_key_value_heads": 2}


@dataclass(frozen=True)
class Preset:
    """One preset: vision/text config kwargs, connector ratio, processing spec and a note."""

    name: str
    description: str
    spec: ProcessingSpec
    vision: dict = field(default_factory=dict)
    text: dict = field(default_factory=dict)
    downsample_ratio: float = 0.5
    image_token_id: int = 151667
    from_assets: bool = False


PRESETS: dict[str, Preset] = {
    "r1v-38b": Preset(
        "r1v-38b", "Skywork-R1V-38B shapes: InternViT-6B-448px-V2_5 + DeepSeek-R1-Distill-Qwen-32B",
        ProcessingSpec(template="r1v"), INTERNVIT_6B, QWEN2_32B),
    "r1v2-38b": Preset(
        "r1v2-38b", "Skywork-R1V2-38B shapes: InternViT-6B-448px-V2_5 + QwQ-32B",
        ProcessingSpec(template="r1v2"), INTERNVIT_6B, QWEN2_32B),
    "r1v3-38b": Preset(
        "r1v3-38b", "Skywork-R1V3-38B shapes: InternVL3-38B (InternViT-6B-448px-V2_5 + Qwen2.5-32B)",
        ProcessingSpec(template="r1v3"), INTERNVIT_6B, QWEN2_32B),
    "tiny": Preset(
        "tiny", "random test model: 2-layer ViT (56 px tiles, 4 tokens/tile) + 2-layer Qwen2 (hidden 64)",
        ProcessingSpec(template="r1v3", tile_size=56, patch_size=14, max_tiles=6), TINY_VISION, TINY_TEXT),
    "tiny64": Preset(
        "tiny64", "tiny with LLM head size 64 (hidden 128, 2 heads): what vLLM's CPU attention runs",
        ProcessingSpec(template="r1v3", tile_size=56, patch_size=14, max_tiles=6), TINY_VISION, TINY64_TEXT),
    "smol": Preset(
        "smol", "SmolLM2-135M-Instruct + the project's small vision tower (from r1v.assets)",
        ProcessingSpec(template="chatml"), from_assets=True),
}


def get_preset(name: str) -> Preset:
    """The preset called `name`, or a ModelError listing the known ones."""
    from r1v.errors import ModelError

    if name not in PRESETS:
        raise ModelError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]
