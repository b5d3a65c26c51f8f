"""The `VLM` bundle and the small folder helpers both `build` and `released` need (no cycle between them).

- `VLM`: the `InternVLForConditionalGeneration` model, its tokenizer, the `ProcessingSpec`, a name.
- `set_ps_version`: InternVL's pixel-shuffle variant on a loaded model (v1 patched, v2 transformers' own).
- folders: `read_folder_json`, `check_weights` (present, readable safetensors), `load_tokenizer`,
  `guess_template`, `model_folder` (write a model folder atomically).
"""

from __future__ import annotations

import json
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer, InternVLForConditionalGeneration, PreTrainedTokenizerBase
from transformers.models.internvl.modeling_internvl import InternVLModel

from r1v.atomic import atomic_dir
from r1v.errors import ModelError, OutputError
from r1v.model.tokens import single_token_id
from r1v.processing.spec import ProcessingSpec


@dataclass
class VLM:
    """A model with everything needed to use it. `tokenizer` is None only for the 38B shape presets."""

    model: InternVLForConditionalGeneration
    tokenizer: PreTrainedTokenizerBase | None
    spec: ProcessingSpec
    name: str
    provenance: dict = field(default_factory=dict)


def _pixel_shuffle_v1(self: InternVLModel, vision_features: torch.Tensor, scale_factor: float = 0.5) -> torch.Tensor:
    """InternVL's ps_version 'v1': like transformers' (v2) but without the final height/width swap,
    so the 2x2-merged tokens of a tile come out column-major instead of row-major."""
    n, w, h, c = vision_features.size()
    x = vision_features.view(n, w, int(h * scale_factor), int(c / scale_factor))
    x = x.permute(0, 2, 1, 3).contiguous()
    return x.view(n, int(h * scale_factor), int(w * scale_factor), int(c / (scale_factor * scale_factor)))


def set_ps_version(model: torch.nn.Module, version: str) -> None:
    """Make the loaded model's pixel shuffle follow `version` ('v2' = transformers' own; 'v1' patched).

    The patch is an instance attribute on the inner `InternVLModel`; it is not saved with the weights,
    so r1v records ps_version in `r1v.json` and re-applies it in `load_vlm`.
    """
    if version not in ("v1", "v2"):
        raise ModelError(f"ps_version must be 'v1' or 'v2', got {version!r}")
    inner = [m for m in model.modules() if isinstance(m, InternVLModel)]
    if not inner:
        raise ModelError("set_ps_version: no InternVLModel inside this model")
    for m in inner:
        if version == "v1":
            m.pixel_shuffle = types.MethodType(_pixel_shuffle_v1, m)
        elif "pixel_shuffle" in m.__dict__:
            del m.pixel_shuffle


def first_int(v) -> int:
    """The first element of a list/tuple config value (InternVL configs store some sizes as [n]), as int."""
    return int(v[0]) if isinstance(v, (list, tuple)) else int(v)



def read_folder_json(path: Path) -> dict:
    """A JSON object file of a model folder (config.json, r1v.json, ...); ModelError naming it otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise ModelError(f"{path}: cannot read ({e.strerror or e})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def check_weights(folder: Path) -> list[Path]:
    """The safetensors files of a model folder, each checked to be present with a readable header.

    A truncated or damaged file is found here, with its name, instead of deep inside `from_pretrained`.
    Folders holding only `pytorch_model.bin` pass unchecked (transformers reads them).
    """
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    index = folder / WEIGHTS_INDEX
    if index.is_file():
        weight_map = read_folder_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelError(f"{index}: no 'weight_map' {{tensor: shard file}}")
        files = [folder / name for name in sorted(set(map(str, weight_map.values())))]
        for f in files:
            if not f.is_file():
                raise ModelError(f"{index}: shard {f.name} is missing")
    elif (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    elif (folder / "pytorch_model.bin").is_file() or (folder / "pytorch_model.bin.index.json").is_file():
        return []
    else:
        raise ModelError(f"{folder}: no weights (model.safetensors or {WEIGHTS_INDEX})")
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as e:
            raise ModelError(f"{f}: corrupt or truncated safetensors file ({e})") from None
    return files


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a model folder; a folder without tokenizer files is refused (transformers would
    otherwise build an empty tokenizer from the config alone)."""
    folder = Path(folder)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(f"{folder}: no usable tokenizer (none of {', '.join(TOKENIZER_FILES)})")
    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception as e:  # noqa: BLE001 - a damaged tokenizer file raises many types
        raise ModelError(f"{folder}: no usable tokenizer ({type(e).__name__}: {e})") from None


def guess_template(tokenizer: PreTrainedTokenizerBase | None) -> str:
    """'r1v' for DeepSeek-R1-distill tokenizers, else 'chatml'."""
    if tokenizer is not None and single_token_id(tokenizer, "<｜Assistant｜>") is not None:
        return "r1v"
    return "chatml"


@contextmanager
def model_folder(out: str | Path) -> Iterator[Path]:
    """Write a model folder atomically (`r1v.atomic.atomic_dir`): the block fills an empty temp folder that
    replaces `out` when it succeeds. `out` may be absent, empty, or an earlier model folder (it is replaced
    whole); a folder holding anything else is refused rather than deleted. Unwritable paths: OutputError."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: cannot write a model folder there (it is a file)")
    if out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise OutputError(f"{out}: exists and is not a model folder (no config.json); refusing to replace "
                          "its files; choose an empty or new folder")
    try:
        with atomic_dir(out) as tmp:
            yield tmp
    except OSError as e:  # a writer inside the block (save_pretrained, safetensors) failed, e.g. a full disk
        raise OutputError(f"{out}: cannot write ({e.strerror or e})") from None
