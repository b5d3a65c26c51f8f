"""Checkpoints vLLM serves quantised: weight-only int8/int4 linears in the compressed-tensors format.

    r1v convert ckpt/ out/ --to compressed-tensors --type int4      # then: vllm serve out/ (or r1v serve --engine vllm)

The folder is the transformers InternVL layout (`config.json`, safetensors, tokenizer, `r1v.json`) whose
LLM linears are stored packed with their scales, and `config.json` carries the `quantization_config` that
transformers' compressed-tensors loader and vLLM read. Schemes (compressed-tensors presets, symmetric,
round-to-nearest from each group's absolute maximum):

- `int8` = W8A16 and `int4` = W4A16: int8 / int4 weights, one scale per group of `group_size` input weights
  (the presets' 128, or 64/32 when the input widths do not divide by 128: SmolLM2's 576), as vLLM's
  Marlin/Machete kernels take them; packed eight int4 or four int8 values to an int32 (`pack-quantized`).

Quantised: every `nn.Linear` of the language model. Kept in 16 bits: the LM head, the embeddings, the vision
tower and the connector (the `ignore` list in the config). The whole model is written in bfloat16 (`dtype`),
the activation dtype of vLLM's int4/int8 kernels.

Why compressed-tensors directly and not llm-compressor: llm-compressor 0.14 installs beside torch 2.13 on the
CPU, but pins `transformers<=5.17.0` and `compressed-tensors==0.19.0` (and pulls datasets, auto-round and
pandas), which would downgrade the project's transformers. Its W8A16/W4A16 presets without calibration data
run the same arithmetic as here (a min-max observer per channel/group, then compressed-tensors'
`calculate_qparams` and `pack-quantized` compressor); `docs/quantize.md` has the side-by-side check.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from r1v.errors import ModelError

SCHEMES = {"int8": "W8A16", "int4": "W4A16"}
IGNORE = ["re:.*lm_head", "re:.*vision_tower.*", "re:.*multi_modal_projector.*"]
FORMAT = "pack-quantized"


def _ct():
    if importlib.util.find_spec("compressed_tensors") is None:
        raise ModelError("--to compressed-tensors needs compressed-tensors: pip install 'r1v[quant]'")
    import compressed_tensors

    return compressed_tensors


def _llm_linears(model: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    inner = model.model
    lm = getattr(inner, "language_model", inner)
    return [(n, m) for n, m in lm.named_modules() if type(m) is torch.nn.Linear]


def pick_group_size(in_features: list[int], preferred: int = 128) -> int:
    """The largest of 128, 64, 32 dividing every input width (int4 groups must tile each row exactly)."""
    for g in (preferred, 64, 32):
        if all(f % g == 0 for f in in_features):
            return g
    raise ModelError(f"int4 groups: input widths {sorted(set(in_features))} are not all divisible by 32")


def quantization_config(kind: str, group_size: int | None = None):
    """The compressed-tensors `QuantizationConfig` of `kind` ('int8' | 'int4') for r1v's InternVL models."""
    _ct()
    from compressed_tensors.quantization import QuantizationConfig, preset_name_to_scheme

    if kind not in SCHEMES:
        raise ModelError(f"--type for compressed-tensors must be one of {', '.join(SCHEMES)}, got {kind!r}")
    scheme = preset_name_to_scheme(SCHEMES[kind], ["Linear"])
    scheme.weights.observer = "memoryless_minmax"  # what `_set_weight_qparams` computes (llm-compressor's name)
    if group_size is not None:
        scheme.weights.group_size = group_size
    return QuantizationConfig(config_groups={"group_0": scheme}, ignore=list(IGNORE), format=FORMAT)


@torch.no_grad()
def _set_weight_qparams(module: torch.nn.Linear) -> None:
    """Scale and zero point of `module.weight` from its min/max per channel or per group (round to nearest)."""
    from compressed_tensors.quantization import QuantizationStrategy
    from compressed_tensors.quantization.utils import calculate_qparams

    args = module.quantization_scheme.weights
    w = module.weight.float()
    if args.strategy == QuantizationStrategy.CHANNEL:
        lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)  # [out, 1]
    elif args.strategy == QuantizationStrategy.GROUP:
        g = w.unflatten(-1, (-1, args.group_size))  # [out, groups, group_size]
        lo, hi = g.amin(-1), g.amax(-1)  # [out, groups]
    else:
        raise ModelError(f"compressed-tensors export: weight strategy {args.strategy} is not written here")
    scale, zero = calculate_qparams(lo, hi, args)
    module.weight_scale.data.copy_(scale.to(module.weight_scale.dtype).reshape(module.weight_scale.shape))
    module.weight_zero_point.data.copy_(zero.to(module.weight_zero_point.dtype).reshape(module.weight_zero_point.shape))


def compress(model: torch.nn.Module, kind: str):
    """Quantise the LLM linears of `model` in place (compressed-tensors' compressed form, ready to save).

    Returns the `ModelCompressor` whose `update_config(folder)` writes `quantization_config` after saving."""
    _ct()
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationStatus, apply_quantization_config

    linears = _llm_linears(model)
    group = pick_group_size([m.in_features for _, m in linears])
    config = quantization_config(kind, group)
    apply_quantization_config(model, config, show_progress=False)
    quantized = [m for m in model.modules() if getattr(m, "quantization_scheme", None) is not None]
    if len(quantized) != len(linears):
        raise ModelError(f"compressed-tensors matched {len(quantized)} layers, expected the {len(linears)} LLM linears")
    for module in quantized:
        _set_weight_qparams(module)
        module.quantization_status = QuantizationStatus.FROZEN
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format=FORMAT)
    compressor.compress_model(model)
    return compressor


def export_compressed(src, out_dir: str | Path, kind: str = "int4", dtype: torch.dtype = torch.bfloat16) -> dict:
    """`r1v convert SRC OUT --to compressed-tensors --type KIND`. Returns a summary (scheme, group size, counts).

    `src` is a folder or preset name, or a loaded `VLM`, which is converted (to `dtype`, compressed) in place."""
    from r1v.model.build import R1V_JSON, load_vlm, save_model

    if kind not in SCHEMES:
        raise ModelError(f"--type for compressed-tensors must be one of {', '.join(SCHEMES)}, got {kind!r}")
    vlm = load_vlm(src) if not hasattr(src, "model") else src
    if vlm.spec.ps_version != "v2":
        raise ModelError(f"{vlm.name}: ps_version 'v1' cannot be written in the transformers layout vLLM loads "
                         "(see `r1v convert --to hf`)")
    out = Path(out_dir)
    vlm.model.to(dtype)
    n_linears = len(_llm_linears(vlm.model))
    compressor = compress(vlm.model, kind)
    save_model(vlm, out)  # the compressed modules save their packed weights and scales
    # compressed-tensors spells out the ignored modules by name; transformers 5 saves InternVL under other
    # names than its modules carry (`model.vision_tower.*` -> `vision_tower.*`, `lm_head` ->
    # `language_model.lm_head`), and transformers' loader matches module names while vLLM matches checkpoint
    # names. The patterns match both spellings.
    compressor.quantization_config.ignore = list(IGNORE)
    compressor.update_config(str(out))
    scheme = compressor.quantization_config.config_groups["group_0"].weights
    summary = {"scheme": SCHEMES[kind], "format": FORMAT, "bits": scheme.num_bits, "strategy": str(scheme.strategy),
               "group_size": scheme.group_size, "quantized_linears": n_linears, "ignore": list(IGNORE),
               "dtype": str(dtype).removeprefix("torch.")}
    import json

    meta = json.loads((out / R1V_JSON).read_text())
    meta["compressed_tensors"] = summary
    (out / R1V_JSON).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return summary
