"""compressed-tensors export (the checkpoints vLLM serves quantised): layout, quantization_config, load-back."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from r1v.cli import app
from r1v.errors import ModelError
from r1v.model.build import build_preset, save_model

pytest.importorskip("compressed_tensors", reason="compressed-tensors not installed (pip install 'r1v[quant]')")

from r1v.export.compressed import IGNORE, export_compressed, pick_group_size  # noqa: E402

PROMPT = "The capital of France is"


def _tensors(folder) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__


def _load(folder):
    from transformers import InternVLForConditionalGeneration

    model, info = InternVLForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    return model.eval(), info


@pytest.mark.parametrize(("kind", "bits"), [("int8", 8), ("int4", 4)])
def test_layout_and_quantization_config(tmp_path, kind: str, bits: int) -> None:
    out = tmp_path / "ct"
    summary = export_compressed(build_preset("tiny"), out, kind)
    assert summary["quantized_linears"] == 14 and summary["group_size"] == 64  # tiny: widths 64 and 128
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["quant_method"] == "compressed-tensors" and q["format"] == "pack-quantized"
    assert q["quantization_status"] == "compressed" and q["ignore"] == IGNORE
    w = q["config_groups"]["group_0"]["weights"]
    assert q["config_groups"]["group_0"]["targets"] == ["Linear"]
    assert q["config_groups"]["group_0"]["input_activations"] is None  # weight-only
    assert (w["num_bits"], w["type"], w["symmetric"], w["strategy"], w["group_size"]) == (bits, "int", True, "group", 64)
    assert json.loads((out / "r1v.json").read_text())["compressed_tensors"]["scheme"] == f"W{bits}A16"
    t = _tensors(out)
    llm = [k.removesuffix(".weight_packed") for k in t if k.endswith(".weight_packed")]
    assert len(llm) == 14 and all(".layers." in k for k in llm)
    down = next(k for k in llm if k.endswith("layers.0.mlp.down_proj"))  # [64 out, 128 in]
    assert t[down + ".weight_packed"].dtype == torch.int32
    assert tuple(t[down + ".weight_packed"].shape) == (64, 128 * bits // 32)  # 32 // bits values per int32
    assert tuple(t[down + ".weight_scale"].shape) == (64, 128 // 64)
    assert t[down + ".weight_shape"].tolist() == [64, 128]
    # not quantised: the vision tower, the connector, the head, the embedding (bf16 as written)
    plain = [k for k in t if k.endswith(".weight") and ("vision_tower" in k or "multi_modal_projector" in k
                                                     or "lm_head" in k or "embed_tokens" in k)]
    assert plain and all(t[k].dtype == torch.bfloat16 for k in plain)
    assert not any(k.endswith(".weight_packed") and ("vision" in k or "projector" in k) for k in t)


@pytest.mark.parametrize(("kind", "floor"), [("int8", 0.9999), ("int4", 0.98)])
def test_transformers_loads_it_back(tmp_path, kind: str, floor: float) -> None:
    ref = build_preset("tiny")
    ref.model.to(torch.bfloat16)
    export_compressed(build_preset("tiny"), tmp_path / "ct", kind)
    model, info = _load(tmp_path / "ct")
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = ref.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        a, b = model(input_ids=ids).logits.float(), ref.model(input_ids=ids).logits.float()
    cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
    assert floor < cos < 1.0
    # the loaded weights are round-to-nearest with a per-group absmax scale, up to bfloat16 (the loaded dtype:
    # int8 levels x scale are rounded to 8 mantissa bits; compressed-tensors divides in bfloat16, so a few
    # int4 ties land one level over)
    w = ref.model.model.language_model.layers[1].self_attn.o_proj.weight.float()
    got = model.model.language_model.layers[1].self_attn.o_proj.weight.float()
    qmax = 127 if kind == "int8" else 7
    groups = w.unflatten(-1, (-1, 64))
    scale = (groups.abs().amax(-1, keepdim=True) / ((2 * qmax + 1) / 2)).to(torch.bfloat16).float()
    want = ((groups / scale).round().clamp(-qmax - 1, qmax) * scale).flatten(-2)
    off = ((got - want).abs() / scale.expand_as(groups).flatten(-2))  # in quantisation steps
    assert off.max().item() <= 1.5 and off.mean().item() < 0.25  # int8: ~11% of levels one off (bf16 division)
    # vision tower untouched
    v0 = ref.model.model.vision_tower.encoder.layer[0].attention.q_proj.weight
    assert torch.equal(model.model.vision_tower.encoder.layer[0].attention.q_proj.weight, v0)


def test_group_size_follows_the_widths_and_errors_name_the_fix(tmp_path) -> None:
    assert pick_group_size([5120, 27648]) == 128  # Qwen2-32B
    assert pick_group_size([576, 1536]) == 64  # SmolLM2-135M
    with pytest.raises(ModelError, match="divisible by 32"):
        pick_group_size([100])
    with pytest.raises(ModelError, match="int8, int4"):
        export_compressed(build_preset("tiny"), tmp_path / "x", "int3")


def test_cli_convert_to_compressed_tensors(tmp_path) -> None:
    save_model(build_preset("tiny"), tmp_path / "ckpt")
    res = CliRunner().invoke(app, ["convert", str(tmp_path / "ckpt"), str(tmp_path / "out"),
                                   "--to", "compressed-tensors", "--type", "int4"])
    assert res.exit_code == 0, res.output
    assert "W4A16" in res.output and (tmp_path / "out" / "config.json").is_file()


@pytest.mark.slow
def test_smol_int4_loads_back_and_answers_alike(tmp_path) -> None:
    from r1v.errors import AssetError
    from r1v.model.build import load_vlm

    try:
        ref = load_vlm("smol")
    except AssetError as e:
        pytest.skip(str(e))
    summary = export_compressed(load_vlm("smol"), tmp_path / "ct", "int4")
    assert summary["group_size"] == 64 and summary["quantized_linears"] == 210
    model, info = _load(tmp_path / "ct")
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ref.model.to(torch.bfloat16)
    ids = ref.tokenizer(PROMPT, return_tensors="pt").input_ids
    a = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1]:].tolist()
    b = ref.model.generate(input_ids=ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1]:].tolist()
    assert a[0] == b[0] == ref.tokenizer.encode(" Paris")[0]  # 4 bits keep the answer (the rest may drift)
