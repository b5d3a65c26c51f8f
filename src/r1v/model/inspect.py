"""`r1v inspect`: parameters per part, trainable counts per policy, and bf16 weight memory.

Presets and folders are inspected on the `meta` device from their configs only: no weights are read
and no memory is used, so the 38B presets inspect in a second.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import InternVLForConditionalGeneration

from r1v.errors import ModelError
from r1v.model.parts import LORA_TARGETS, POLICIES, apply_policy, count_params, lora_param_estimate

LORA_RANK = 16


def _meta_model(target: str) -> tuple[torch.nn.Module, str]:
    from r1v.model.build import build_preset, folder_kind, hf_config
    from r1v.model.released import config_to_hf
    from r1v.model.vlm import read_folder_json

    path = Path(target)
    if not path.exists():
        return build_preset(target, device="meta").model, target
    kind = folder_kind(path)
    if kind in ("r1v", "hf"):
        config = hf_config(path)
    elif kind == "released":
        config, _ = config_to_hf(read_folder_json(path / "config.json"), 0, str(path / "config.json"))
    else:
        raise ModelError(f"{path}: a {kind} checkpoint, not a whole vision-language model")
    try:
        with torch.device("meta"):
            return InternVLForConditionalGeneration(config), path.name
    except Exception as e:  # noqa: BLE001 - a config transformers accepted but cannot build (bad sizes)
        raise ModelError(f"{path / 'config.json'}: cannot build the model ({type(e).__name__}: {e})") from None


def inspect_target(target: str) -> dict:
    """{name, vision, connector, llm, total, trainable: {policy: n, 'lora': n}, weights_bytes_bf16, shapes}."""
    model, name = _meta_model(str(target))
    counts = count_params(model)
    trainable = {p: apply_policy(model, p)["trainable"] for p in POLICIES}
    lora = lora_param_estimate(model, r=LORA_RANK)
    trainable["lora"] = lora + counts["connector"]
    v, t = model.config.vision_config, model.config.text_config
    return {
        "name": name, **counts, "trainable": trainable, "weights_bytes_bf16": counts["total"] * 2,
        "lora": {"rank": LORA_RANK, "targets": list(LORA_TARGETS), "adapter_params": lora,
                 "note": "trainable['lora'] = LoRA adapters on the LLM + the connector"},
        "shapes": {
            "vision": {"hidden": v.hidden_size, "layers": v.num_hidden_layers, "heads": v.num_attention_heads,
                       "image_size": list(v.image_size), "patch_size": list(v.patch_size)},
            "llm": {"type": t.model_type, "hidden": t.hidden_size, "layers": t.num_hidden_layers,
                    "heads": t.num_attention_heads, "kv_heads": getattr(t, "num_key_value_heads", None),
                    "vocab": t.vocab_size, "tied_embeddings": bool(model.config.tie_word_embeddings)},
            "downsample_ratio": model.config.downsample_ratio,
        },
    }


def _fmt(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3f}{unit}"
    return str(n)


def render_inspect(report: dict) -> None:
    """Print the report as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    parts = Table(title=f"{report['name']}: parameters")
    parts.add_column("part")
    parts.add_column("parameters", justify="right")
    parts.add_column("exact", justify="right")
    parts.add_column("bf16", justify="right")
    for key in ("vision", "connector", "llm", "total"):
        parts.add_row(key, _fmt(report[key]), f"{report[key]:,}", f"{report[key] * 2 / 2**30:.2f} GiB")
    console.print(parts)
    tr = Table(title="trainable parameters by policy")
    tr.add_column("policy")
    tr.add_column("trainable", justify="right")
    tr.add_column("share", justify="right")
    for key, n in report["trainable"].items():
        label = f"lora (r={report['lora']['rank']}) + connector" if key == "lora" else key
        tr.add_row(label, _fmt(n), f"{100 * n / max(report['total'], 1):.2f}%")
    console.print(tr)
    s = report["shapes"]
    console.print(f"vision: {s['vision']}\nllm: {s['llm']}\ndownsample_ratio: {s['downsample_ratio']}")
    console.print(f"weights in bf16: {report['weights_bytes_bf16'] / 2**30:.2f} GiB")
